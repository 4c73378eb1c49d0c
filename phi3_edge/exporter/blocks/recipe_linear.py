"""The Linear a QuantRecipe asks for: float MatMul or MatMulNBits, chosen per checkpoint tensor.

    recipe.for_tensor(hf_name) ─► None ─► FloatLinear  (MatMul)
                               └► LinearRecipe ─► NBitsLinear (MatMulNBits, that recipe's bits/block/zero points)
"""

from __future__ import annotations

from phi3_edge.exporter.blocks.linear import FloatLinear, Linear, Rows
from phi3_edge.exporter.blocks.nbits import NBitsLinear
from phi3_edge.exporter.graph import GraphBuilder
from phi3_edge.exporter.weight_source import WeightSource
from phi3_edge.quantize.calibrated import CalibratedBlocks
from phi3_edge.quantize.recipe import LinearRecipe, QuantRecipe


def linear_for(source: WeightSource, recipe: LinearRecipe | None,
               calibrated: CalibratedBlocks | None = None) -> Linear:
    """FloatLinear for float weights, else NBitsLinear for the recipe (GPTQ: with its calibrated blocks)."""
    if recipe is None:
        return FloatLinear(source)
    return NBitsLinear(source, recipe, calibrated=calibrated)


class RecipeLinear:
    """The body's Linear: each checkpoint tensor gets the format `recipe.for_tensor(name)` gives it."""

    def __init__(self, source: WeightSource, recipe: QuantRecipe, calibrated: CalibratedBlocks | None = None) -> None:
        self.source, self.recipe, self.calibrated = source, recipe, calibrated
        self._linears: dict[LinearRecipe | None, Linear] = {}  # one Linear per distinct format

    def __call__(self, g: GraphBuilder, x: str, hf_name: str, in_features: int, out_features: int, *,
                 rows: Rows | None = None, label: str | None = None) -> str:
        chosen = self.recipe.for_tensor(hf_name)
        if chosen not in self._linears:
            self._linears[chosen] = linear_for(self.source, chosen, self.calibrated)
        return self._linears[chosen](g, x, hf_name, in_features, out_features, rows=rows, label=label)


"""Weight quantization, pure numpy: block-wise RTN/HQQ and MatMulNBits packing (blockwise.py), and the
recipe (recipe.py) that says what each weight of an export becomes. Graph emission lives in exporter/blocks/.
"""

from __future__ import annotations

from phi3_edge.quantize.recipe import (
    ALGOS,
    LinearRecipe,
    ModelShape,
    QuantOptions,
    QuantRecipe,
    RecipeError,
    check_options,
    decide_recipe,
)

QUANT_ALGOS: tuple[str, ...] = ALGOS

__all__ = ["QUANT_ALGOS", "LinearRecipe", "ModelShape", "QuantOptions", "QuantRecipe", "RecipeError",
           "check_options", "decide_recipe"]

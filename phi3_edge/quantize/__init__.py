"""Weight quantization recipes: block-wise RTN and HQQ packed for onnxruntime's MatMulNBits.

`linear_factory_for(target)` is what the exporter asks for: the Linear that writes a target's weights.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from phi3_edge.exporter.blocks.linear import FloatLinear, Linear
from phi3_edge.exporter.weight_source import WeightSource
from phi3_edge.quantize.linear import ALGOS, NBitsLinear, check_recipe
from phi3_edge.quantize.mixed import MixedLinear
from phi3_edge.targets.table import Target

QUANT_ALGOS: tuple[str, ...] = ALGOS


def linear_factory_for(target: Target, algo: str = "rtn", mixed_layers: int | None = None
                       ) -> Callable[[WeightSource], Linear]:
    """FloatLinear for fp32/fp16 targets; otherwise NBitsLinear with the target's bits, block and accuracy.

    `algo` picks the rounding (rtn | hqq). HQQ tunes zero points, so it writes them even for a target whose
    RTN recipe is symmetric. Invalid combinations raise ValueError here, before any weight is read.
    `mixed_layers` (the model's layer count) turns on mixed precision: int8 down projections where they
    hurt most (quantize/mixed.py).
    """
    if target.bits is None:
        return FloatLinear
    if target.block_size is None:
        raise ValueError(f"target {target.name}: a {target.bits}-bit format needs a block_size")
    symmetric = target.symmetric and algo == "rtn"
    check_recipe(target.bits, target.block_size, target.accuracy_level or 0, symmetric, algo)
    base = partial(NBitsLinear, bits=target.bits, block_size=target.block_size,
                   accuracy_level=target.accuracy_level or 0, symmetric=symmetric, algo=algo)
    if mixed_layers is None or target.bits >= 8:
        return base
    wide = partial(NBitsLinear, bits=8, block_size=target.block_size, accuracy_level=target.accuracy_level or 0,
                   symmetric=target.symmetric, algo="rtn")  # HQQ's float zero points do not exist at 8 bits
    return lambda source: MixedLinear(base(source), wide(source), mixed_layers)


__all__ = ["QUANT_ALGOS", "NBitsLinear", "linear_factory_for"]

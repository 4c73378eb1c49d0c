"""Blocks quantized before the export from calibration data (GPTQ), handed to the exporter by tensor name.

GPTQ needs every Linear's input statistics, which only a forward pass over calibration text gives; that pass
(reference/calibrate.py) runs before the graph is built and fills a `CalibratedBlocks`. The exporter's
NBitsLinear then takes a tensor's codes and scales from here instead of rounding the checkpoint rows itself,
row range by row range (a separate-Q/K/V plan reads three ranges of one packed qkv_proj).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from phi3_edge.quantize.blockwise import QuantizedBlocks


@dataclass
class CalibratedBlocks:
    algo: str  # what produced them ("gptq"): the recipe of every tensor held here names it
    blocks: dict[str, QuantizedBlocks] = field(default_factory=dict)  # checkpoint name -> whole tensor

    def add(self, name: str, quantized: QuantizedBlocks) -> None:
        self.blocks[name] = quantized

    def rows(self, name: str, first: int, last: int, bits: int, block_size: int) -> QuantizedBlocks | None:
        """Rows [first, last) of a held tensor; None if not held. ValueError if it was made for another format."""
        held = self.blocks.get(name)
        if held is None:
            return None
        if (held.bits, held.block_size) != (bits, block_size):
            raise ValueError(f"{name}: calibrated as int{held.bits} block {held.block_size}, the recipe asks for "
                             f"int{bits} block {block_size}")
        zero = None if held.zero_points is None else held.zero_points[first:last]
        return QuantizedBlocks(held.q[first:last], held.scales[first:last], zero, held.bits, held.k)

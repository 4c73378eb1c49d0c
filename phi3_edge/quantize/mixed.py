"""Mixed precision: int8 for the projections that hurt most at int4, int4 elsewhere.

llama.cpp's Q4_K_M and onnxruntime-genai's `mixed_layers` give more bits to the MLP down projection of the
first and last eighth of the layers and of every third layer between: quantization error there reaches the
residual stream unfiltered and compounds (onnxruntime-genai#1450, onnxruntime#24384 on Phi-4-mini).
"""

from __future__ import annotations

import re

from phi3_edge.exporter.blocks.linear import Rows
from phi3_edge.exporter.graph import GraphBuilder
from phi3_edge.quantize.linear import NBitsLinear

_LAYER = re.compile(r"model\.layers\.(\d+)\.mlp\.down_proj\.weight$")


def uses_more_bits(layer: int, num_layers: int) -> bool:
    """The layer choice llama.cpp calls use_more_bits: first/last eighth, and every third in between."""
    eighth = num_layers // 8
    return layer < eighth or layer >= 7 * num_layers // 8 or (layer - eighth) % 3 == 2


class MixedLinear:
    """Routes each Linear to the int8 or the base recipe by its checkpoint name (same Linear protocol)."""

    def __init__(self, base: NBitsLinear, wide: NBitsLinear, num_layers: int) -> None:
        self.base, self.wide, self.num_layers = base, wide, num_layers

    def __call__(self, g: GraphBuilder, x: str, hf_name: str, in_features: int, out_features: int, *,
                 rows: Rows | None = None, label: str | None = None) -> str:
        match = _LAYER.match(hf_name)
        chosen = self.wide if match and uses_more_bits(int(match.group(1)), self.num_layers) else self.base
        return chosen(g, x, hf_name, in_features, out_features, rows=rows, label=label)

    def __getattr__(self, name: str) -> object:
        return getattr(self.base, name)  # bits, block_size, algo...: the base recipe describes the export

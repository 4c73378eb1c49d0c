"""Quantized embedding tables: GatherBlockQuantized over MatMulNBits-packed codes.

    B (V, n_blocks, blob) ─► Reshape (V, H * bits / 8) ─┐
    input_ids ──────────────────────────────────────────┴─► GatherBlockQuantized(scales[, zero_points]) ─► (B, S, H)

GatherBlockQuantized reads uint8 codes with MatMulNBits' conventions (low nibble first, default zero point
2^(bits-1)), so the very same B / scales / zero_points initializers can also feed lm_head's MatMulNBits.
For a tied model (Phi-4-mini: 200k x 3072) that keeps one copy of the table in model.onnx.data instead of
two. MatMulNBits wants B as (N, n_blocks, blob) and GatherBlockQuantized wants 2-D data, hence the Reshape
(folded by ORT at load). GatherBlockQuantized takes no float zero points, so tables are always RTN-rounded.
"""

from __future__ import annotations

from dataclasses import dataclass

from phi3_edge.exporter.blocks.nbits import NBitsLinear
from phi3_edge.exporter.graph import MS_DOMAIN, GraphBuilder
from phi3_edge.exporter.weight_source import WeightSource
from phi3_edge.quantize.recipe import LinearRecipe

TABLE_STEM = "embed_tokens.quantized"


@dataclass(frozen=True)
class QuantizedTable:
    """A (vocab, hidden) table quantized once; usable by GatherBlockQuantized and MatMulNBits alike."""

    quantizer: NBitsLinear
    tensors: list[str]  # [B (V, n_blocks, blob), scales (V, n_blocks)(, zero_points)]
    vocab: int
    hidden: int

    def gather(self, g: GraphBuilder, input_ids: str) -> str:
        width = self.hidden * self.quantizer.bits // 8
        # B (V, n_blocks, blob) -> (V, H * bits / 8): GatherBlockQuantized wants 2-D codes
        data = g.op("Reshape", [self.tensors[0], g.const([self.vocab, width])], name="embed_tokens/codes_2d")
        return g.op("GatherBlockQuantized", [data, input_ids, *self.tensors[1:]], name="embed_tokens",
                    domain=MS_DOMAIN, gather_axis=0, quantize_axis=1, block_size=self.quantizer.block_size,
                    bits=self.quantizer.bits)  # (B, S, H)

    def matmul(self, g: GraphBuilder, x: str) -> str:
        return self.quantizer.matmul(g, x, self.tensors, self.hidden, self.vocab, "lm_head")  # (B, S, V)


def quantize_table(g: GraphBuilder, source: WeightSource, recipe: LinearRecipe, hf_name: str, vocab: int,
                   hidden: int) -> QuantizedTable:
    """Write the table's codes once (recipe: quantize/recipe.py decided it is RTN with whole blocks per row)."""
    quantizer = NBitsLinear(source, recipe)
    tensors = quantizer.write_initializers(g, hf_name, (vocab, hidden), TABLE_STEM)
    return QuantizedTable(quantizer, tensors, vocab, hidden)

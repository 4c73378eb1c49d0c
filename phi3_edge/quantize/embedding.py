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

from phi3_edge.exporter.graph import MS_DOMAIN, GraphBuilder
from phi3_edge.exporter.weight_source import WeightSource
from phi3_edge.quantize.linear import NBitsLinear


@dataclass(frozen=True)
class QuantizedTable:
    """A (vocab, hidden) table quantized once; usable by GatherBlockQuantized and MatMulNBits alike."""

    quantizer: NBitsLinear
    tensors: list[str]  # [B (V, n_blocks, blob), scales (V, n_blocks)(, zero_points)]
    vocab: int
    hidden: int

    def gather(self, g: GraphBuilder, input_ids: str) -> str:
        width = self.hidden * self.quantizer.bits // 8
        data = g.op("Reshape", [self.tensors[0], g.const([self.vocab, width])], name="embed_tokens/codes_2d")
        out = g.op("GatherBlockQuantized", [data, input_ids, *self.tensors[1:]], name="embed_tokens",
                   domain=MS_DOMAIN, gather_axis=0, quantize_axis=1, block_size=self.quantizer.block_size,
                   bits=self.quantizer.bits)  # (B, S, H)
        assert isinstance(out, str)
        return out

    def matmul(self, g: GraphBuilder, x: str) -> str:
        return self.quantizer.matmul(g, x, self.tensors, self.hidden, self.vocab, "lm_head")  # (B, S, V)


def table_quantizer(source: WeightSource, bits: int, block_size: int, accuracy_level: int,
                    symmetric: bool) -> NBitsLinear:
    return NBitsLinear(source, bits=bits, block_size=block_size, accuracy_level=accuracy_level,
                       symmetric=symmetric, algo="rtn")


def can_quantize_table(hidden: int, block_size: int) -> bool:
    """The 2-D view needs whole blocks per row: padding would change the gathered width."""
    return hidden % block_size == 0


def quantize_table(g: GraphBuilder, quantizer: NBitsLinear, hf_name: str, vocab: int, hidden: int) -> QuantizedTable:
    tensors = quantizer.write_initializers(g, hf_name, (vocab, hidden), "embed_tokens.quantized")
    return QuantizedTable(quantizer, tensors, vocab, hidden)

"""NBitsLinear: a checkpoint Linear weight streamed into onnxruntime's MatMulNBits.

    x (..., K) ─► MatMulNBits(B, scales[, zero_points]) ─► (..., N)        y = x @ dequant(B).T

Initializers, exactly as onnxruntime 1.32 checks them (CPU kernel and schema):
    B            uint8 (N, n_blocks, block_size * bits / 8)     codes packed low bits first along K
    scales       io float dtype (N, n_blocks)
    zero_points  RTN asymmetric, HQQ (default): uint8 (N, ceil(n_blocks * bits / 8)), packed like B
                 HQQ zero_points="float": io float dtype (N, n_blocks), non-integer zero points
                 symmetric: absent (the kernel then uses 2^(bits-1))

One pass over the checkpoint rows: the packed codes stream straight into the data file chunk by chunk,
while the scales and zero points of each chunk are kept until the codes are written and then written as
their own tensors. They are small: a 32-weight block takes 64 bytes in a bf16 checkpoint and its scale 4
(fp32) or 2 (fp16) bytes, so at most 1/16 of the source tensor (23 MB for Phi-3-medium's gate_up_proj).
A second pass would instead read every weight twice, and for HQQ iterate twice, which dominates export time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
from onnx import TensorProto

from phi3_edge.exporter.blocks.linear import Rows, node_prefix
from phi3_edge.exporter.gguf.carry import carry_rows
from phi3_edge.exporter.graph import MS_DOMAIN, GraphBuilder
from phi3_edge.exporter.weight_source import WeightSource
from phi3_edge.exporter.weights import TensorInfo
from phi3_edge.quantize.blockwise import (
    QuantizedBlocks,
    n_blocks,
    pack_weights,
    pack_zero_points,
    quantize_hqq,
    quantize_rtn,
)
from phi3_edge.quantize.calibrated import CalibratedBlocks
from phi3_edge.quantize.recipe import BLOCK_ALGOS, LinearRecipe


@dataclass
class _SideTensors:
    """Per-chunk scales and zero points, held until the packed codes of the same pass are written."""
    scales: list[np.ndarray] = field(default_factory=list)
    zero_points: list[np.ndarray] = field(default_factory=list)


class NBitsLinear:
    """The Linear protocol (exporter/blocks/linear.py) for one quantized recipe (validated when it was made)."""

    def __init__(self, source: WeightSource, recipe: LinearRecipe, *, hqq_iters: int | None = None,
                 calibrated: CalibratedBlocks | None = None) -> None:
        self.source = source
        self.recipe = recipe
        self.bits = recipe.bits
        self.block_size = recipe.block_size
        self.accuracy_level = recipe.accuracy_level
        self.symmetric = recipe.symmetric
        self.algo = recipe.algo
        self.hqq_iters = hqq_iters
        self.calibrated = calibrated  # GPTQ blocks computed before the export (quantize/calibrated.py)

    @property
    def scale_dtype(self) -> str:
        return self.source.float_dtype  # for quantized formats the exporter sets this to the io dtype

    def __call__(self, g: GraphBuilder, x: str, hf_name: str, in_features: int, out_features: int, *,
                 rows: Rows | None = None, label: str | None = None) -> str:
        stem = node_prefix(hf_name, label)
        info = self.source.info_with_rows(hf_name, in_features, rows, out_features)
        first, last = rows or (0, out_features)
        tensors = [g.add_initializer(t) for t in self._write(info, first, last, f"{stem}.MatMulNBits")]
        self.source.report(hf_name, info.nbytes * (last - first) // info.shape[0])
        return self.matmul(g, x, tensors, in_features, out_features, stem)

    def write_initializers(self, g: GraphBuilder, hf_name: str, shape: tuple[int, int], stem: str) -> list[str]:
        """Quantize a whole (N, K) checkpoint tensor once; returns [B, scales(, zero_points)] initializer names,
        for callers that use them in more than one node (a tied embedding table and lm_head)."""
        info = self.source.info(hf_name, shape)
        # GatherBlockQuantized (the table's other user) takes no float zero points: no Q4_1 carried here.
        tensors = [g.add_initializer(t) for t in self._write(info, 0, shape[0], stem, float_zero_points=False)]
        self.source.report(hf_name, info.nbytes)
        return tensors

    def matmul(self, g: GraphBuilder, x: str, tensors: list[str], in_features: int, out_features: int,
               stem: str) -> str:
        return g.op("MatMulNBits", [x, *tensors], name=f"{stem}/MatMulNBits", domain=MS_DOMAIN, K=in_features,
                    N=out_features, bits=self.bits, block_size=self.block_size,
                    accuracy_level=self.accuracy_level)  # (..., N)

    def quantize(self, w: np.ndarray) -> QuantizedBlocks:
        """One (rows, K) float32 chunk, quantized as this layer's recipe says."""
        if self.algo in BLOCK_ALGOS:
            raise ValueError(f"--quant-algo {self.algo} needs its calibrated blocks (the export's calibration pass)")
        if self.algo == "hqq":
            return quantize_hqq(w, self.bits, self.block_size, self.hqq_iters, scale_dtype=self.scale_dtype,
                                zero_points=self.recipe.zero_points)
        return quantize_rtn(w, self.bits, self.block_size, self.symmetric, scale_dtype=self.scale_dtype)

    def _write(self, info: TensorInfo, first: int, last: int, name: str,
               float_zero_points: bool = True) -> list[TensorProto]:
        """B, scales and (unless symmetric) zero points of rows [first, last), from one pass."""
        n, k = last - first, info.shape[1]
        blocks = n_blocks(k, self.block_size)
        side = _SideTensors()
        writer = self.source.writer
        tensors = [writer.write(f"{name}.qweight", (n, blocks, self.block_size * self.bits // 8), "uint8",
                                self._packed_chunks(info, first, last, side, float_zero_points))]
        tensors.append(writer.write(f"{name}.scales", (n, blocks), self.scale_dtype, side.scales))
        if side.zero_points:
            zero = side.zero_points[0]
            tensors.append(writer.write(f"{name}.zero_points", (n, zero.shape[1]), str(zero.dtype),
                                        side.zero_points))
        return tensors

    def _packed_chunks(self, info: TensorInfo, first: int, last: int, side: _SideTensors,
                       float_zero_points: bool = True) -> Iterator[np.ndarray]:
        if self.calibrated is not None:  # GPTQ: codes already chosen; never carried or re-rounded
            prepared = self.calibrated.rows(info.name, first, last, self.bits, self.block_size)
            if prepared is not None:
                yield from self._emit([prepared], side)
                return
        # GGUF Q4_0/Q4_1/Q8_0 blocks that match the recipe go straight through (exporter/gguf/carry.py).
        carried = carry_rows(self.source.store, info, (first, last), self.bits, self.block_size, self.scale_dtype,
                             float_zero_points=float_zero_points)
        chunks = carried if carried is not None else map(self.quantize, self.source.row_blocks(info, (first, last)))
        yield from self._emit(chunks, side)

    def _emit(self, chunks: Iterable[QuantizedBlocks], side: _SideTensors) -> Iterator[np.ndarray]:
        for quantized in chunks:
            side.scales.append(quantized.scales.astype(self.scale_dtype))
            if quantized.zero_points is not None:
                side.zero_points.append(self._zero_point_input(quantized.zero_points))
            yield pack_weights(quantized.q, self.bits)  # (rows, n_blocks, blob)

    def _zero_point_input(self, zero_points: np.ndarray) -> np.ndarray:
        """uint8 codes are packed like B; float (HQQ) zero points go unpacked in the scales' dtype."""
        if zero_points.dtype == np.uint8:
            return pack_zero_points(zero_points, self.bits)  # (rows, ceil(n_blocks * bits / 8))
        return zero_points.astype(self.scale_dtype)  # (rows, n_blocks)

"""Checkpoint tensors -> external initializers, one bounded chunk at a time.

`WeightSource` is the only place that reads the checkpoint and writes the data file. It hands back
initializer TensorProtos; the blocks never see weight arrays. Working memory is at most `chunk_bytes` of
converted output plus the source slice behind it, whatever the tensor or model size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from onnx import TensorProto

from phi3_edge.exporter.tensor_writer import TensorWriter
from phi3_edge.exporter.weights import TensorInfo, WeightStore

DEFAULT_CHUNK_BYTES = 16 * 1024 * 1024

ProgressHook = Callable[[str, int], None]  # (tensor name, source bytes consumed)


class WeightSource:
    def __init__(
        self,
        store: WeightStore,
        writer: TensorWriter,
        *,
        float_dtype: str = "float32",
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        on_tensor: ProgressHook | None = None,
    ) -> None:
        self.store = store
        self.writer = writer
        self.float_dtype = float_dtype
        self.chunk_bytes = chunk_bytes
        self._on_tensor = on_tensor or (lambda name, nbytes: None)

    def info(self, hf_name: str, shape: tuple[int, ...]) -> TensorInfo:
        return self.store.info(hf_name, shape)

    def as_is(self, hf_name: str, shape: tuple[int, ...], onnx_name: str) -> TensorProto:
        """The tensor in the checkpoint's own layout (embeddings, norm weights), cast to the float dtype."""
        info = self.info(hf_name, shape)
        tensor = self.writer.write(onnx_name, shape, self.float_dtype, self._row_chunks(info))
        self.report(hf_name, info.nbytes)
        return tensor

    def transposed(self, hf_name: str, out_features: int, in_features: int, onnx_name: str,
                   rows: tuple[int, int] | None = None) -> TensorProto:
        """A Linear weight (out, in) written as MatMul's (in, out), transposed one column block at a time.
        `rows` takes a range of output features out of a packed weight; out_features is then its length."""
        start, stop = rows or (0, out_features)
        info = self.info_with_rows(hf_name, in_features, rows, out_features)
        tensor = self.writer.write(onnx_name, (in_features, stop - start), self.float_dtype,
                                   self._transposed_chunks(info, start, stop))
        self.report(hf_name, info.nbytes * (stop - start) // info.shape[0])
        return tensor

    def info_with_rows(self, hf_name: str, in_features: int, rows: tuple[int, int] | None,
                       out_features: int) -> TensorInfo:
        """Shape-check a weight that a row range is taken from: the range must lie inside it."""
        if rows is None:
            return self.info(hf_name, (out_features, in_features))
        info = self.store.info(hf_name, (self.store.rows_of(hf_name), in_features))
        if not 0 <= rows[0] < rows[1] <= info.shape[0] or rows[1] - rows[0] != out_features:
            raise ValueError(f"{hf_name}: row range {rows} does not fit shape {info.shape}")
        return info

    def report(self, hf_name: str, nbytes: int) -> None:
        """Progress: `nbytes` of checkpoint data consumed for `hf_name`."""
        self._on_tensor(hf_name, nbytes)

    def row_blocks(self, info: TensorInfo, rows: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
        """float32 rows of a tensor in its own layout, a bounded chunk at a time, for quantizers that work by
        row; `rows` limits them to a range (Q, K or V out of a packed qkv_proj reads only its own rows)."""
        first, last = rows or (0, info.shape[0])
        step = self._rows_per_chunk(int(np.prod(info.shape[1:], dtype=np.int64)))
        for start in range(first, last, step):
            yield self.store.read_rows(info, start, min(last, start + step))

    def _row_chunks(self, info: TensorInfo) -> Iterator[np.ndarray]:
        for block in self.row_blocks(info):
            yield block.astype(self.float_dtype, copy=False)

    def _transposed_chunks(self, info: TensorInfo, row_start: int, row_stop: int) -> Iterator[np.ndarray]:
        in_features = info.shape[1]
        step = self._rows_per_chunk(row_stop - row_start)
        for start in range(0, in_features, step):
            stop = min(in_features, start + step)
            columns = self.store.read_columns(info, start, stop, rows=(row_start, row_stop))  # (out, step)
            yield columns.T.astype(self.float_dtype)  # (step, out): rows of W^T

    def _rows_per_chunk(self, row_elements: int) -> int:
        return max(1, self.chunk_bytes // (4 * max(1, row_elements)))

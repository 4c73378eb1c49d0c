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
        self._on_tensor(hf_name, info.nbytes)
        return tensor

    def transposed(self, hf_name: str, out_features: int, in_features: int, onnx_name: str) -> TensorProto:
        """A Linear weight (out, in) written as MatMul's (in, out), transposed one column block at a time."""
        info = self.info(hf_name, (out_features, in_features))
        tensor = self.writer.write(onnx_name, (in_features, out_features), self.float_dtype,
                                   self._transposed_chunks(info))
        self._on_tensor(hf_name, info.nbytes)
        return tensor

    def row_blocks(self, info: TensorInfo) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 rows) blocks of a tensor in its own layout, for quantizers that work by row."""
        rows = info.shape[0]
        step = self._rows_per_chunk(int(np.prod(info.shape[1:], dtype=np.int64)))
        for start in range(0, rows, step):
            yield start, self.store.read_rows(info, start, min(rows, start + step))

    def _row_chunks(self, info: TensorInfo) -> Iterator[np.ndarray]:
        for _, block in self.row_blocks(info):
            yield block.astype(self.float_dtype, copy=False)

    def _transposed_chunks(self, info: TensorInfo) -> Iterator[np.ndarray]:
        out_features, in_features = info.shape
        step = self._rows_per_chunk(out_features)
        for start in range(0, in_features, step):
            columns = self.store.read_columns(info, start, min(in_features, start + step))  # (out, step)
            yield columns.T.astype(self.float_dtype)  # (step, out): rows of W^T

    def _rows_per_chunk(self, row_elements: int) -> int:
        return max(1, self.chunk_bytes // (4 * max(1, row_elements)))

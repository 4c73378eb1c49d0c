"""Streams weight tensors into one external data file, chunk by chunk.

A tensor arrives as an iterator of row chunks; each chunk is appended to `model.onnx.data` as soon as it
is converted, so the writer holds one chunk at a time. The returned TensorProto carries only the location,
offset and length, which is what ONNX's external-data format asks for.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from onnx import TensorProto

from phi3_edge.errors import ArtifactError, Phi3EdgeError
from phi3_edge.exporter.artifact import StageCallback
from phi3_edge.exporter.graph import ONNX_DTYPES

# Page-aligned tensors let ORT memory-map external data instead of copying it.
ALIGNMENT = 4096
SMALL_TENSOR_ALIGNMENT = 64
SMALL_TENSOR_BYTES = 64 * 1024


class TensorWriter:
    def __init__(self, data_path: Path, on_stage: StageCallback | None = None) -> None:
        self.data_path = data_path
        self._on_stage = on_stage
        self.location = data_path.name
        self._handle = data_path.open("wb")
        self._offset = 0
        self.tensors_written = 0

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()

    def __enter__(self) -> TensorWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def bytes_written(self) -> int:
        return self._offset

    def write(self, name: str, dims: Sequence[int], dtype: str, chunks: Iterable[np.ndarray]) -> TensorProto:
        """Append a tensor given as consecutive chunks along its first axis; returns the external TensorProto."""
        expected = int(np.prod(dims, dtype=np.int64)) * np.dtype(dtype).itemsize
        self._pad_to(ALIGNMENT if expected >= SMALL_TENSOR_BYTES else SMALL_TENSOR_ALIGNMENT)
        start = self._offset
        for chunk in chunks:
            if chunk.dtype != np.dtype(dtype):
                raise TypeError(f"{name}: chunk dtype {chunk.dtype} != {dtype}")
            if chunk.dtype.kind == "f" and not np.isfinite(chunk).all():  # would export, then measure KL NaN
                raise Phi3EdgeError(f"weight {name} holds NaN or Inf values (a damaged checkpoint?); "
                                    "refusing to export it")
            self._append(np.ascontiguousarray(chunk).tobytes())
        if self._offset - start != expected:
            raise ValueError(f"{name}: wrote {self._offset - start} bytes, expected {expected}")
        self.tensors_written += 1
        if self.tensors_written == 1 and self._on_stage is not None:
            self._on_stage("weights")  # model.onnx.data is half written
        return external_tensor(name, dims, ONNX_DTYPES[dtype], self.location, start, expected)

    def _pad_to(self, alignment: int) -> None:
        pad = -self._offset % alignment
        if pad:
            self._append(b"\0" * pad)

    def _append(self, data: bytes) -> None:
        try:
            self._handle.write(data)
        except OSError as exc:
            raise ArtifactError(f"cannot write ({exc.strerror}); nothing was left at the output", self.data_path) \
                from None
        self._offset += len(data)


def external_tensor(name: str, dims: Sequence[int], data_type: int, location: str, offset: int,
                    length: int) -> TensorProto:
    tensor = TensorProto(name=name, dims=list(dims), data_type=data_type)
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor

"""A streaming safetensors reader: validated headers, memory-mapped tensors read in slices.

Why not the `safetensors` package: it has no numpy bfloat16 and it reads whole tensors. Here a tensor is a
read-only mmap view; callers copy out row or column slices, convert them to float32, and then drop the
pages they touched (madvise DONTNEED), so resident memory is bounded by one slice, not by the tensor.

Strict accounting: every tensor the graph asks for is checked for shape; `unused()` lists the rest.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from phi3_edge.errors import CheckpointError
from phi3_edge.exporter.artifact import pause_for_tests

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the format's own limit; guards against a huge allocation on junk
_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}  # BF16 stays raw bits
# Header values are untrusted: bound them so a hostile header costs neither memory nor time (a million-dim
# shape would make even the exact size product slow). Real checkpoints have 1-D and 2-D tensors.
MAX_DIMS = 8
MAX_DIM = 2**40
MAX_OFFSET = 2**63 - 1  # the format's u64 range, as JSON; the real bound (the file's size) is checked after


@dataclass(frozen=True)
class TensorInfo:
    name: str
    path: Path
    dtype: str  # safetensors dtype string: F32 | F16 | BF16
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in the file

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _DTYPES[self.dtype].itemsize  # exact: no int64 wrap-around


def read_header(path: Path) -> list[TensorInfo]:
    """Parse and validate one safetensors file's header without reading tensor data."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CheckpointError("truncated safetensors file (no header); download it again", path)
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > min(MAX_HEADER_BYTES, size - 8):
                raise CheckpointError(f"header length {header_len} runs past the end of the file ({size} bytes): "
                                      "truncated, or not a safetensors file", path)
            header_bytes = handle.read(header_len)
    except OSError as exc:
        raise CheckpointError(f"cannot read ({exc.strerror or exc})", path) from None
    try:
        header = json.loads(header_bytes)
    except (ValueError, RecursionError):  # bad JSON or UTF-8, a 5000-digit number, nesting past the stack
        raise CheckpointError("safetensors header is not valid JSON (corrupt file?)", path) from None
    if not isinstance(header, dict):
        raise CheckpointError("safetensors header is not a JSON object", path)
    return [_entry(path, name, entry, 8 + header_len, size) for name, entry in header.items() if name != "__metadata__"]


def _entry(path: Path, name: str, entry: object, data_start: int, size: int) -> TensorInfo:
    label = _short(name)
    if not isinstance(entry, dict):
        raise CheckpointError(f"tensor {label}: header entry is not an object", path)
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise CheckpointError(f"tensor {label}: unsupported dtype {_short(dtype)} (expected F32, F16 or BF16)", path)
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(_is_int(d, MAX_DIM) for d in shape):
        raise CheckpointError(f"tensor {label}: invalid shape {_short(shape)}", path)
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o, MAX_OFFSET) for o in offsets)):
        raise CheckpointError(f"tensor {label}: invalid data_offsets {_short(offsets)}", path)
    begin, end = offsets
    # Python ints: a shape claiming 2**40 x 2**40 elements must not wrap around to a small int64 product.
    expected = math.prod(shape) * _DTYPES[dtype].itemsize
    if end - begin != expected:
        raise CheckpointError(f"tensor {label}: data_offsets {offsets} do not match shape {shape} {dtype}", path)
    if data_start + end > size:
        raise CheckpointError(f"truncated: tensor {label} ends at byte {data_start + end}, file has {size}; "
                              "download it again", path)
    return TensorInfo(name, path, dtype, tuple(shape), data_start + begin)


def _is_int(value: object, limit: int) -> bool:
    """A JSON integer in [0, limit]; bools are ints to Python but not to the format."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= limit


def _short(value: object) -> str:
    """repr, cut to one readable line: error messages quote values from untrusted headers."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def to_float32(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Widen a raw slice to float32; bf16 is the top half of an fp32, so a shift is exact."""
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32)


class WeightStore:
    """All tensors of a checkpoint by name, opened lazily; use as a context manager."""

    def __init__(self, files: tuple[Path, ...]) -> None:
        self._infos: dict[str, TensorInfo] = {}
        for path in files:
            for info in read_header(path):
                if info.name in self._infos:
                    raise CheckpointError(f"tensor {info.name!r} appears in two files", path)
                self._infos[info.name] = info
        self._maps: dict[Path, mmap.mmap] = {}
        self._used: set[str] = set()
        pause_for_tests("headers")  # test-only hook: every header read, nothing converted yet

    def __enter__(self) -> "WeightStore":
        return self

    def __exit__(self, *exc: object) -> None:
        for mapped in self._maps.values():
            mapped.close()
        self._maps.clear()

    def names(self) -> list[str]:
        return list(self._infos)

    def __contains__(self, name: str) -> bool:
        return name in self._infos

    def info(self, name: str, shape: tuple[int, ...]) -> TensorInfo:
        """The tensor's info after checking it exists with the shape the graph needs."""
        info = self._infos.get(name)
        if info is None:
            files = sorted({str(i.path.parent) for i in self._infos.values()}) or ["checkpoint"]
            raise CheckpointError(f"missing tensor {name!r}", files[0])
        if info.shape != tuple(shape):
            raise CheckpointError(f"tensor {name!r} has shape {list(info.shape)}, expected {list(shape)}", info.path)
        self._used.add(name)
        return info

    def unused(self) -> list[str]:
        return sorted(set(self._infos) - self._used)

    def read_rows(self, info: TensorInfo, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) along the first axis, as float32."""
        row = int(np.prod(info.shape[1:], dtype=np.int64))
        raw = self._view(info)[start * row : stop * row].reshape((stop - start, *info.shape[1:]))
        out = to_float32(raw, info.dtype) if info.dtype != "F32" else raw.copy()
        self._release(info, start * row, stop * row)
        return out

    def rows_of(self, name: str) -> int:
        """First dimension of a tensor (0 if absent: the shape check that follows reports it as missing)."""
        info = self._infos.get(name)
        return info.shape[0] if info is not None and info.shape else 0

    def read_columns(self, info: TensorInfo, start: int, stop: int, rows: tuple[int, int] | None = None) -> np.ndarray:
        """Columns [start, stop) of a 2-D tensor (optionally of a row range), as float32 (rows, stop - start)."""
        first, last = rows or (0, info.shape[0])
        raw = self._view(info).reshape(info.shape)[first:last, start:stop]
        out = to_float32(raw, info.dtype) if info.dtype != "F32" else raw.copy()
        self._release(info, first * info.shape[1], last * info.shape[1])
        return out

    def _view(self, info: TensorInfo) -> np.ndarray:
        mapped = self._maps.get(info.path)
        if mapped is None:
            with info.path.open("rb") as handle:
                mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            self._maps[info.path] = mapped
        count = int(np.prod(info.shape, dtype=np.int64))
        return np.frombuffer(mapped, dtype=_DTYPES[info.dtype], count=count, offset=info.offset)

    def _release(self, info: TensorInfo, first: int, last: int) -> None:
        """Drop the mapped pages of elements [first, last) from our resident set (the page cache keeps them)."""
        itemsize = _DTYPES[info.dtype].itemsize
        begin = (info.offset + first * itemsize) // mmap.PAGESIZE * mmap.PAGESIZE
        end = info.offset + last * itemsize
        if end > begin:
            self._maps[info.path].madvise(mmap.MADV_DONTNEED, begin, end - begin)

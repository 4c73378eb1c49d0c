"""The checkpoint's tensors by Hugging Face name, from safetensors or GGUF files, read in slices.

Why not the `safetensors` package: it has no numpy bfloat16 and it reads whole tensors. Here a tensor is a
read-only mmap view; callers copy out row or column slices, convert them to float32, and then drop the
pages they touched (madvise DONTNEED), so resident memory is bounded by one slice, not by the tensor.

Strict accounting: every tensor the graph asks for is checked for shape; `unused()` lists the rest.

    WeightStore ── the graph's view: Phi-3 names, packed qkv_proj / gate_up_proj (gguf/ and packing below)
       ├─ SafetensorsFiles   *.safetensors (this module)
       └─ GgufTensors        *.gguf (exporter/gguf/store.py): GGUF names mapped, Q/K permutation undone
    A Llama-layout checkpoint (q/k/v_proj, gate/up_proj) is presented packed by row ranges: a read of rows
    [a, b) of the virtual qkv_proj reads only the parts' rows inside it, never a concatenated copy.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from phi3_edge.errors import CheckpointError
from phi3_edge.exporter.artifact import StageCallback

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the format's own limit; guards against a huge allocation on junk
# BF16 stays raw bits
_DTYPES: dict[str, np.dtype[Any]] = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}
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
    stored_bytes: int | None = None  # bytes on disk where the dtype alone does not say (GGUF blocks, packed views)

    @property
    def nbytes(self) -> int:
        if self.stored_bytes is not None:
            return self.stored_bytes
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


class TensorBackend(Protocol):
    """One kind of weight file: its tensors by (Hugging Face) name, and float32 slices of them."""

    infos: dict[str, TensorInfo]

    def read_rows(self, info: TensorInfo, start: int, stop: int) -> np.ndarray: ...

    def read_columns(self, info: TensorInfo, start: int, stop: int, rows: tuple[int, int]) -> np.ndarray: ...

    def close(self) -> None: ...


class SafetensorsFiles:
    """safetensors shards: memory-mapped, slices copied out and their pages dropped again."""

    def __init__(self, files: Iterable[Path]) -> None:
        self.infos: dict[str, TensorInfo] = {}
        for path in files:
            for info in read_header(path):
                if info.name in self.infos:
                    raise CheckpointError(f"tensor {info.name!r} appears in two files", path)
                self.infos[info.name] = info
        self._maps: dict[Path, mmap.mmap] = {}

    def close(self) -> None:
        for mapped in self._maps.values():
            mapped.close()
        self._maps.clear()

    def read_rows(self, info: TensorInfo, start: int, stop: int) -> np.ndarray:
        row = int(np.prod(info.shape[1:], dtype=np.int64))
        raw = self._view(info)[start * row : stop * row].reshape((stop - start, *info.shape[1:]))
        out = to_float32(raw, info.dtype) if info.dtype != "F32" else raw.copy()
        self._release(info, start * row, stop * row)
        return out

    def read_columns(self, info: TensorInfo, start: int, stop: int, rows: tuple[int, int]) -> np.ndarray:
        first, last = rows
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


@dataclass(frozen=True)
class _Part:
    name: str  # the real tensor (q_proj) inside a packed view (qkv_proj)
    first_row: int  # where its rows start in the packed view


# Packed Phi-3 name -> the Llama-layout tensors it is made of, in row order.
PACKINGS = {
    "self_attn.qkv_proj.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    "mlp.gate_up_proj.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
}


class WeightStore:
    """All tensors of a checkpoint by Phi-3 name, opened lazily; use as a context manager."""

    def __init__(self, files: tuple[Path, ...], on_stage: StageCallback | None = None) -> None:
        from phi3_edge.exporter.checkpoint import is_gguf

        gguf_files = [path for path in files if is_gguf(path)]
        self._backends: list[TensorBackend] = []
        if gguf_files:
            from phi3_edge.exporter.gguf.store import GgufTensors

            self._backends.extend(GgufTensors(path) for path in gguf_files)
        safetensors = [path for path in files if path not in gguf_files]
        if safetensors:
            self._backends.append(SafetensorsFiles(safetensors))
        self._infos: dict[str, TensorInfo] = {}
        self._owner: dict[str, TensorBackend] = {}
        for backend in self._backends:
            for name, info in backend.infos.items():
                if name in self._infos:
                    raise CheckpointError(f"tensor {name!r} appears in two files", info.path)
                self._infos[name], self._owner[name] = info, backend
        self._packed = _packed_views(self._infos)
        self._used: set[str] = set()
        from phi3_edge.exporter.gguf.carry import CarryLog

        self.carry_log = CarryLog()  # GGUF blocks carried into MatMulNBits vs re-quantized (exporter/gguf/carry.py)
        if on_stage is not None:
            on_stage("headers")  # every header read, nothing converted yet

    def __enter__(self) -> WeightStore:
        return self

    def __exit__(self, *exc: object) -> None:
        for backend in self._backends:
            backend.close()

    def names(self) -> list[str]:
        return list(self._infos)

    def __contains__(self, name: str) -> bool:
        return name in self._infos or name in self._packed

    def backend_of(self, name: str) -> TensorBackend | None:
        """The backend holding a real tensor (None for packed views and unknown names)."""
        return self._owner.get(name)

    def parts_of(self, name: str) -> list[tuple[str, int]]:
        """(real tensor, first row) pairs behind a name: itself at row 0, or the parts of a packed view."""
        if name in self._packed:
            return [(part.name, part.first_row) for part in self._packed[name]]
        return [(name, 0)]

    def info(self, name: str, shape: tuple[int, ...]) -> TensorInfo:
        """The tensor's info after checking it exists with the shape the graph needs."""
        info = self._infos.get(name) or self._packed_info(name)
        if info is None:
            files = sorted({str(i.path.parent) for i in self._infos.values()}) or ["checkpoint"]
            raise CheckpointError(f"missing tensor {name!r}", files[0])
        if info.shape != tuple(shape):
            raise CheckpointError(f"tensor {name!r} has shape {list(info.shape)}, expected {list(shape)}", info.path)
        self._used.update(part for part, _ in self.parts_of(name))
        return info

    def unused(self) -> list[str]:
        return sorted(set(self._infos) - self._used)

    def rows_of(self, name: str) -> int:
        """First dimension of a tensor (0 if absent: the shape check that follows reports it as missing)."""
        info = self._infos.get(name) or self._packed_info(name)
        return info.shape[0] if info is not None and info.shape else 0

    def read_rows(self, info: TensorInfo, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) along the first axis, as float32."""
        pieces = [self._owner[name].read_rows(self._infos[name], a, b)
                  for name, a, b in self._pieces(info, start, stop)]
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=0)

    def read_columns(self, info: TensorInfo, start: int, stop: int, rows: tuple[int, int] | None = None) -> np.ndarray:
        """Columns [start, stop) of a 2-D tensor (optionally of a row range), as float32 (rows, stop - start)."""
        first, last = rows or (0, info.shape[0])
        pieces = [self._owner[name].read_columns(self._infos[name], start, stop, (a, b))
                  for name, a, b in self._pieces(info, first, last)]
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=0)

    def stored_kind(self, info: TensorInfo) -> str | None:
        """The one block-quantized GGML type behind `info` (all its parts), or None (float, safetensors, mixed
        types: those are read as float rows)."""
        kinds = set()
        for name, _ in self.parts_of(info.name):
            type_of = getattr(self._owner.get(name), "type_of", None)
            kinds.add(type_of(name) if type_of is not None else None)
        kind = kinds.pop() if len(kinds) == 1 else None
        return kind if kind not in (None, "F32", "F16", "BF16") else None

    def raw_rows(self, info: TensorInfo, start: int, stop: int) -> np.ndarray:
        """Stored bytes of rows [start, stop) (GGUF block-quantized tensors only; see stored_kind)."""
        owners: dict[str, Any] = self._owner  # only GGUF backends have raw_rows (stored_kind checked that)
        pieces = [owners[name].raw_rows(name, a, b) for name, a, b in self._pieces(info, start, stop)]
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=0)

    def _pieces(self, info: TensorInfo, start: int, stop: int) -> list[tuple[str, int, int]]:
        """(real tensor, its first row, its last row) covering rows [start, stop) of `info`."""
        if info.name not in self._packed:
            return [(info.name, start, stop)]
        pieces = []
        for part in self._packed[info.name]:
            rows = self._infos[part.name].shape[0]
            a, b = max(start, part.first_row), min(stop, part.first_row + rows)
            if a < b:
                pieces.append((part.name, a - part.first_row, b - part.first_row))
        return pieces

    def _packed_info(self, name: str) -> TensorInfo | None:
        parts = self._packed.get(name)
        if parts is None:
            return None
        infos = [self._infos[part.name] for part in parts]
        dtypes = sorted({i.dtype for i in infos})
        return TensorInfo(name, infos[0].path, "+".join(dtypes), (sum(i.shape[0] for i in infos), *infos[0].shape[1:]),
                          infos[0].offset, stored_bytes=sum(i.nbytes for i in infos))


def _packed_views(infos: dict[str, TensorInfo]) -> dict[str, tuple[_Part, ...]]:
    """Packed Phi-3 names for every layer whose Llama-layout parts are all present (and the packed one not)."""
    views: dict[str, tuple[_Part, ...]] = {}
    for name in infos:
        for packed, parts in PACKINGS.items():
            if not name.endswith("." + parts[0]):
                continue
            prefix = name[: -len(parts[0])]
            names = [prefix + part for part in parts]
            if prefix + packed in infos or not all(n in infos for n in names):
                continue
            if len({infos[n].shape[1:] for n in names}) != 1:
                raise CheckpointError(f"{', '.join(names)} do not share an input width", infos[name].path)
            offsets = np.cumsum([0] + [infos[n].shape[0] for n in names[:-1]]).tolist()
            views[prefix + packed] = tuple(_Part(n, int(o)) for n, o in zip(names, offsets, strict=True))
    return views

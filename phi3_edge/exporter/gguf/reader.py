"""One GGUF file: metadata and tensors, validated, read a slice of rows at a time.

`gguf.GGUFReader` memory-maps the file; a tensor is a (rows, row_bytes) uint8 view for block-quantized
types, or a (rows, cols) float view. Rows are independent in every GGML type (blocks run along a row), so a
row range, or an arbitrary list of rows (the Q/K permutation), is dequantized on its own.

Every failure is one CheckpointError naming the file: not a GGUF, truncated, unsupported tensor type.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from phi3_edge.errors import CheckpointError

MAGIC = b"GGUF"
# Types gguf.quants can dequantize in numpy. F32/F16/BF16 are plain; Q4_0/Q4_1/Q8_0 can also be carried into
# MatMulNBits as they are (their raw blocks, see raw_rows); the rest is dequantized then quantized per target.
FLOAT_TYPES = ("F32", "F16", "BF16")
CARRIED_TYPES = ("Q4_0", "Q4_1", "Q8_0")
DEQUANT_TYPES = ("Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ4_NL", "IQ4_XS")
SUPPORTED_TYPES = FLOAT_TYPES + CARRIED_TYPES + DEQUANT_TYPES


@dataclass(frozen=True)
class GgufTensor:
    name: str  # the GGUF name (blk.0.attn_q.weight)
    type_name: str  # GGML type: F32, Q4_0, ...
    shape: tuple[int, ...]  # row-major, as PyTorch would see it: (out, in) for a Linear weight
    nbytes: int
    data: np.ndarray  # (rows, row_bytes) uint8 for quantized types, (rows, cols) float otherwise; a memmap view


def open_gguf(path: Path) -> GgufFile:
    """The parsed file, shared by the checkpoint check, the spec and the weight store of one export.

    gguf's reader builds Python objects for every metadata entry: a 49k-token vocabulary takes ~6 s to parse,
    and an export opens the file three times. The cache key includes size, mtime and inode, so a file replaced
    on disk is parsed again."""
    stat = Path(path).stat()
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    file = _open_cached(*key)
    if file.closed:  # the weight store of an earlier export closed its mmap: parse again
        _open_cached.cache_clear()
        file = _open_cached(*key)
    return file


@lru_cache(maxsize=2)
def _open_cached(path: str, size: int, mtime_ns: int, inode: int) -> GgufFile:
    return GgufFile(Path(path))


class GgufFile:
    def __init__(self, path: Path) -> None:
        import gguf

        self.path = Path(path)
        _check_magic(self.path)
        try:
            self._reader = gguf.GGUFReader(self.path, "r")
        except (ValueError, IndexError, OSError, KeyError, TypeError) as exc:
            # The reader indexes past the end of a truncated file or hits an impossible count on junk.
            raise CheckpointError(f"cannot read this GGUF file ({_one_line(exc)}): truncated or corrupt; "
                                  "download it again", self.path) from None
        self.tensors = {t.name: t for t in (self._tensor(raw) for raw in self._reader.tensors)}
        self.closed = False

    def _tensor(self, raw: Any) -> GgufTensor:
        type_name = raw.tensor_type.name
        shape = tuple(int(d) for d in reversed(raw.shape.tolist()))  # GGUF lists ne[0] (the row length) first
        if type_name not in SUPPORTED_TYPES:
            raise CheckpointError(f"tensor {raw.name!r} has GGML type {type_name}, which phi3-edge cannot read "
                                  f"(supported: {', '.join(SUPPORTED_TYPES)}); re-quantize it with llama.cpp's "
                                  "llama-quantize to one of those", self.path)
        data = raw.data
        if data.size and len(shape) == 1:
            data = data.reshape(1, -1) if type_name not in FLOAT_TYPES else data
        return GgufTensor(str(raw.name), type_name, shape, int(raw.n_bytes), data)

    def field(self, key: str, default: Any = None) -> Any:
        """A metadata value as Python data (str, int, float, bool, list), or `default` when absent."""
        entry = self._reader.fields.get(key)
        if entry is None:
            return default
        try:
            return entry.contents()
        except (ValueError, IndexError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"metadata {key!r} cannot be read ({_one_line(exc)})", self.path) from None

    def keys(self) -> list[str]:
        return list(self._reader.fields)

    def rows(self, tensor: GgufTensor, index: slice | np.ndarray) -> np.ndarray:
        """float32 rows of a 2-D tensor (a slice or an index array), dequantized; (len, cols)."""
        return dequantize(self.raw_rows(tensor, index), tensor.type_name, tensor.shape[-1])

    def raw_rows(self, tensor: GgufTensor, index: slice | np.ndarray) -> np.ndarray:
        """The stored bytes (or floats) of some rows, copied out of the map."""
        data = tensor.data if len(tensor.shape) > 1 or tensor.type_name not in FLOAT_TYPES else tensor.data[None]
        return np.array(data[index])

    def vector(self, tensor: GgufTensor) -> np.ndarray:
        """A 1-D tensor (norm weights, rope factors) as float32."""
        return self.rows(tensor, slice(0, 1)).reshape(-1) if len(tensor.shape) == 1 else self.rows(tensor, slice(None))

    def close(self) -> None:
        self.closed = True
        mapped = getattr(self._reader, "data", None)
        mmap_obj = getattr(mapped, "_mmap", None)
        if mmap_obj is not None:
            try:
                mmap_obj.close()
            except BufferError:  # a view still exported (a caller kept a slice): the GC closes it later
                pass


def dequantize(raw: np.ndarray, type_name: str, cols: int) -> np.ndarray:
    """(rows, row_bytes) stored data -> (rows, cols) float32."""
    import gguf

    if type_name == "F32":
        return raw.astype(np.float32, copy=False)
    if type_name == "F16":
        return raw.astype(np.float32)
    out = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[type_name])
    return np.asarray(out, dtype=np.float32).reshape(raw.shape[0], cols)


def _check_magic(path: Path) -> None:
    try:
        with path.open("rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        raise CheckpointError(f"cannot read ({exc.strerror or exc})", path) from None
    if head != MAGIC:
        raise CheckpointError("not a GGUF file (no GGUF magic at the start)", path)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 100 else line[:97] + "..."

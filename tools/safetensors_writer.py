"""A numpy-only safetensors writer, so the demo builds a checkpoint without torch or the safetensors package.

The format (https://huggingface.co/docs/safetensors): an 8-byte little-endian header length, a JSON header
{name: {dtype, shape, data_offsets}} padded with spaces to a multiple of 8 bytes, then the raw little-endian
tensor bytes back to back in the order of their offsets.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

# safetensors dtype names for the numpy types a checkpoint carries.
_DTYPES: dict[np.dtype, str] = {
    np.dtype("float32"): "F32",
    np.dtype("float16"): "F16",
    np.dtype("int64"): "I64",
    np.dtype("int32"): "I32",
}


def save_file(tensors: dict[str, np.ndarray], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` to `path`; metadata defaults to {"format": "pt"}, what transformers expects to find."""
    arrays = {name: _little_endian(tensors[name]) for name in sorted(tensors)}
    header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, array in arrays.items():
        header[name] = {"dtype": _DTYPES[array.dtype.newbyteorder("=")], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # the data must start 8-byte aligned
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(blob)))
        handle.write(blob)
        for array in arrays.values():
            handle.write(array.tobytes(order="C"))


def _little_endian(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    if array.dtype.newbyteorder("=") not in _DTYPES:
        raise TypeError(f"no safetensors dtype for {array.dtype}")
    return array.astype(array.dtype.newbyteorder("<"), copy=False)

"""Blocks quantized before the export from calibration data (GPTQ), handed to the exporter by tensor name.

GPTQ needs every Linear's input statistics, which only a forward pass over calibration text gives; that pass
(reference/calibrate.py) runs before the graph is built and fills a `CalibratedBlocks`. The exporter's
NBitsLinear then takes a tensor's codes and scales from here instead of rounding the checkpoint rows itself,
row range by row range (a separate-Q/K/V plan reads three ranges of one packed qkv_proj).

Memory stays bounded: the body of a 14B model is ~7 GB of packed int4 codes, so nothing is held in RAM. Each
added tensor is spilled to a private temp folder at once, and `rows()` maps the files read-only, copies the
asked rows and drops the mapping (a mapping kept open would count its touched pages in the process's RSS):

    add(name, blocks) ─► spill folder: <i>.q.npy (packed codes), <i>.scales.npy, [<i>.zero.npy]
    rows(name, a, b)  ◄─ np.load(mmap_mode="r")[a:b], unpacked ─► QuantizedBlocks of rows [a, b)

The folder lives under the system temp dir (TMPDIR) unless `parent` names another one, never inside the
checkpoint; close() (or leaving the `with` block, or the object being collected, or the interpreter exiting)
deletes it, on failure too.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from phi3_edge.quantize.blockwise import QuantizedBlocks, pack_weights, unpack_weights

SPILL_PREFIX = "phi3-edge-calibrated-"


@dataclass(frozen=True)
class _Spilled:
    """Where one tensor went, and what its files hold."""

    stem: Path  # <folder>/<index>: the files are <stem>.q.npy, <stem>.scales.npy, <stem>.zero.npy
    bits: int
    block_size: int
    k: int
    rows: int
    zero_points: bool


class CalibratedBlocks:
    """Calibrated tensors by checkpoint name, spilled to disk as they are added (see the module docstring)."""

    def __init__(self, algo: str, parent: Path | None = None) -> None:
        self.algo = algo  # what produced them ("gptq"): the recipe of every tensor held here names it
        self._parent = parent  # where the spill folder is made (None: the system temp dir)
        self._held: dict[str, _Spilled] = {}
        self._folder: Path | None = None  # made on the first add
        self._cleanup: weakref.finalize[..., object] | None = None
        self._closed = False

    def __enter__(self) -> CalibratedBlocks:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    @property
    def folder(self) -> Path | None:
        """The spill folder (None until something is added, and after close())."""
        return self._folder

    def close(self) -> None:
        """Delete the spill folder; the blocks can no longer be read. Safe to call twice."""
        if self._cleanup is not None:
            self._cleanup()  # a finalize runs its callback at most once
        self._folder, self._closed = None, True

    def add(self, name: str, quantized: QuantizedBlocks) -> None:
        stem = self._spill_folder() / str(len(self._held))
        np.save(f"{stem}.q.npy", pack_weights(quantized.q, quantized.bits))  # (N, n_blocks, block*bits/8)
        np.save(f"{stem}.scales.npy", quantized.scales)  # (N, n_blocks)
        if quantized.zero_points is not None:
            np.save(f"{stem}.zero.npy", quantized.zero_points)  # (N, n_blocks)
        self._held[name] = _Spilled(stem, quantized.bits, quantized.block_size, quantized.k,
                                    int(quantized.q.shape[0]), quantized.zero_points is not None)

    def names(self) -> list[str]:
        return list(self._held)

    def __contains__(self, name: object) -> bool:
        return name in self._held

    def rows(self, name: str, first: int, last: int, bits: int, block_size: int) -> QuantizedBlocks | None:
        """Rows [first, last) of a held tensor; None if not held. ValueError if it was made for another format."""
        held = self._held.get(name)
        if held is None:
            return None
        if (held.bits, held.block_size) != (bits, block_size):
            raise ValueError(f"{name}: calibrated as int{held.bits} block {held.block_size}, the recipe asks for "
                             f"int{bits} block {block_size}")
        if self._closed:
            raise ValueError(f"{name}: the calibrated blocks were closed (their spill folder is deleted)")
        packed = _read_rows(f"{held.stem}.q.npy", first, last)
        zero = _read_rows(f"{held.stem}.zero.npy", first, last) if held.zero_points else None
        return QuantizedBlocks(unpack_weights(packed, held.bits), _read_rows(f"{held.stem}.scales.npy", first, last),
                               zero, held.bits, held.k)

    def whole(self, name: str) -> QuantizedBlocks:
        """One held tensor, all rows, read back into memory (KeyError if not held)."""
        held = self._held[name]
        found = self.rows(name, 0, held.rows, held.bits, held.block_size)
        assert found is not None
        return found

    @property
    def blocks(self) -> Mapping[str, QuantizedBlocks]:
        """Read-only name -> whole tensor view; each lookup reads that tensor back (one at a time in memory)."""
        return _BlocksView(self)

    def _spill_folder(self) -> Path:
        if self._closed:
            raise ValueError("the calibrated blocks were closed: nothing more can be added")
        if self._folder is None:
            parent = None if self._parent is None else str(self._parent)
            self._folder = Path(tempfile.mkdtemp(prefix=SPILL_PREFIX, dir=parent))
            # Runs on close(), when the object is collected, or at interpreter exit, whichever comes first.
            self._cleanup = weakref.finalize(self, shutil.rmtree, self._folder, ignore_errors=True)
        return self._folder


def _read_rows(path: str, first: int, last: int) -> np.ndarray:
    """Rows [first, last) of a .npy file as an in-memory copy; the mapping is released on return."""
    mapped = np.load(path, mmap_mode="r")
    try:
        return np.array(mapped[first:last])  # a copy: nothing refers to the mapping afterwards
    finally:
        del mapped


class _BlocksView(Mapping[str, QuantizedBlocks]):
    def __init__(self, owner: CalibratedBlocks) -> None:
        self._owner = owner

    def __getitem__(self, name: str) -> QuantizedBlocks:
        return self._owner.whole(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._owner.names())

    def __len__(self) -> int:
        return len(self._owner.names())

"""GGUF blocks carried into MatMulNBits as they are: no dequantize, no second rounding.

Where the formats meet (blocks of 32 along K, one fp16 scale each):

    Q4_0  d, 16 bytes of nibbles    w = (q - 8) * d        -> int4, scale d, zero point 8 (the default)
    Q8_0  d, 32 int8                w = q * d              -> int8, code q + 128, zero point 128 (the default)
    Q4_1  d, m, 16 bytes            w = q * d + m          -> int4, scale d, float zero point -m / d
                                                              (d == 0: every weight is m: code 1, scale m, zp 0)

GGUF packs element j with element j + 16 in one byte (low, high nibble); MatMulNBits packs consecutive pairs,
so the codes are unpacked and repacked: the same integers, moved. Q4_1's float zero point is exact only in
float32 scales (fp16 would round -m/d), so it is carried for float32 I/O only; a symmetric recipe then gains
a zero-point input (MatMulNBits takes float zero points, as HQQ uses them), and only when
CARRY_FLOAT_ZERO_POINTS is on (off by default: the CPU kernel is slow with them, see below).
Anything else (other types, other widths or blocks, mixed types across a packed q|k|v) is dequantized and
quantized by the recipe, as before; `CarryLog` counts both, for the summary and manifest.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from phi3_edge.quantize.blockwise import QuantizedBlocks

if TYPE_CHECKING:
    from phi3_edge.exporter.weights import TensorInfo, WeightStore

BLOCK = 32
_FORMATS = {"Q4_0": 4, "Q4_1": 4, "Q8_0": 8}  # GGML type -> the MatMulNBits width it carries into
ROWS_PER_CHUNK = 1024
# Q4_1 carried needs float zero points, and onnxruntime 1.32's CPU MatMulNBits takes a slow path with them:
# SmolLM2-135M cpu-int4 decoded at 0.65 tok/s carried vs 11.8 tok/s re-quantized to symmetric int4 (2-core x86,
# `phi3-edge bench --prompt-len 64 --gen-len 32`). So Q4_1 is re-quantized by default; the carry stays exact
# and tested (tests/exporter/test_gguf_carry.py turns this on) for runtimes whose kernel is fast with them.
CARRY_FLOAT_ZERO_POINTS = False
# (checkpoint tensor name, (bits, block)): the MatMulNBits format a tensor's stored blocks carry into
CarryFormats = tuple[tuple[str, tuple[int, int]], ...]
_HEAD_NAMES = ("lm_head.weight", "model.embed_tokens.weight")  # an untied head's tensor, else the tied table
_LAYER_PREFIX = re.compile(r"^model\.layers\.\d+\.")


@dataclass
class CarryLog:
    """Which tensors went straight through and which were re-quantized, by GGML type."""

    carried: dict[str, int] = field(default_factory=dict)
    requantized: dict[str, int] = field(default_factory=dict)

    def note(self, kind: str, carried: bool) -> None:
        book = self.carried if carried else self.requantized
        book[kind] = book.get(kind, 0) + 1

    def describe(self) -> str | None:
        if not self.carried and not self.requantized:
            return None
        parts = [f"{n} {k} carried as they are" for k, n in sorted(self.carried.items())]
        parts += [f"{n} {k} dequantized and re-quantized" for k, n in sorted(self.requantized.items())]
        return "; ".join(parts)


def can_carry(kind: str, bits: int, block_size: int, scale_dtype: str) -> bool:
    if _FORMATS.get(kind) != bits or block_size != BLOCK:
        return False
    return kind != "Q4_1" or (CARRY_FLOAT_ZERO_POINTS and scale_dtype == "float32")


def carry_formats(weight_files: Iterable[Path], head: bool = False) -> CarryFormats:
    """(tensor, (bits, block)) for each tensor whose stored GGUF blocks would be carried as they are into that
    MatMulNBits format: every decoder Linear, by the checkpoint name the recipe is asked for (packed qkv_proj /
    gate_up_proj views included: carried only when all their parts share one carryable type); head: the
    lm_head's tensor only (lm_head.weight, else the tied table). Tensors stored otherwise (float, Q6_K, Q4_1,
    a packed view of mixed types) are absent. The recipe keeps that format for the tensors listed (quantize/
    recipe.py ModelShape), or their stored codes would be dequantized and rounded a second time. Empty for
    safetensors (nothing stored in blocks)."""
    from phi3_edge.exporter.checkpoint import is_gguf
    from phi3_edge.exporter.weights import WeightStore

    files = tuple(path for path in weight_files if is_gguf(path))
    if not files:
        return ()
    # Not closed: its files are the parsed ones open_gguf shares with the export (closing them would make
    # the export parse them again). The store's own rule (stored_kind) is the one carry_rows applies.
    store = WeightStore(files)
    names = [n for n in _HEAD_NAMES if n in store][:1] if head else _decoder_linears(store)
    formats = []
    for name in names:
        kind = store.stored_kind(store.info(name, _shape(store, name)))
        # can_carry's own rule, at fp32 scales (the dtype under which most kinds carry; the recipe is not
        # known yet): one rule decides what is carried and what the recipe must keep for it.
        if kind is not None and can_carry(kind, _FORMATS.get(kind, 0), BLOCK, "float32"):
            formats.append((name, (_FORMATS[kind], BLOCK)))
    return tuple(formats)


def _decoder_linears(store: WeightStore) -> list[str]:
    """Every decoder tensor of the store and every packed view of one (Llama files' q|k|v, gate|up)."""
    from phi3_edge.exporter.weights import PACKINGS

    real = [name for name in store.names() if _LAYER_PREFIX.match(name)]
    prefixes = sorted({match.group(0) for name in real if (match := _LAYER_PREFIX.match(name))})
    return real + [p + packed for p in prefixes for packed in PACKINGS if p + packed in store and p + packed
                   not in real]


def _shape(store: WeightStore, name: str) -> tuple[int, ...]:
    """A tensor's shape as the store lists it (a packed view: its parts' rows, their shared columns)."""
    first = store.parts_of(name)[0][0]
    backend = store.backend_of(first)
    assert backend is not None  # parts_of names real tensors only
    return (store.rows_of(name), *backend.infos[first].shape[1:])


def carried_chunks(raw_rows: Iterator[np.ndarray], kind: str, k: int) -> Iterator[QuantizedBlocks]:
    """QuantizedBlocks for each chunk of stored rows ((rows, row_bytes) uint8) of one GGML type."""
    for raw in raw_rows:
        yield to_blocks(raw, kind, k)


def to_blocks(raw: np.ndarray, kind: str, k: int) -> QuantizedBlocks:
    rows, blocks = raw.shape[0], k // BLOCK
    if kind == "Q8_0":
        data = raw.reshape(rows, blocks, 34)  # (N, n_blocks, 2 + 32)
        scales = data[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)  # (N, n_blocks)
        codes = (data[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)  # (N, n_blocks, 32)
        return QuantizedBlocks(codes, scales, None, 8, k)
    width = 18 if kind == "Q4_0" else 20
    data = raw.reshape(rows, blocks, width)  # (N, n_blocks, header + 16)
    halves = data[..., :width - 16].copy().view(np.float16).astype(np.float32)  # (N, n_blocks, 1 or 2)
    nibbles = data[..., width - 16:]  # (N, n_blocks, 16)
    codes = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=-1)  # (N, n_blocks, 32): element j, j + 16
    scales = halves[..., 0]
    if kind == "Q4_0":
        return QuantizedBlocks(codes, scales, None, 4, k)
    minimum = halves[..., 1]
    flat = scales == 0  # every weight of the block is m
    safe = np.where(flat, 1.0, scales)
    zero = np.where(flat, 0.0, -minimum / safe).astype(np.float32)  # (q - zp) * d = q d + m
    codes = np.where(flat[..., None], np.uint8(1), codes).astype(np.uint8)
    scales = np.where(flat, minimum, scales).astype(np.float32)
    return QuantizedBlocks(codes, scales, zero, 4, k)


def carry_rows(store: WeightStore, info: TensorInfo, rows: tuple[int, int], bits: int, block_size: int,
               scale_dtype: str, *, float_zero_points: bool = True) -> Iterator[QuantizedBlocks] | None:
    """The stored blocks of rows [first, last) of `info` as QuantizedBlocks, chunk by chunk, when they can be
    carried into this recipe losslessly (and logged either way); None: quantize from float rows instead."""
    kind = store.stored_kind(info)
    if kind is None:
        return None  # float or safetensors weights: nothing to carry, nothing to log
    ok = can_carry(kind, bits, block_size, scale_dtype) and (float_zero_points or kind != "Q4_1")
    store.carry_log.note(kind, ok)
    if not ok:
        return None
    first, last = rows
    starts = range(first, last, ROWS_PER_CHUNK)
    raw = (store.raw_rows(info, a, min(last, a + ROWS_PER_CHUNK)) for a in starts)
    return carried_chunks(raw, kind, info.shape[1])

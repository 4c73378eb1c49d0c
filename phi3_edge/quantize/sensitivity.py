"""Measured sensitivity: which tensors to keep at int8 under a byte budget, from their error on calibration data.

Each candidate tensor has an error at the narrow width (int4) and at the wide one (int8), measured the same
way for all (reference/sensitivity_pass.py: the error energy each reaches the normalised final state with, on
the calibration windows; relative_output_error below for the lm_head's logits), and the bytes widening it
costs (matmul_nbits_bytes: what the export's initializers hold). The choice is greedy by error removed
per byte, the knapsack heuristic that is optimal when items are small next to the budget:

    budget = size_budget x (bytes of the all-int4 model)  -  bytes of the all-int4 model
    sort candidates by (err4 - err8) / extra bytes, widest gain first; take each that still fits

This replaces llama.cpp's fixed use_more_bits layer rule (quantize/mixed.py) with a choice the data makes:
on a small tied model the embedding/lm_head table can be worth more than every down projection together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Candidate:
    name: str  # checkpoint tensor name
    narrow_error: float  # error with this tensor at the narrow width, everything else as is
    wide_error: float  # the same at the wide width
    extra_bytes: int  # bytes the wide width adds

    @property
    def gain_per_byte(self) -> float:
        return (self.narrow_error - self.wide_error) / max(1, self.extra_bytes)


def choose_wide(candidates: Sequence[Candidate], budget_bytes: int) -> list[str]:
    """Names to widen, greedily by error removed per byte, within `budget_bytes` extra bytes."""
    chosen: list[str] = []
    left = budget_bytes
    for cand in sorted(candidates, key=lambda c: c.gain_per_byte, reverse=True):
        if cand.narrow_error <= cand.wide_error:
            break  # widening no longer helps (sorted: neither does anything after it)
        if cand.extra_bytes <= left:
            chosen.append(cand.name)
            left -= cand.extra_bytes
    return chosen


def output_energy(w: np.ndarray, h: np.ndarray) -> float:
    """tr(W H W^T) = sum over the calibration inputs x of |W x|^2, for H = sum x^T x."""
    w64 = w.astype(np.float64)  # (N, K)
    return float(np.sum((w64 @ h.astype(np.float64)) * w64))


def relative_output_error(w: np.ndarray, w_hat: np.ndarray, h: np.ndarray) -> float:
    """tr(dW H dW^T) / tr(W H W^T): the output error energy on the calibration inputs, relative to the output's."""
    signal = output_energy(w, h)
    return output_energy(w - w_hat.astype(np.float64), h) / signal if signal else 0.0


def matmul_nbits_bytes(n: int, k: int, bits: int, block_size: int, zero: str = "none",
                       scale_bytes: int = 4) -> int:
    """Initializer bytes of one MatMulNBits weight (N, K): codes (K padded to whole blocks), scales, zero points.

    zero: "none" (symmetric), "uint" (packed bits-wide codes per block, rows padded to whole bytes) or "float"
    (HQQ's, one scale-sized value per block).
    """
    blocks = -(-k // block_size)
    codes = n * blocks * block_size * bits // 8
    zeros = {"none": 0, "uint": n * -(-blocks * bits // 8), "float": n * blocks * scale_bytes}[zero]
    return codes + n * blocks * scale_bytes + zeros


def budget_bytes(narrow_model_bytes: int, size_budget: float) -> int:
    """Extra bytes allowed by --size-budget (a factor of the all-narrow model's bytes, >= 1)."""
    if not size_budget >= 1.0:
        raise ValueError(f"--size-budget must be >= 1.0 (a factor of the plain int4 size), got {size_budget}")
    return int(narrow_model_bytes * (size_budget - 1.0))

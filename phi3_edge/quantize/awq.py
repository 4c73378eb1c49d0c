"""AWQ: per-input-channel scales that protect the channels large activations flow through, folded away.

A Linear y = x W^T is unchanged by  x -> x / s,  W -> W * s  (s per input channel). Quantizing W * s instead of
W gives the channels with large |x| (scaled up) a finer relative grid; the division of x by s is folded into
whatever produced x, so the exported graph is the same graph with different weights:

    RMSNorm(g) ─► qkv_proj          g / s,  W_qkv * s              (input_layernorm)
    RMSNorm(g) ─► gate_up_proj      g / s,  W_gate_up * s          (post_attention_layernorm)
    up rows of gate_up ─► down      W_up rows / s,  W_down * s     (silu(gate) * up is linear in up)
    v ─► o_proj                     not folded: with GQA one v head feeds several q heads' outputs

s = mean|x|^alpha (normalised to geometric mean 1), alpha searched on a grid per group for the lowest output
error on the calibration rows, as AWQ does (Lin et al. 2023). Scaling whole rows (the up rows) by a constant
leaves their symmetric block codes unchanged: that fold costs no accuracy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from phi3_edge.quantize.blockwise import QuantizedBlocks, dequantize

GRID = 20  # alpha in 0, 1/20, ..., 1 (AWQ's default grid)
COARSE = 4  # search_scales visits every 4th alpha first, then halves the distance around the best
Quantizer = Callable[[np.ndarray], QuantizedBlocks]


def channel_scales(abs_mean: np.ndarray, alpha: float) -> np.ndarray:
    """(K,) scales mean|x|^alpha with geometric mean 1 (so the weights' overall range stays put)."""
    s = np.power(np.maximum(abs_mean, 1e-8), alpha)
    out: np.ndarray = (s / np.exp(np.mean(np.log(s)))).astype(np.float32)
    return out


def search_scales(x: np.ndarray, weights: Sequence[np.ndarray], abs_mean: np.ndarray, quantize: Quantizer,
                  grid: int = GRID, coarse: int | None = None) -> tuple[np.ndarray, float, float]:
    """(s, best alpha, error ratio to alpha=0) for Linears sharing the input x (tokens, K).

    The error is sum over the Linears of ||x W^T - (x / s) Q(W * s)^T||^2 on the given rows. Coarse to fine on
    AWQ's grid of `grid` + 1 alphas: every `coarse`-th step first (0, 0.2, .., 1), then the best one's
    neighbours at half that distance, and so on down to one step: 6 + 2 + 2 = 10 evaluations instead of 21, the
    full scan's grid point whenever the error is unimodal in alpha (coarse=1: the full scan; None: COARSE).
    """
    coarse = COARSE if coarse is None else coarse  # read at call time: bench/quant_real.py compares both
    x = x.astype(np.float32)
    reference = [x @ w.T for w in weights]  # (T, N) each
    errors: dict[int, tuple[float, np.ndarray]] = {}

    def evaluate(step: int) -> None:
        if step in errors or not 0 <= step <= grid:
            return
        s = channel_scales(abs_mean, step / grid)
        xs = x / s  # (T, K)
        errors[step] = (sum(float(np.square(ref - xs @ dequantize(quantize(w * s)).T).sum())
                            for ref, w in zip(reference, weights, strict=True)), s)

    for step in [*range(0, grid + 1, coarse), grid]:
        evaluate(step)
    distance = coarse
    while distance > 1:
        distance //= 2
        centre = min(errors, key=lambda k: (errors[k][0], k))
        evaluate(centre - distance)
        evaluate(centre + distance)
    best = min(errors, key=lambda k: (errors[k][0], k))  # ties: the smaller alpha, as the full scan kept
    base = errors[0][0]
    return errors[best][1], best / grid, errors[best][0] / base if base else 1.0


@dataclass(frozen=True)
class Fold:
    """What one checkpoint tensor becomes on read: W[r, c] * multiply_columns[c] / divide_rows[r - row_start].

    A 1-D tensor (an RMSNorm gain) has only "rows": g[c] / divide_rows[c]."""

    multiply_columns: np.ndarray | None = None  # (K,)
    divide_rows: np.ndarray | None = None  # (R,) for rows [row_start, row_start + R)
    row_start: int = 0

    def apply(self, rows: np.ndarray, first: int, columns: tuple[int, int] | None = None) -> np.ndarray:
        """`rows` = tensor rows [first, first + len) (optionally only columns [a, b)), folded, as a new array."""
        out = rows.astype(np.float32, copy=True)
        if self.divide_rows is not None:
            lo = max(first, self.row_start)
            hi = min(first + len(out), self.row_start + len(self.divide_rows))
            if lo < hi:
                divisor = self.divide_rows[lo - self.row_start:hi - self.row_start]  # (hi - lo,)
                out[lo - first:hi - first] /= divisor.reshape((-1,) + (1,) * (out.ndim - 1))
        if self.multiply_columns is not None:
            a, b = columns or (0, out.shape[1])
            out *= self.multiply_columns[a:b]  # broadcast over rows: (R, b - a)
        return out


@dataclass(frozen=True)
class AwqScales:
    """AWQ's per-input-channel scales of each layer, by the (packed, Phi-3) checkpoint name of the Linear whose
    input they scale: qkv_proj and gate_up_proj (H,), down_proj (I,). Tiny: a few vectors per layer.

    `folds()` turns them into the weight transformation of the module docstring (norm / s, columns * s, the up
    rows of gate_up / s_down); the exported graph is then the unscaled graph, computing the same function."""

    scales: dict[str, np.ndarray]
    alphas: dict[str, float] = field(default_factory=dict)  # the Linear searched -> chosen alpha
    gains: dict[str, float] = field(default_factory=dict)  # -> output error / unscaled (RTN) error
    # each clip-searched Linear -> its block-Gram output error / RTN's on the same (folded) weights
    clip_gains: dict[str, float] = field(default_factory=dict)

    def merge(self, other: AwqScales) -> None:
        """Take in another set's vectors, alphas and error ratios (a layer's, as the calibration pass finds it)."""
        self.scales.update(other.scales)
        self.alphas.update(other.alphas)
        self.gains.update(other.gains)
        self.clip_gains.update(other.clip_gains)

    def folds(self) -> dict[str, Fold]:
        """Checkpoint tensor name -> its fold (tensors not named here are read as they are)."""
        columns: dict[str, np.ndarray] = dict(self.scales)
        rows: dict[str, tuple[int, np.ndarray]] = {}
        for name, s in self.scales.items():
            prefix, _, stem = name.rpartition(".self_attn.") if ".self_attn." in name else name.rpartition(".mlp.")
            if stem == "qkv_proj.weight":
                rows[f"{prefix}.input_layernorm.weight"] = (0, s)
            elif stem == "gate_up_proj.weight":
                rows[f"{prefix}.post_attention_layernorm.weight"] = (0, s)
            elif stem == "down_proj.weight":
                rows[f"{prefix}.mlp.gate_up_proj.weight"] = (len(s), s)  # the up rows: the second half
            else:
                raise ValueError(f"{name}: AWQ scales fold into qkv_proj, gate_up_proj or down_proj only")
        out = {}
        for name in sorted(set(columns) | set(rows)):
            start, divisor = rows.get(name, (0, None))
            out[name] = Fold(columns.get(name), divisor, start)
        return out

    def to_json(self) -> dict[str, object]:
        """manifest.json's summary: the alphas chosen and the error ratio each reached (vectors omitted)."""
        out: dict[str, object] = {"alphas": dict(self.alphas),
                                  "error_ratio": {k: round(v, 4) for k, v in self.gains.items()}}
        if self.clip_gains:
            out["clip_error_ratio"] = {k: round(v, 4) for k, v in self.clip_gains.items()}
        return out

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

import numpy as np

from phi3_edge.quantize.blockwise import QuantizedBlocks, dequantize

GRID = 20  # alpha in 0, 1/20, ..., 1 (AWQ's default grid)
Quantizer = Callable[[np.ndarray], QuantizedBlocks]


def channel_scales(abs_mean: np.ndarray, alpha: float) -> np.ndarray:
    """(K,) scales mean|x|^alpha with geometric mean 1 (so the weights' overall range stays put)."""
    s = np.power(np.maximum(abs_mean, 1e-8), alpha)
    out: np.ndarray = (s / np.exp(np.mean(np.log(s)))).astype(np.float32)
    return out


def search_scales(x: np.ndarray, weights: Sequence[np.ndarray], abs_mean: np.ndarray, quantize: Quantizer,
                  grid: int = GRID) -> tuple[np.ndarray, float, float]:
    """(s, best alpha, error ratio to alpha=0) for Linears sharing the input x (tokens, K).

    The error is sum over the Linears of ||x W^T - (x / s) Q(W * s)^T||^2 on the given rows.
    """
    x = x.astype(np.float32)
    reference = [x @ w.T for w in weights]  # (T, N) each
    best: tuple[float, float, np.ndarray] | None = None
    base = 0.0
    for step in range(grid + 1):
        alpha = step / grid
        s = channel_scales(abs_mean, alpha)
        xs = x / s  # (T, K)
        error = sum(float(np.square(ref - xs @ dequantize(quantize(w * s)).T).sum())
                    for ref, w in zip(reference, weights, strict=True))
        if step == 0:
            base = error
        if best is None or error < best[0]:
            best = (error, alpha, s)
    assert best is not None
    return best[2], best[1], best[0] / base if base else 1.0

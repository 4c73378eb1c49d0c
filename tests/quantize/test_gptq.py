"""GPTQ: lower output error than RTN on correlated inputs, the same symmetric grid MatMulNBits reads."""

from __future__ import annotations

import numpy as np
import pytest

from phi3_edge.quantize.blockwise import dequantize, quantize_rtn
from phi3_edge.quantize.gptq import hessian_factor, output_error, quantize_gptq


def problem(k: int = 128, n: int = 48, tokens: int = 512, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(k, k)) / np.sqrt(k)  # correlated channels, a few of them large (as in real models)
    x = rng.normal(size=(tokens, k)) @ mix * (1 + 4 * (rng.random(k) < 0.05))
    h = (x.T @ x).astype(np.float64)
    return (rng.normal(size=(n, k)) * 0.05).astype(np.float32), h


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_rtn_on_the_output_error(act_order: bool) -> None:
    w, h = problem()
    rtn = output_error(w, dequantize(quantize_rtn(w, 4, 32, True)), h)
    gptq = output_error(w, dequantize(quantize_gptq(w, h, 4, 32, act_order=act_order)), h)
    # Measured 0.47x (in order) and 0.40x (act-order) of RTN's error on this problem; 0.7 leaves seed margin
    # while failing any version that stops propagating the error (which lands at ~1.0x).
    assert gptq < 0.7 * rtn


def test_gptq_codes_are_the_symmetric_grid() -> None:
    w, h = problem(k=80)  # K not a multiple of the block: the last block is padded, as RTN pads it
    blocks = quantize_gptq(w, h, 4, 32)
    assert blocks.zero_points is None and blocks.q.shape == (48, 3, 32) and blocks.q.dtype == np.uint8
    assert blocks.q.max() <= 15 and (blocks.q[:, -1, 16:] == 8).all()  # padding decodes to exactly 0
    assert dequantize(blocks).shape == w.shape


def test_row_chunks_equal_the_whole_tensor() -> None:
    """Rows are independent given H: the exporter may stream a tensor through GPTQ in row chunks."""
    w, h = problem()
    factor = hessian_factor(h, 0.01, True)
    whole = quantize_gptq(w, h, 4, 32, act_order=True, factor=factor)
    parts = [quantize_gptq(w[a:a + 16], h, 4, 32, act_order=True, factor=factor) for a in range(0, 48, 16)]
    np.testing.assert_array_equal(np.concatenate([p.q for p in parts]), whole.q)
    np.testing.assert_array_equal(np.concatenate([p.scales for p in parts]), whole.scales)


def test_dead_columns_are_zero_and_do_not_break_the_factor() -> None:
    w, h = problem()
    h[5, :] = h[:, 5] = 0.0  # an input channel no calibration token reached
    out = dequantize(quantize_gptq(w, h, 4, 32))
    assert np.isfinite(out).all() and (out[:, 5] == 0).all()

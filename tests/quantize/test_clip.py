"""The block-Gram clip search: never worse than RTN on its objective, better on skewed inputs, exact blocks."""

from __future__ import annotations

import numpy as np
import pytest

from phi3_edge.quantize.blockwise import _storable, dequantize, quantize_rtn, to_blocks
from phi3_edge.quantize.clip import block_error, block_grams, clip_search, scaled_grams


def skewed_inputs(tokens: int, k: int, seed: int) -> np.ndarray:
    """Activations whose channel magnitudes span ~e^-2 .. e^2 (as real RMSNorm outputs do), with correlations."""
    rng = np.random.default_rng(seed)
    mix = np.eye(k) + 0.3 * rng.standard_normal((k, k)) / np.sqrt(k)
    return (rng.standard_normal((tokens, k)) @ mix * np.exp(rng.uniform(-2, 2, k))).astype(np.float32)


def objective(w: np.ndarray, quantized, grams: np.ndarray) -> np.ndarray:
    blocks = to_blocks(w, grams.shape[1])
    return block_error(blocks, quantized.scales, quantized.q, quantized.bits, grams)


@pytest.mark.parametrize(("bits", "block", "k"), [(4, 32, 96), (4, 64, 128), (8, 32, 80), (4, 32, 70)])
def test_never_worse_than_rtn_per_block_and_better_overall(bits: int, block: int, k: int) -> None:
    rng = np.random.default_rng(bits + block + k)
    w = rng.standard_t(4, (48, k)).astype(np.float32)
    grams = block_grams(skewed_inputs(256, k, 1), block)
    assert grams.shape == (-(-k // block), block, block)
    rtn = quantize_rtn(w, bits, block, True)
    clipped = clip_search(w, grams, bits)
    e_rtn, e_clip = objective(w, rtn, grams), objective(w, clipped, grams)
    assert np.all(e_clip <= e_rtn)  # per block, not only in total
    assert e_clip.sum() < 0.97 * e_rtn.sum()  # and a real gain on heavy tails
    assert clipped.zero_points is None and clipped.q.max() <= 2**bits - 1 and clipped.k == k


def test_grams_are_the_diagonal_blocks_of_the_full_gram() -> None:
    x = skewed_inputs(64, 70, 2).astype(np.float64)
    full = np.zeros((96, 96))
    full[:70, :70] = x.T @ x
    grams = block_grams(x, 32)
    for b in range(3):
        np.testing.assert_allclose(grams[b], full[32 * b:32 * b + 32, 32 * b:32 * b + 32], rtol=1e-12)
    s = np.exp(np.random.default_rng(3).uniform(-1, 1, 70))
    np.testing.assert_allclose(scaled_grams(grams, s), block_grams(x / s, 32), rtol=1e-10)


def test_error_matches_the_output_error_within_a_block() -> None:
    """d^T G_b d is ||x_b d^T||^2: the output error of that block alone."""
    x = skewed_inputs(128, 32, 4)
    w = np.random.default_rng(5).standard_normal((6, 32)).astype(np.float32)
    q = quantize_rtn(w, 4, 32, True)
    d = w - dequantize(q)  # (6, 32)
    got = objective(w, q, block_grams(x, 32))[:, 0]
    np.testing.assert_allclose(got, np.square(x.astype(np.float64) @ d.T).sum(axis=0), rtol=1e-4)


def test_scales_are_storable_and_chunking_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    w = np.random.default_rng(6).standard_normal((40, 64)).astype(np.float32)
    grams = block_grams(skewed_inputs(100, 64, 7), 32)
    whole = clip_search(w, grams, 4, scale_dtype="float16")
    np.testing.assert_array_equal(whole.scales, _storable(whole.scales, "float16"))
    monkeypatch.setattr("phi3_edge.quantize.clip.CHUNK_WEIGHTS", 64 * 7)  # 7 rows a chunk
    chunked = clip_search(w, grams, 4, scale_dtype="float16")
    np.testing.assert_array_equal(chunked.q, whole.q)
    np.testing.assert_array_equal(chunked.scales, whole.scales)


def test_dead_channels_and_zero_blocks_keep_rtn() -> None:
    """No input ever reaches a block (Gram 0): every f ties, so the RTN blocks stay as they are."""
    w = np.random.default_rng(8).standard_normal((5, 64)).astype(np.float32)
    w[:, 32:] = 0.0
    grams = block_grams(skewed_inputs(50, 64, 9), 32)
    grams[0] = 0.0
    rtn, clipped = quantize_rtn(w, 4, 32, True), clip_search(w, grams, 4)
    np.testing.assert_array_equal(clipped.q, rtn.q)
    np.testing.assert_array_equal(clipped.scales, rtn.scales)


def test_gram_blocks_must_match_the_tensor() -> None:
    with pytest.raises(ValueError, match="Gram blocks"):
        clip_search(np.zeros((2, 128), np.float32), np.zeros((2, 32, 32)), 4)

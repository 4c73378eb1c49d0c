"""Calibration drivers on a tiny checkpoint: every Linear quantized once, AWQ's fold exact in float."""

from __future__ import annotations

import numpy as np

from phi3_edge.exporter.checkpoint import resolve_checkpoint
from phi3_edge.exporter.config import load_spec
from phi3_edge.quantize.blockwise import QuantizedBlocks, quantize_rtn
from phi3_edge.reference import calibrate as cal
from phi3_edge.reference import streamed
from phi3_edge.reference.checkpoint_side import CheckpointSide

SEQUENCES = [[int(t) for t in np.random.default_rng(0).integers(0, 300, 40)], list(range(5, 37))]


def test_gptq_quantizes_every_linear_once_on_the_quantized_stream(tiny_checkpoint) -> None:
    checkpoint = resolve_checkpoint(str(tiny_checkpoint("gqa")))
    spec = load_spec(checkpoint.config_path)
    got: dict[str, QuantizedBlocks] = {}
    with CheckpointSide(spec, checkpoint.weight_files) as side:
        cal.gptq_calibrate(side, SEQUENCES, lambda name: (4, 32), lambda n, b: got.setdefault(n, b))
        assert side.weight_map is None  # the driver's substitution does not outlive it
    expected = {n for layer in range(spec.num_layers) for n in cal.linear_names(layer)}
    assert set(got) == expected
    for blocks in got.values():
        assert blocks.zero_points is None and blocks.q.max() <= 15  # the symmetric grid: no extra bytes


def test_awq_fold_leaves_the_float_model_unchanged(tiny_checkpoint) -> None:
    """The folded weights (norm / s, W * s, up rows / s, down * s) compute the fp32 logits, unquantized."""
    checkpoint = resolve_checkpoint(str(tiny_checkpoint("gqa")))
    spec = load_spec(checkpoint.config_path)
    folded: dict[str, np.ndarray] = {}
    alphas: list[float] = []

    def sink(layer: int, result: cal.AwqLayer) -> None:
        folded.update(result.weights)
        alphas.extend(result.alphas.values())

    with CheckpointSide(spec, checkpoint.weight_files) as side:
        cal.awq_calibrate(side, SEQUENCES, lambda w: quantize_rtn(w, 4, 32, True), sink)
        reference = streamed.logits(side, SEQUENCES, 100)
        side.weight_map = lambda name, rows: folded.get(name, rows)
        after = streamed.logits(side, SEQUENCES, 100)
    assert any(a > 0 for a in alphas)  # some group chose real scales, so the check below is not vacuous
    for mine, ref in zip(after, reference, strict=True):
        np.testing.assert_allclose(mine, ref, rtol=0, atol=1e-4)


def test_layer_stats_sum_the_block_grams_of_every_sequence_at_each_tensors_block(tiny_checkpoint) -> None:
    """The Grams of one layer's inputs, summed over the sequences, are the diagonal blocks of X^T X of all
    their tokens together, each at the block its tensor asks for (gate_up 64, the others 32)."""
    from phi3_edge.quantize.clip import block_grams

    checkpoint = resolve_checkpoint(str(tiny_checkpoint("gqa")))
    spec = load_spec(checkpoint.config_path)
    inputs: dict[str, list[np.ndarray]] = {}
    with CheckpointSide(spec, checkpoint.weight_files) as side:
        states = [side.embed(ids) for ids in SEQUENCES]
        side.run_layer(0, states, lambda _l, _i, name, x: inputs.setdefault(name, []).append(x))
        stats = cal.layer_stats(side, 0, states, hessian=False,
                                gram_block=lambda name: 64 if "gate_up" in name else 32)
    assert set(stats.grams) == set(cal.linear_names(0))
    for name, xs in inputs.items():
        block = 64 if "gate_up" in name else 32
        expected = block_grams(np.concatenate(xs).astype(np.float64), block)
        assert stats.grams[name].dtype == np.float64 and stats.grams[name].shape == expected.shape
        np.testing.assert_allclose(stats.grams[name], expected, rtol=1e-10, atol=1e-8)

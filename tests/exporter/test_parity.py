"""Parity is law: every exported variant against transformers' incremental forward on the same weights.

For each tiny checkpoint: logits at every prompt position and at each of 16 KV-cache decode steps within
1e-4 of transformers (fp32), and identical greedy tokens.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fixtures.checkpoints import ORIGINAL_MAX_POSITIONS, SLIDING_WINDOW
from fixtures.reference import Reference, hf_reference, ort_incremental
from phi3_edge.api import export
from phi3_edge.exporter.config import load_spec

ATOL = 1e-4
DECODE_STEPS = 16


def prompt(length: int, seed: int = 0, vocab: int = 352) -> list[int]:
    """Random ids from the tokenizer's ordinary range, so prompts are text the tokenizer could produce."""
    return np.random.default_rng(seed).integers(0, vocab, size=length).tolist()


def export_and_run(checkpoint: Path, out: Path, ids: list[int], steps: int = DECODE_STEPS) -> Reference:
    export(str(checkpoint), target="cpu-fp32", output=out, progress=False)
    spec = load_spec(checkpoint / "config.json")
    return ort_incremental(out / "model.onnx", ids, steps, spec.num_layers, spec.num_kv_heads, spec.head_dim)


def assert_parity(ours: Reference, ref: Reference, atol: float = ATOL) -> None:
    np.testing.assert_allclose(ours.prompt_logits, ref.prompt_logits, atol=atol, rtol=0)
    np.testing.assert_allclose(ours.step_logits, ref.step_logits, atol=atol, rtol=0)
    assert ours.tokens == ref.tokens


CASES = [
    # (variant, prompt length): what each case proves
    ("mha", 20),  # Phi-3-mini: MHA
    ("gqa", 20),  # Phi-3-medium: GQA
    ("longrope", 10),  # 128k / Phi-3.5: short factors only (10 + 16 <= 32)
    ("longrope", ORIGINAL_MAX_POSITIONS - 8),  # crosses original_max_position_embeddings during decode
    ("longrope", ORIGINAL_MAX_POSITIONS + 8),  # prompt starts past it: long factors from the prefill on
    ("partial_tied", 20),  # partial rotary (half-dim 6: unfused RotaryEmbedding fallback) + tied embeddings
    ("partial_tied_wide", 20),  # partial rotary (half-dim 24: fused into GQA) + tied embeddings
    ("longrope_partial", ORIGINAL_MAX_POSITIONS - 4),  # Phi-4-mini-like: LongRoPE + partial rotary, crossing
    ("sliding", 3 * SLIDING_WINDOW),  # sliding window shorter than the prompt
]


@pytest.mark.parametrize(("variant", "length"), CASES, ids=[f"{v}-{n}" for v, n in CASES])
def test_fp32_parity(tiny_checkpoint, tmp_path: Path, variant: str, length: int) -> None:
    checkpoint = tiny_checkpoint(variant)
    ids = prompt(length)
    assert_parity(export_and_run(checkpoint, tmp_path / "art", ids), hf_reference(checkpoint, ids, DECODE_STEPS))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_sources_sharded(tiny_checkpoint, tmp_path: Path, dtype: str) -> None:
    """bf16/fp16 shards widen exactly to fp32, so parity with transformers' fp32 load holds at 1e-4."""
    checkpoint = tiny_checkpoint("gqa", dtype=dtype, sharded=True)
    assert (checkpoint / "model.safetensors.index.json").exists()
    ids = prompt(20, seed=1)
    assert_parity(export_and_run(checkpoint, tmp_path / "art", ids), hf_reference(checkpoint, ids, DECODE_STEPS))


@pytest.mark.parametrize("variant", ["longrope", "partial_tied"])
def test_hub_style_config(tiny_checkpoint, tmp_path: Path, variant: str) -> None:
    """Configs as the hub ships them (rope_scaling, top-level rope_theta) export to the same graph numbers."""
    checkpoint = tiny_checkpoint(variant, config_style="hub")
    ids = prompt(ORIGINAL_MAX_POSITIONS - 6, seed=2)
    assert_parity(export_and_run(checkpoint, tmp_path / "art", ids), hf_reference(checkpoint, ids, DECODE_STEPS))


def test_graph_is_lean(tiny_checkpoint, tmp_path: Path) -> None:
    """Fused kernels: GQA with rotary, (Skip)SimplifiedLayerNorm, one packed QKV MatMul per layer."""
    import onnx

    export(str(tiny_checkpoint("gqa")), target="cpu-fp32", output=tmp_path / "art", progress=False)
    graph = onnx.load(str(tmp_path / "art" / "model.onnx"), load_external_data=False).graph
    ops = [node.op_type for node in graph.node]
    assert len(ops) <= 33 + 3, ops  # + logits_to_keep: one Neg, a Slice of each final-norm input
    assert ops.count("Slice") == 2 and ops.count("Neg") == 1
    assert ops.count("GroupQueryAttention") == 2
    assert ops.count("MatMul") == 2 * 4 + 1  # qkv, o, gate_up, down per layer + lm_head
    assert "RotaryEmbedding" not in ops and "LayerNormalization" not in ops
    assert ops.count("SkipSimplifiedLayerNormalization") == 4 and ops.count("SimplifiedLayerNormalization") == 1

"""Greedy tokens are identical across transformers' generate(), our IO-binding loop (shared KV buffers), our
numpy fallback loop and onnxruntime-genai, for every variant.

LongRoPE prompts that cross original_max_position_embeddings mid-generation are included: generate() re-runs
the sequence at the switch, and so does our loop (re-prefilling into the same shared buffers).
"""

from __future__ import annotations

import numpy as np
import pytest

from fixtures.checkpoints import ORIGINAL_MAX_POSITIONS, SLIDING_WINDOW
from fixtures.reference import hf_generate_greedy
from phi3_edge.api import load
from phi3_edge.edge_runtime.generate import Generator
from phi3_edge.edge_runtime.kv_pass import SharedBufferPass

NEW_TOKENS = 24

CASES = [("gqa", 10), ("longrope", ORIGINAL_MAX_POSITIONS - 10), ("longrope_partial", ORIGINAL_MAX_POSITIONS - 3),
         ("longrope", ORIGINAL_MAX_POSITIONS + 5), ("partial_tied", 10), ("sliding", 2 * SLIDING_WINDOW),
         ("mha", 12)]


def expected_tokens(reference: list[int], eos_ids: frozenset[int]) -> list[int]:
    """transformers' tokens up to and including the first eos (our loop stops there; generate() was told not to)."""
    for index, token in enumerate(reference):
        if token in eos_ids:
            return reference[: index + 1]
    return reference


def prompt(length: int, seed: int = 5) -> list[int]:
    return np.random.default_rng(seed).integers(0, 352, size=length).tolist()


@pytest.mark.parametrize(("variant", "length"), CASES, ids=[f"{v}-{n}" for v, n in CASES])
def test_greedy_matches_transformers_generate(tiny_checkpoint, tiny_artifact, variant: str, length: int) -> None:
    ids = prompt(length)
    shared = load(tiny_artifact(variant))
    assert shared.session.kv_cache == "shared"  # the op census found GroupQueryAttention
    reference = expected_tokens(hf_generate_greedy(tiny_checkpoint(variant), ids, NEW_TOKENS), shared.eos_ids)
    assert shared.generate_ids(ids, max_new_tokens=NEW_TOKENS).token_ids == reference
    concat = load(tiny_artifact(variant), kv_cache="concat")
    assert concat.generate_ids(ids, max_new_tokens=NEW_TOKENS).token_ids == reference
    genai = load(tiny_artifact(variant), backend="genai")
    assert genai.generate_ids(ids, max_new_tokens=NEW_TOKENS).token_ids == reference


def test_int4_backends_agree(tiny_artifact) -> None:
    """Quantized weights: no transformers reference, but every runtime must read the same graph the same way."""
    from phi3_edge.edge_runtime.genai_backend import native_greedy_timings

    folder, ids = tiny_artifact("gqa", "cpu-int4"), prompt(16)
    ours = load(folder).generator(ids, NEW_TOKENS, ignore_eos=True)
    tokens = list(ours)
    genai = load(folder, backend="genai")
    assert genai.generate_ids(ids, NEW_TOKENS, ignore_eos=True).token_ids == tokens
    assert native_greedy_timings(genai.session.model, ids, NEW_TOKENS)[2] == tokens


def test_kv_buffers_are_shared_and_written_in_place(tiny_artifact) -> None:
    """past and present are one buffer per layer: the prefill's keys land in the buffer we preallocated."""
    model = load(tiny_artifact("gqa"))
    forward = model.session.start(max_length=20)
    assert isinstance(forward, SharedBufferPass)
    before = [buffer.ctypes.data for buffer in forward.buffers]
    forward.run(prompt(6), 6)
    assert [buffer.ctypes.data for buffer in forward.buffers] == before
    for buffer in forward.buffers:  # (1, Hkv, 20, D): positions 0..5 written, the rest untouched
        assert np.abs(buffer[:, :, :6]).sum() > 0
        assert not buffer[:, :, 6:].any()
    forward.run([1], 7)
    assert all(np.abs(buffer[:, :, 6]).sum() > 0 for buffer in forward.buffers)


def test_crossing_without_rerun_would_drift(tiny_checkpoint, tiny_artifact, monkeypatch) -> None:
    """The re-run at the LongRoPE switch is what makes the crossing case match: without it the tokens drift."""
    model = load(tiny_artifact("longrope"))
    assert model.session.config.rope_switch_length == ORIGINAL_MAX_POSITIONS
    ids = prompt(ORIGINAL_MAX_POSITIONS - 10)
    reference = expected_tokens(hf_generate_greedy(tiny_checkpoint("longrope"), ids, NEW_TOKENS), model.eos_ids)
    monkeypatch.setattr(Generator, "_crosses_rope_switch", lambda self, total: False)
    assert model.generate_ids(ids, max_new_tokens=NEW_TOKENS).token_ids != reference

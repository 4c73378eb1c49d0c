"""Our runtime's greedy tokens equal transformers' generate() on the same weights, for every variant.

LongRoPE prompts that cross original_max_position_embeddings mid-generation are included: generate() re-runs
the sequence at the switch, and so does our loop.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fixtures.checkpoints import ORIGINAL_MAX_POSITIONS, SLIDING_WINDOW
from fixtures.reference import hf_generate_greedy

from phi3_edge.api import export, load

NEW_TOKENS = 24

CASES = [("gqa", 10), ("longrope", ORIGINAL_MAX_POSITIONS - 10), ("longrope_partial", ORIGINAL_MAX_POSITIONS - 3),
         ("longrope", ORIGINAL_MAX_POSITIONS + 5), ("partial_tied", 10), ("sliding", 2 * SLIDING_WINDOW)]


def expected_tokens(reference: list[int], eos_ids: frozenset[int]) -> list[int]:
    """transformers' tokens up to and including the first eos (our loop stops there; generate() was told not to)."""
    for index, token in enumerate(reference):
        if token in eos_ids:
            return reference[: index + 1]
    return reference


@pytest.mark.parametrize(("variant", "length"), CASES, ids=[f"{v}-{n}" for v, n in CASES])
def test_greedy_matches_transformers_generate(tiny_checkpoint, tmp_path: Path, variant: str, length: int) -> None:
    checkpoint = tiny_checkpoint(variant)
    export(str(checkpoint), target="cpu-fp32", output=tmp_path / "art", progress=False)
    ids = np.random.default_rng(5).integers(0, 352, size=length).tolist()
    model = load(tmp_path / "art")
    result = model.generate_ids(ids, max_new_tokens=NEW_TOKENS)
    reference = hf_generate_greedy(checkpoint, ids, NEW_TOKENS)
    assert result.token_ids == expected_tokens(reference, frozenset(model.eos_ids))


def test_crossing_without_rerun_would_drift(tiny_checkpoint, tmp_path: Path, monkeypatch) -> None:
    """The re-run at the LongRoPE switch is what makes the crossing case match: without it the tokens drift."""
    from phi3_edge.edge_runtime.generate import GreedyGenerator

    checkpoint = tiny_checkpoint("longrope")
    export(str(checkpoint), target="cpu-fp32", output=tmp_path / "art", progress=False)
    model = load(tmp_path / "art")
    assert model.session.config.rope_switch_length == ORIGINAL_MAX_POSITIONS
    ids = np.random.default_rng(5).integers(0, 352, size=ORIGINAL_MAX_POSITIONS - 10).tolist()
    reference = expected_tokens(hf_generate_greedy(checkpoint, ids, NEW_TOKENS), frozenset(model.eos_ids))
    monkeypatch.setattr(GreedyGenerator, "_crosses_rope_switch", lambda self, total: False)
    assert model.generate_ids(ids, max_new_tokens=NEW_TOKENS).token_ids != reference

"""Prompt-lookup decoding: the n-gram index, the accept/reject rule on a scripted model, and greedy identity on
exported artifacts (tiny fixtures for every variant, the bundled demo on a prompt it copies from).
"""

from __future__ import annotations

import numpy as np
import pytest

from phi3_edge.edge_runtime.lookup import NgramIndex, Speculator
from phi3_edge.edge_runtime.sampling import Sampler, SamplingOptions

VOCAB = 16


def test_draft_continues_the_latest_earlier_occurrence() -> None:
    index = NgramIndex([1, 2, 3, 4, 9, 1, 2, 3, 5, 7, 1, 2, 3], max_n=3, min_n=2)
    # suffix (1, 2, 3) occurred at 0..2 (then 4) and 5..7 (then 5); the latest wins
    assert index.draft(4) == [5, 7, 1, 2]
    assert index.draft(1) == [5]
    assert index.draft(0) == []


def test_longest_suffix_first_and_no_self_match() -> None:
    index = NgramIndex([5, 6, 8, 4, 6, 7], max_n=3, min_n=1)
    assert index.draft(2) == []  # (4, 6, 7), (6, 7) and (7) never occurred before the suffix itself
    index.extend([6])
    assert index.draft(2) == [7, 6]  # (7, 6) unseen, (6) last continued with 7 at position 4
    assert NgramIndex([3, 3, 3], max_n=2, min_n=2).draft(5) == [3]  # (3, 3) ended at 1, followed by one 3


def test_extend_equals_building_at_once() -> None:
    tokens = np.random.default_rng(0).integers(0, 4, size=200).tolist()
    whole = NgramIndex(tokens)
    step = NgramIndex()
    for token in tokens:
        step.extend([token])
        assert step.draft(6) == NgramIndex(step.tokens).draft(6)
    assert step.draft(6) == whole.draft(6)


class ScriptedPass:
    """A 'model' whose greedy next token after any prefix is `script[len(prefix)]`; records what it was fed."""

    def __init__(self, script: list[int]) -> None:
        self.script = script
        self.feeds: list[tuple[list[int], int]] = []

    def run_all(self, input_ids: list[int], total_length: int) -> np.ndarray:
        self.feeds.append((list(input_ids), total_length))
        start = total_length - len(input_ids)
        logits = np.zeros((len(input_ids), VOCAB), dtype=np.float32)  # (S, V)
        for row in range(len(input_ids)):
            logits[row, self.script[start + row + 1]] = 1.0
        return logits


def test_accepts_the_agreeing_prefix_and_rolls_back() -> None:
    prompt = [1, 2, 3, 4, 5, 1, 2]
    # after the prompt the model continues 3 4 9 ...: the draft (3 4 5 1 2 ...) is right twice, then wrong
    script = [*prompt, 3, 4, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9]
    model = ScriptedPass(script)
    speculator = Speculator.for_prompt(prompt[:-1], draft_tokens=4)
    speculator.observe(prompt[-1])
    sampler = Sampler(SamplingOptions(), VOCAB, prompt)
    chosen = speculator.step(model, sampler, last_token=2, cached=len(prompt) - 1, room=10)
    assert chosen == [3, 4, 9]  # two drafts accepted, the model's own token after them
    assert model.feeds == [([2, 3, 4, 5, 1], len(prompt) + 4)]
    assert (speculator.stats.passes, speculator.stats.drafted, speculator.stats.accepted) == (1, 4, 2)
    # the next step starts after the accepted tokens: total_length drops the rejected drafts' positions
    chosen = speculator.step(model, sampler, last_token=9, cached=len(prompt) + 2, room=1)
    assert model.feeds[-1] == ([9], len(prompt) + 3)  # room 1: no draft, a plain step
    assert chosen == [9]


def test_greedy_output_equals_plain_decoding_on_a_scripted_model() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        script = rng.integers(0, 3, size=60).tolist()  # a small alphabet: many n-gram matches, many rejections
        prompt_len = 10
        model = ScriptedPass(script)
        speculator = Speculator.for_prompt(script[:prompt_len - 1], draft_tokens=int(rng.integers(1, 8)))
        speculator.observe(script[prompt_len - 1])
        sampler = Sampler(SamplingOptions(), VOCAB, script[:prompt_len])
        out = [script[prompt_len]]  # what the prefill would choose
        speculator.observe(out[0])
        while len(out) < 40:
            room = 40 - len(out)
            out += speculator.step(model, sampler, out[-1], prompt_len + len(out) - 1, room)
        assert out == script[prompt_len:prompt_len + 40]


def test_rejects_bad_ngram_bounds() -> None:
    with pytest.raises(ValueError, match="min_n"):
        NgramIndex(max_n=1, min_n=2)

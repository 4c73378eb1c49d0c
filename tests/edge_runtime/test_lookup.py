"""Prompt-lookup decoding: the n-gram index, the accept/reject rule on a scripted model, and greedy identity on
exported artifacts (tiny fixtures for every variant, the bundled demo on a prompt it copies from).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fixtures.checkpoints import ORIGINAL_MAX_POSITIONS
from phi3_edge.api import export, load
from phi3_edge.edge_runtime.lookup import NgramIndex, Speculator
from phi3_edge.edge_runtime.sampling import Sampler, SamplingOptions
from phi3_edge.errors import Phi3EdgeError

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


# --- on exported artifacts -------------------------------------------------------------------------------------

CASES = [("gqa", 30), ("mha", 30), ("partial_tied", 30), ("sliding", 30),
         ("longrope", ORIGINAL_MAX_POSITIONS - 6)]  # the last one crosses the LongRoPE switch mid-generation
CODE = '''def area(width, height):
    return width * height


def perimeter(width, height):
    return 2 * (width + height)


def area(width, height):
'''


def repetitive_prompt(length: int, seed: int = 5) -> list[int]:
    """A pattern repeated: the prompt's own n-grams recur."""
    base = np.random.default_rng(seed).integers(0, 352, size=12).tolist()
    return (base * (length // len(base) + 1))[:length]


def oracle_drafts(monkeypatch: pytest.MonkeyPatch, sequence: list[int]) -> None:
    """Random tiny models never repeat themselves, so n-grams would never draft: make every draft the true
    continuation (from plain decoding), with every third one's last token wrong, so that verify passes accept
    some drafts and reject others (the rollback path) on a real graph and a real KV cache."""

    def draft(index: NgramIndex, limit: int) -> list[int]:
        at = len(index.tokens)
        future = sequence[at:at + limit]
        if future and at % 3 == 0:
            future[-1] = (future[-1] + 1) % 352
        return future

    monkeypatch.setattr(NgramIndex, "draft", draft)


@pytest.mark.parametrize("kv_cache", ["shared", "concat"])
@pytest.mark.parametrize(("variant", "length"), CASES, ids=[f"{v}-{n}" for v, n in CASES])
def test_lookup_is_greedy_identical(tiny_artifact, monkeypatch: pytest.MonkeyPatch, variant: str, length: int,
                                    kv_cache: str) -> None:
    model = load(tiny_artifact(variant), kv_cache=kv_cache)
    ids = repetitive_prompt(length)
    plain = model.generate_ids(ids, 24, ignore_eos=True)
    oracle_drafts(monkeypatch, ids + plain.token_ids)
    fast = model.generate_ids(ids, 24, ignore_eos=True, lookup=4)
    assert fast.token_ids == plain.token_ids
    assert fast.lookup is not None and 0 < fast.lookup.accepted < fast.lookup.drafted


def test_lookup_respects_max_new_tokens(tiny_artifact, monkeypatch: pytest.MonkeyPatch) -> None:
    model = load(tiny_artifact("gqa"))
    ids = repetitive_prompt(30)
    plain = model.generate_ids(ids, 12, ignore_eos=True).token_ids
    oracle_drafts(monkeypatch, ids + plain + [0] * 16)  # drafts run past the end: the budget must cut them
    for new in (1, 2, 3, 7, 12):
        assert model.generate_ids(ids, new, lookup=8, ignore_eos=True).token_ids == plain[:new]


def test_seeded_sampling_draws_the_same_sample(tiny_artifact, monkeypatch: pytest.MonkeyPatch) -> None:
    model = load(tiny_artifact("gqa"))
    ids = repetitive_prompt(30)
    options = {"temperature": 0.8, "top_p": 0.9, "repetition_penalty": 1.1, "seed": 3, "ignore_eos": True}
    plain = model.generate_ids(ids, 24, **options).token_ids
    oracle_drafts(monkeypatch, ids + plain)
    fast = model.generate_ids(ids, 24, lookup=4, **options)
    assert fast.token_ids == plain
    assert fast.lookup is not None and fast.lookup.accepted > 0


def test_genai_backend_refuses_lookup(tiny_artifact) -> None:
    model = load(tiny_artifact("gqa"), backend="genai")
    with pytest.raises(Phi3EdgeError, match="lookup"):
        model.generate_ids(repetitive_prompt(20), 4, lookup=4)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("demo")
    for target in ("cpu-fp32", "cpu-int4"):
        export("demo", target=target, output=root / target, progress=False, fidelity=False)
    return {target: root / target for target in ("cpu-fp32", "cpu-int4")}


def test_demo_lookup_drafts_from_the_prompt_and_keeps_the_tokens(demo: dict[str, Path]) -> None:
    """A prompt that repeats a definition: real n-gram drafts, accepted, and the very tokens of plain decoding."""
    model = load(demo["cpu-fp32"])
    plain = model.generate(CODE, 64)
    fast = model.generate(CODE, 64, lookup=True)
    assert fast.token_ids == plain.token_ids
    assert fast.lookup is not None and fast.lookup.accepted > 0


def test_demo_int4_differs_only_at_a_near_tie(demo: dict[str, Path]) -> None:
    """int4 at accuracy_level 4 quantizes activations to int8 per block, and MLAS computes one row (a decode
    step) with another kernel than several rows (a verify pass): logits differ by rounding. Tokens may then
    differ only where the top two logits are that close (measured: a 0.004 gap on the demo)."""
    model = load(demo["cpu-int4"])
    plain = model.generate(CODE, 64).token_ids
    fast = model.generate(CODE, 64, lookup=True).token_ids
    split = next((i for i, (a, b) in enumerate(zip(plain, fast, strict=False)) if a != b), None)
    if split is None:
        assert fast == plain
        return
    logits, _ = model.session.forward(model.tokenizer.encode(CODE) + plain[:split])  # type: ignore[attr-defined]
    top = np.sort(logits[-1])[::-1]  # (V,) descending
    assert top[0] - top[1] < 0.05


def test_cli_run_and_bench_take_lookup(demo: dict[str, Path]) -> None:
    from click.testing import CliRunner

    from phi3_edge.cli import main

    folder = str(demo["cpu-fp32"])
    plain = CliRunner().invoke(main, ["run", folder, CODE, "--max-new-tokens", "24"])
    fast = CliRunner().invoke(main, ["run", folder, CODE, "--max-new-tokens", "24", "--lookup"])
    assert plain.exit_code == 0 and fast.exit_code == 0, fast.output
    assert fast.stdout == plain.stdout
    bench = CliRunner().invoke(main, ["bench", folder, "--lookup", "4", "--prompt-len", "8", "--gen-len", "4",
                                      "--bandwidth-mb", "8", "--json"])
    assert bench.exit_code == 0, bench.output

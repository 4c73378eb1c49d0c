"""Stop strings cut the text right before them (streamed or not); the context length ends a generation."""

from __future__ import annotations

import numpy as np
import pytest

from phi3_edge.api import load
from phi3_edge.edge_runtime.stopping import StopStrings
from phi3_edge.edge_runtime.tokenizer import REPLACEMENT
from phi3_edge.errors import Phi3EdgeError

PROMPT = [3, 14, 15, 9, 26, 53, 58, 9, 79, 32]


def _feed(stops: StopStrings, pieces: list[str]) -> tuple[list[str], bool]:
    shown = [stops.feed(piece) for piece in pieces]
    if not stops.stopped:
        shown.append(stops.flush())
    return [piece for piece in shown if piece], stops.stopped


def test_text_before_a_stop_string_spanning_pieces() -> None:
    shown, stopped = _feed(StopStrings(["User:"]), ["Hello", " there\nUs", "er: hi", " more"])
    assert stopped and "".join(shown) == "Hello there\n"
    assert shown[1] == " there\n"  # "Us" was held back until it turned out to start "User:"


def test_held_text_is_released_when_no_stop_string_follows() -> None:
    shown, stopped = _feed(StopStrings(["User:"]), ["a Us", "b", " c U"])
    assert not stopped and "".join(shown) == "a Usb c U"


def test_the_earliest_of_several_stop_strings_wins() -> None:
    shown, _ = _feed(StopStrings(["END", "##"]), ["x ## y END"])
    assert "".join(shown) == "x "


def _stop_string(text: str) -> str:
    """A 3-character substring of the greedy text (no replacement char), past its first few characters."""
    for start in range(6, len(text) - 3):
        candidate = text[start : start + 3]
        if REPLACEMENT not in candidate and candidate.strip():
            return candidate
    raise AssertionError(f"no usable stop string in {text!r}")


def test_generation_stops_at_a_stop_string(tiny_artifact) -> None:
    model = load(tiny_artifact("gqa"))
    full = model.generate_ids(PROMPT, 40, ignore_eos=True)
    stop = _stop_string(full.text)
    stream = model.stream_ids(PROMPT, 40, ignore_eos=True, stop=[stop])
    pieces = list(stream)
    result = stream.result
    assert result is not None and result.stop_reason == "stop"
    assert "".join(pieces) == result.text == full.text[: full.text.index(stop)]
    # It stopped at the token that completed the stop string, not later.
    assert result.token_ids == full.token_ids[: len(result.token_ids)]
    assert stop not in model.tokenizer.decode(result.token_ids[:-1])
    assert stop in model.tokenizer.decode(result.token_ids)


def test_a_prompt_that_fills_the_context_is_a_clear_error(tiny_artifact) -> None:
    model = load(tiny_artifact("gqa"))
    context = model.config.context_length
    with pytest.raises(Phi3EdgeError, match=f"{context}"):
        model.generate_ids([5] * context, 4)


def test_generation_stops_at_the_context(tiny_artifact) -> None:
    model = load(tiny_artifact("gqa"))
    context = model.config.context_length
    ids = np.random.default_rng(1).integers(0, 352, size=context - 6).tolist()
    result = model.generate_ids(ids, 20, ignore_eos=True)
    assert result.stop_reason == "context" and len(result.token_ids) == 6
    assert model.generate_ids(ids, 6, ignore_eos=True).token_ids == result.token_ids


def test_out_of_vocabulary_prompt_ids_are_a_clear_error(tiny_artifact) -> None:
    model = load(tiny_artifact("gqa"))
    with pytest.raises(Phi3EdgeError, match="vocabulary"):
        model.generate_ids([1, model.config.vocab_size], 4)

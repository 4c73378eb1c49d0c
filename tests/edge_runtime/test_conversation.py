"""Multi-turn chat with the KV cache kept between turns: every turn's tokens equal those of a fresh generation
over the whole conversation (a full re-prefill), while the turn feeds only what follows the common prefix.
"""

from __future__ import annotations

import gc

import pytest

from fixtures.checkpoints import ORIGINAL_MAX_POSITIONS
from phi3_edge.api import load
from phi3_edge.edge_runtime.conversation import Conversation, common_prefix
from phi3_edge.errors import Phi3EdgeError

QUESTIONS = ["the quick brown fox", "jumps over the lazy dog", "hello world", "the dog"]
NEW_TOKENS = 10


def fresh(model, messages, **options) -> list[int]:  # type: ignore[no-untyped-def]
    return model.generate(messages, NEW_TOKENS, **options).token_ids  # type: ignore[no-any-return]


@pytest.mark.parametrize("kv_cache", ["shared", "concat"])
def test_turns_equal_a_full_reprefill(tiny_artifact, kv_cache: str) -> None:
    model = load(tiny_artifact("gqa"), kv_cache=kv_cache)
    chat = Conversation(model, system="Be brief.", max_new_tokens=NEW_TOKENS)
    for turn, question in enumerate(QUESTIONS):
        expected_messages = [*chat.messages, {"role": "user", "content": question}]
        before = chat.cache.ids
        result = chat.say(question)
        assert result.token_ids == fresh(model, expected_messages)
        prompt = model.encode_chat(expected_messages)
        assert result.reused_tokens == min(common_prefix(before, prompt), len(prompt) - 1)
        if turn:  # the system message and every earlier turn came from the cache
            assert result.reused_tokens > len(model.encode_chat(chat.messages[:2])) - 1
        assert chat.messages[-1] == {"role": "assistant", "content": result.text}


def test_genai_backend_rewinds_its_cache(tiny_artifact) -> None:
    model = load(tiny_artifact("gqa"), backend="genai")
    chat = Conversation(model, max_new_tokens=NEW_TOKENS)
    for question in QUESTIONS[:3]:
        expected = fresh(model, [*chat.messages, {"role": "user", "content": question}])
        assert chat.say(question).token_ids == expected


def test_a_rewritten_history_reuses_only_the_common_prefix(tiny_artifact) -> None:
    model = load(tiny_artifact("gqa"))
    chat = Conversation(model, max_new_tokens=NEW_TOKENS)
    chat.say(QUESTIONS[0])
    chat.messages[-1] = {"role": "assistant", "content": "hello"}  # the user edits the reply
    result = chat.say(QUESTIONS[1])
    assert result.token_ids == fresh(model, chat.messages[:-1])
    edited = model.encode_chat(chat.messages[:2])
    assert result.reused_tokens < len(edited)  # the edited reply's tokens were fed again


def test_an_abandoned_turn_leaves_a_usable_cache(tiny_artifact) -> None:
    model = load(tiny_artifact("gqa"))
    chat = Conversation(model, max_new_tokens=NEW_TOKENS)
    abandoned = chat.send(QUESTIONS[0])
    next(abandoned)  # the consumer walks away after one piece
    result = chat.say(QUESTIONS[1])  # the abandoned exchange never joined the conversation
    assert result.token_ids == fresh(model, [{"role": "user", "content": QUESTIONS[1]}])
    with pytest.raises(Phi3EdgeError, match="superseded"):
        list(abandoned)  # resuming it would write over the newer turn's cache
    del abandoned
    gc.collect()  # closing the stale generator must not record its ids over the newer turn's
    again = chat.say(QUESTIONS[2])
    assert again.token_ids == fresh(model, chat.messages[:-1])


def test_longrope_switch_is_not_reused_across(tiny_artifact) -> None:
    """Turns on both sides of original_max_position_embeddings: keys rotated with the other factors are not
    reused, so every turn still equals a fresh generation."""
    model = load(tiny_artifact("longrope"))
    chat = Conversation(model, max_new_tokens=NEW_TOKENS)
    lengths = []
    for question in QUESTIONS:
        expected_messages = [*chat.messages, {"role": "user", "content": question}]
        lengths.append(len(model.encode_chat(expected_messages)))
        assert chat.say(question).token_ids == fresh(model, expected_messages)
    assert min(lengths) <= ORIGINAL_MAX_POSITIONS < max(lengths)  # the conversation crossed the switch


def test_truncated_history_still_matches(tiny_artifact) -> None:
    model = load(tiny_artifact("gqa"))
    chat = Conversation(model, system="Be brief.", max_new_tokens=NEW_TOKENS, truncate=True)
    question = "the quick brown fox " * 8
    turns = 8
    for _ in range(turns):
        expected = model.generate([*chat.messages, {"role": "user", "content": question}], NEW_TOKENS,
                                  truncate=True).token_ids
        assert chat.say(question).token_ids == expected
    assert len(chat.messages) < 1 + 2 * turns  # old turns were dropped, the cache followed
    assert chat.messages[0]["role"] == "system"


def test_stream_takes_the_whole_history_each_turn(tiny_artifact) -> None:
    """A REPL that keeps its own messages: stream(messages) reuses the cache the same way send() does."""
    model = load(tiny_artifact("gqa"))
    chat = Conversation(model, max_new_tokens=NEW_TOKENS)
    history: list[dict[str, str]] = []
    for turn, question in enumerate(QUESTIONS[:3]):
        history.append({"role": "user", "content": question})
        stream = chat.stream(history)
        text = "".join(stream)
        assert stream.result is not None and stream.result.token_ids == fresh(model, history)
        assert (stream.result.reused_tokens > 0) == (turn > 0)
        history.append({"role": "assistant", "content": text})
    assert chat.messages == []


def test_lookup_inside_a_conversation(tiny_artifact) -> None:
    """Both use the same pass: lookup's rolled-back drafts past the valid length must not leak into the next turn."""
    model = load(tiny_artifact("gqa"))
    plain = Conversation(model, max_new_tokens=NEW_TOKENS)
    fast = Conversation(model, max_new_tokens=NEW_TOKENS, lookup=4)
    for question in QUESTIONS:
        assert fast.say(question).token_ids == plain.say(question).token_ids

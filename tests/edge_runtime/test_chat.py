"""Chat prompts: our jinja2 rendering + tokenizers encode to exactly transformers' apply_chat_template ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from phi3_edge.api import load
from phi3_edge.edge_runtime.chat import fit_conversation
from phi3_edge.errors import Phi3EdgeError

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Explain KV caches in one sentence."},
     {"role": "assistant", "content": "They keep past keys and values."},
     {"role": "user", "content": "naïve café 😀 <|end and \"quotes\"\n  indented"}],
    # Edges that could complete a control token with the template's text: the checked path, same ids.
    [{"role": "user", "content": "> quoted, and a < b <"}, {"role": "assistant", "content": "|> end|>"}],
]
# A content holding "<|end|>" itself is where we differ on purpose (test_chat_encoding.py).


@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["one", "system", "multi-turn", "token-edges"])
def test_chat_ids_match_transformers(tiny_artifact, messages: list[dict[str, str]]) -> None:
    folder = tiny_artifact("gqa")
    expected = AutoTokenizer.from_pretrained(str(folder)).apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True)["input_ids"]
    assert load(folder).encode_chat(messages) == expected


def test_chat_generation_is_the_generation_of_the_rendered_ids(tiny_artifact) -> None:
    model = load(tiny_artifact("gqa"))
    messages = CONVERSATIONS[1]
    chat = model.generate(messages, 12)
    assert chat.token_ids == model.generate_ids(model.encode_chat(messages), 12).token_ids
    assert chat.prompt_tokens == len(model.encode_chat(messages))


def _long_conversation(turns: int) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": "Be brief."}]
    for turn in range(turns):
        messages += [{"role": "user", "content": f"Question {turn}: " + "the quick brown fox " * 6},
                     {"role": "assistant", "content": "The lazy dog. " * 4}]
    return messages + [{"role": "user", "content": "Last question?"}]


def test_truncate_drops_the_oldest_turns(tiny_artifact) -> None:
    model = load(tiny_artifact("gqa"))
    messages = _long_conversation(12)
    context = model.config.context_length
    assert len(model.encode_chat(messages)) > context
    with pytest.raises(Phi3EdgeError, match="context_length"):
        model.generate(messages, 16)
    kept, ids = fit_conversation(messages, model.encode_chat, context - 16)
    assert len(ids) <= context - 16 and ids == model.encode_chat(kept)
    assert kept[0] == messages[0] and kept[-1] == messages[-1]  # system prompt and the new question stay
    assert kept[1]["role"] == "user" and kept[1:] == messages[len(messages) - len(kept) + 1 :]
    result = model.generate(messages, 16, truncate=True)
    assert result.prompt_tokens == len(ids)


def test_a_folder_without_a_chat_template_says_so(tiny_artifact, tmp_path: Path) -> None:
    source = tiny_artifact("gqa")
    folder = tmp_path / "art"
    folder.mkdir()
    for path in source.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    model = load(folder, verify=False)  # the edit breaks the manifest's hash on purpose
    assert model.generate("plain prompts still work", 2).token_ids
    with pytest.raises(Phi3EdgeError, match="tokenizer_config.json.*chat_template"):
        model.generate(CONVERSATIONS[0], 2)

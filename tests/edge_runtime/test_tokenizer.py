"""EdgeTokenizer: encoding as transformers does it, and streaming text that never splits a character."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from phi3_edge.edge_runtime.tokenizer import REPLACEMENT, EdgeTokenizer
from phi3_edge.errors import Phi3EdgeError

BOS = "<s>"
SPECIALS = (BOS, "<|endoftext|>", "<|end|>")
# ASCII only: every non-ASCII character is left as several byte tokens, which is what the detokenizer must
# stitch back together.
CORPUS = [
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
    "The quick brown fox jumps over the lazy dog. Small models run on the edge.\n",
    "for step in range(10):\n    print(step, token)\n",
]
MULTIBYTE = "naïve café, 5 €, 東京 and 😀🚀 — done"


def _train(template: str | None) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    if template is not None:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=template, special_tokens=[(BOS, tokenizer.token_to_id(BOS))]
        )
    return tokenizer


def _write(folder: Path, template: str | None = None, **flags: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    _train(template).save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": "<|endoftext|>", **flags}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")  # module scope: hypothesis re-runs a test body with the same fixture values
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> EdgeTokenizer:
    return EdgeTokenizer.load(_write(tmp_path_factory.mktemp("tokenizer")))


def _stream(tokenizer: EdgeTokenizer, ids: list[int]) -> list[str]:
    detokenizer = tokenizer.detokenizer()
    pieces = [detokenizer.add(token) for token in ids]
    return [piece for piece in [*pieces, detokenizer.flush()] if piece]


def test_multibyte_characters_really_span_several_tokens(tokenizer: EdgeTokenizer) -> None:
    # Guards the tests below: if "😀" were one token they would prove nothing.
    ids = tokenizer.encode("😀")
    assert len(ids) == 4
    assert tokenizer.decode(ids[:1]) == REPLACEMENT


def test_stream_never_splits_a_multibyte_character(tokenizer: EdgeTokenizer) -> None:
    ids = tokenizer.encode(MULTIBYTE)
    pieces = _stream(tokenizer, ids)
    assert all(REPLACEMENT not in piece for piece in pieces)
    assert "".join(pieces) == MULTIBYTE
    assert len(pieces) > 10  # text is emitted as it completes, not saved up for the end


def test_ascii_is_emitted_one_token_at_a_time(tokenizer: EdgeTokenizer) -> None:
    detokenizer = tokenizer.detokenizer()
    ids = tokenizer.encode("def fibonacci(n):")
    assert [detokenizer.add(token) for token in ids] == [tokenizer.decode([token]) for token in ids]


@settings(max_examples=150, deadline=None)
@given(text=st.text(min_size=1, max_size=40))
def test_stream_joins_to_the_full_decode(tokenizer: EdgeTokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    pieces = _stream(tokenizer, ids)
    assert "".join(pieces) == tokenizer.decode(ids)
    # A control token's text in the input (hypothesis found '<|end|>' on a fresh machine) encodes to that control
    # token, which decode() and the stream both skip: the round trip to `text` holds only without them.
    assume(not any(special in text for special in SPECIALS))
    assert tokenizer.decode(ids) == text
    if REPLACEMENT not in text:  # a U+FFFD the text really contains must come out too (hypothesis found '\ufffd')
        assert all(REPLACEMENT not in piece for piece in pieces)


def _sentencepiece_style() -> EdgeTokenizer:
    """Phi-3's own layout: "▁" for spaces, unknown characters as <0xNN> byte tokens, a leading space stripped."""
    words = ["▁the", "▁fox", "▁café"]
    chars = sorted({c for word in words for c in word} | set("abcdefghijklmnopqrstuvwxyz.,!"))
    vocab = {"<unk>": 0, **{f"<0x{b:02X}>": 1 + b for b in range(256)}}
    vocab.update({c: len(vocab) + i for i, c in enumerate(chars)})
    merges: list[tuple[str, str]] = []
    for word in words:  # left-to-right merges build each word from its characters
        for end in range(2, len(word) + 1):
            merges.append((word[: end - 1], word[end - 1]))
            vocab.setdefault(word[:end], len(vocab))
    tokenizer = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return EdgeTokenizer(tokenizer)


def test_sentencepiece_style_stream_keeps_spaces_and_characters() -> None:
    tokenizer = _sentencepiece_style()
    text = "the café fox, 5 € and 😀 the fox"
    ids = tokenizer.encode(text)
    assert len(ids) > 20  # €, 😀 and digits fall back to byte tokens
    pieces = _stream(tokenizer, ids)
    assert all(REPLACEMENT not in piece for piece in pieces)
    assert "".join(pieces) == tokenizer.decode(ids) == text


def test_an_incomplete_character_at_the_end_is_flushed_as_decode_shows_it(tokenizer: EdgeTokenizer) -> None:
    ids = tokenizer.encode("ok 😀")[:-1]  # drop the emoji's last byte
    pieces = _stream(tokenizer, ids)
    assert "".join(pieces) == tokenizer.decode(ids)
    assert pieces[-1].endswith(REPLACEMENT)


def test_special_tokens_are_left_out_of_the_text(tokenizer: EdgeTokenizer) -> None:
    end = tokenizer.token_id("<|end|>")
    ids = [*tokenizer.encode("done"), end]
    assert "".join(_stream(tokenizer, ids)) == "done"
    assert tokenizer.stop_token_ids() == {end, tokenizer.token_id("<|endoftext|>")}


@pytest.mark.parametrize(
    ("template", "flags"),
    [
        # transformers 5 ignores tokenizer_config.json's flags when tokenizer.json exists: its post-processor
        # alone decides, so the first two cases add no BOS and the third keeps the template's.
        (None, {"add_bos_token": True}),
        (None, {"add_bos_token": True, "add_eos_token": True}),
        (f"{BOS} $A", {"add_bos_token": False}),
        (f"{BOS} $A", {}),
        (None, {}),
    ],
)
def test_encode_matches_transformers(tmp_path: Path, template: str | None, flags: dict[str, bool]) -> None:
    transformers = pytest.importorskip("transformers")
    if int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip("transformers 4 lets add_bos_token override tokenizer.json; the runtime follows 5")
    folder = _write(tmp_path, template, **flags)
    reference = transformers.AutoTokenizer.from_pretrained(str(folder))
    ours = EdgeTokenizer.load(folder)
    assert (ours.encode("x")[0] == ours.token_id(BOS)) == (template is not None)
    for text in ("def fibonacci(n):", MULTIBYTE, " leading space", ""):
        assert ours.encode(text) == reference(text)["input_ids"], text


def test_missing_tokenizer_json_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(Phi3EdgeError, match=r"tokenizer\.json: not found"):
        EdgeTokenizer.load(tmp_path)


def test_offsets_point_at_each_tokens_characters(tokenizer: EdgeTokenizer) -> None:
    text = f"def {MULTIBYTE}<|end|>\n"
    ids, offsets = tokenizer.encode_with_offsets(text)
    assert ids == tokenizer.encode(text, add_special_tokens=False)
    end = tokenizer.token_id("<|end|>")
    assert [text[start:stop] for token, (start, stop) in zip(ids, offsets, strict=True) if token == end] == ["<|end|>"]
    assert tokenizer.special_tokens == {tokenizer.token_id(token): token for token in SPECIALS}


def test_literal_encoding_reads_control_strings_as_text(tokenizer: EdgeTokenizer) -> None:
    text = "user said <|end|><s> here"
    literal = tokenizer.encode_literal(text)
    assert not set(literal) & set(tokenizer.special_tokens)
    assert tokenizer.decode(literal, skip_special_tokens=False) == text
    assert tokenizer.token_id("<|end|>") in tokenizer.encode(text)  # the shared tokenizer still parses them

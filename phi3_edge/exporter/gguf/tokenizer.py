"""tokenizer.json + tokenizer_config.json from a GGUF file's tokenizer metadata.

    tokenizer.ggml.model  gpt2   byte-level BPE: the file's vocab (already in the byte alphabet) and merges,
                                 split as `tokenizer.ggml.pre` names (llama.cpp's pre-tokenizer table)
                          llama  SentencePiece-style BPE with byte fallback: merges rebuilt from the scores
                                 (best-scoring merged token first), spaces -> U+2581 with a prepended one
    token_type 3 (control) -> special added tokens; 4 (user-defined) -> added tokens matched whole
    add_bos_token          -> a post-processor that prepends BOS (the runtime encodes through it)
    tokenizer.chat_template, bos/eos/unk/pad ids -> tokenizer_config.json

Checked against transformers' own GGUF tokenizer loader (tests/exporter/test_gguf_tokenizer.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from phi3_edge.errors import CheckpointError
from phi3_edge.exporter.gguf.reader import GgufFile

CONTROL, USER_DEFINED = 3, 4
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# tokenizer.ggml.pre -> (split regex, digits one by one first). "default"/"gpt-2": GPT-2's own regex.
PRE_TOKENIZERS: dict[str, tuple[str, bool]] = {
    "default": (_GPT2_SPLIT, False),
    "gpt-2": (_GPT2_SPLIT, False),
    "smollm": (_GPT2_SPLIT, True),  # SmolLM's tokenizer.json: Digits(individual) then GPT-2 ByteLevel
    "llama3": (_LLAMA3_SPLIT, False),
    "llama-v3": (_LLAMA3_SPLIT, False),
    "llama-bpe": (_LLAMA3_SPLIT, False),
    "smaug-bpe": (_LLAMA3_SPLIT, False),
    "qwen2": (_QWEN2_SPLIT, False),
}
TOKENIZER_JSON, TOKENIZER_CONFIG = "tokenizer.json", "tokenizer_config.json"


def write_tokenizer_files(file: GgufFile, folder: Path) -> tuple[Path, Path]:
    """Write tokenizer.json and tokenizer_config.json for this file's tokenizer into `folder`."""
    meta = _metadata(file)
    tokenizer = _tokenizer(meta, file.path)
    folder.mkdir(parents=True, exist_ok=True)
    main, config = folder / TOKENIZER_JSON, folder / TOKENIZER_CONFIG
    main.write_text(tokenizer.to_str(), encoding="utf-8")
    config.write_text(json.dumps(_tokenizer_config(meta), indent=1, ensure_ascii=False), encoding="utf-8")
    return main, config


def _metadata(file: GgufFile) -> dict[str, Any]:
    meta = {key.removeprefix("tokenizer.ggml."): file.field(key) for key in file.keys()
            if key.startswith("tokenizer.ggml.")}
    meta["chat_template"] = file.field("tokenizer.chat_template")
    meta["architecture"] = file.field("general.architecture")
    if not isinstance(meta.get("tokens"), list) or not meta["tokens"]:
        raise CheckpointError("has no tokenizer.ggml.tokens: the artifact cannot tokenize (pass --no-tokenizer "
                              "to export the graph only)", file.path)
    return meta


def _tokenizer(meta: dict[str, Any], where: Path) -> Any:
    from tokenizers import AddedToken, Tokenizer

    kind = meta.get("model")
    if kind == "gpt2":
        tokenizer = _byte_level(meta, where)
    elif kind == "llama":
        tokenizer = _sentencepiece(meta)
    else:
        raise CheckpointError(f"tokenizer.ggml.model {kind!r} is not supported (gpt2 or llama)", where)
    types = meta.get("token_type") or [1] * len(meta["tokens"])
    if len(types) != len(meta["tokens"]):
        raise CheckpointError("tokenizer.ggml.token_type and tokenizer.ggml.tokens differ in length", where)
    kinds = list(zip(meta["tokens"], types, strict=True))
    special = [AddedToken(t, normalized=False, special=True) for t, k in kinds if k == CONTROL]
    plain = [AddedToken(t, normalized=False, special=False) for t, k in kinds if k == USER_DEFINED]
    tokenizer.add_special_tokens(special)
    tokenizer.add_tokens(plain)
    _bos_post_processor(tokenizer, meta)
    assert isinstance(tokenizer, Tokenizer)
    return tokenizer


def _byte_level(meta: dict[str, Any], where: Path) -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    pre = meta.get("pre") or "default"
    if pre not in PRE_TOKENIZERS:
        raise CheckpointError(f"tokenizer.ggml.pre {pre!r} is not a pre-tokenizer phi3-edge knows "
                              f"({', '.join(sorted(PRE_TOKENIZERS))})", where)
    merges = [tuple(m.split(" ", 1)) for m in meta.get("merges") or []]
    vocab = {token: index for index, token in enumerate(meta["tokens"])}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    split, digits = PRE_TOKENIZERS[pre]
    steps: list[Any] = [pre_tokenizers.Digits(individual_digits=True)] if digits else []
    steps += [pre_tokenizers.Split(Regex(split), behavior="isolated"),
              pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _sentencepiece(meta: dict[str, Any]) -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    tokens, scores = meta["tokens"], meta.get("scores") or [0.0] * len(meta["tokens"])
    if len(scores) != len(tokens):
        scores = [0.0] * len(tokens)  # a malformed score list: rank merges by vocab order alone
    vocab = {token: index for index, token in enumerate(tokens)}
    unk_id = meta.get("unknown_token_id")
    unk = tokens[unk_id] if isinstance(unk_id, int) and 0 <= unk_id < len(tokens) else None
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=_merges_from_scores(vocab, tokens, scores), unk_token=unk,
                                     fuse_unk=True, byte_fallback=True))
    prefix = meta.get("add_space_prefix", True)
    if meta.get("architecture") == "phi3":
        # Phi-3's tokenizer.json: the prefix space comes from a normalizer (so "  hi" -> three U+2581).
        steps: list[Any] = [normalizers.Replace(" ", "\u2581")]
        if prefix:
            steps.insert(0, normalizers.Prepend("\u2581"))
        tokenizer.normalizer = normalizers.Sequence(steps)
    else:  # Llama's: Metaspace, prefix on the first piece only
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581",
                                                           prepend_scheme="first" if prefix else "never",
                                                           split=False)
    tokenizer.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    return tokenizer


def _merges_from_scores(vocab: dict[str, int], tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """SentencePiece BPE keeps no merge list: every split of a vocab token into two vocab tokens is a merge,
    ranked by the merged token's score (higher first), ties by the shorter left piece's... as SentencePiece."""
    found: list[tuple[float, int, int, str, str]] = []
    for token, score in zip(tokens, scores, strict=True):
        local = [(token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in vocab and token[i:] in vocab]
        local.sort(key=lambda pair: (vocab[pair[0]], vocab[pair[1]]))
        found.extend((float(score), len(left), len(right), left, right) for left, right in local)
    found.sort(key=lambda m: (m[0], m[1], m[2]), reverse=True)  # stable: equal keys keep the vocab order
    return [(left, right) for _, _, _, left, right in found]


def _bos_post_processor(tokenizer: Any, meta: dict[str, Any]) -> None:
    from tokenizers import processors

    bos_id = meta.get("bos_token_id")
    if not meta.get("add_bos_token", meta.get("model") == "llama") or not isinstance(bos_id, int):
        return
    bos = meta["tokens"][bos_id]
    tokenizer.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                             special_tokens=[(bos, bos_id)])


def _tokenizer_config(meta: dict[str, Any]) -> dict[str, Any]:
    tokens = meta["tokens"]

    def token(key: str) -> str | None:
        index = meta.get(key)
        return tokens[index] if isinstance(index, int) and 0 <= index < len(tokens) else None

    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("bos_token_id"),
        "eos_token": token("eos_token_id"),
        "unk_token": token("unknown_token_id"),
        "pad_token": token("padding_token_id"),
        "add_bos_token": bool(meta.get("add_bos_token", meta.get("model") == "llama")),
        "add_eos_token": bool(meta.get("add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
    }
    if meta.get("chat_template"):
        config["chat_template"] = meta["chat_template"]
    return config

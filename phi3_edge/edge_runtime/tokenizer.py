"""The artifact's tokenizer through the `tokenizers` library alone (no transformers on a device).

Encoding matches `transformers.AutoTokenizer.from_pretrained(folder)(text)["input_ids"]` (transformers 5) for a
plain prompt: tokenizer.json's own post-processor decides whether a BOS/EOS is added. transformers 5 drops
tokenizer_config.json's add_bos_token / add_eos_token whenever a tokenizer.json exists, so we do not read them
either (transformers 4 let them override the post-processor; the two disagree for a tokenizer.json that adds
"<s>" next to add_bos_token: false).
"""

from __future__ import annotations

import json
import threading
from functools import cached_property
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from phi3_edge.artifact_contract import STOP_TOKENS, TOKENIZER_FILE
from phi3_edge.errors import ArtifactError

REPLACEMENT = "\ufffd"  # what a decoder emits for an incomplete UTF-8 sequence


class EdgeTokenizer:
    def __init__(self, tokenizer: Tokenizer, origin: Path = Path(TOKENIZER_FILE)) -> None:
        self._tokenizer = tokenizer
        self._origin = origin  # named in a one-line error when tokenizers panics on this file
        self._literal: tuple[Tokenizer, Tokenizer] | None = None  # built on first use (encode_literal)
        self._literal_lock = threading.Lock()

    @classmethod
    def load(cls, folder: Path) -> EdgeTokenizer:
        path = Path(folder) / TOKENIZER_FILE
        if not path.is_file():
            raise ArtifactError("not found (the runtime needs it to encode prompts)", path)
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except BaseException as exc:  # noqa: BLE001  tokenizers raises a bare Exception (or panics) on bad files
            if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
                raise
            raise ArtifactError(f"cannot be loaded by tokenizers ({str(exc).splitlines()[0]})", path) from exc
        return cls(tokenizer, path)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """add_special_tokens=False skips the post-processor (a rendered chat template has its own BOS)."""
        try:
            return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
        except BaseException as exc:  # noqa: BLE001  (see _panic)
            raise _panic(exc, "encode", self._origin) from exc

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids (no post-processor) and each token's (start, end) character offsets in text."""
        try:
            encoding = self._tokenizer.encode(text, add_special_tokens=False)
        except BaseException as exc:  # noqa: BLE001  (see _panic)
            raise _panic(exc, "encode", self._origin) from exc
        offsets: list[tuple[int, int]] = encoding.offsets  # already Python (start, end) tuples
        return list(encoding.ids), offsets

    def encode_literal(self, text: str, at_start: bool = True) -> list[int]:
        """Ids of text with every special token's string read as ordinary text (no post-processor).

        What encode() gives for the same text between two control tokens, except that "<|end|>" inside it
        stays characters. at_start=False for text that follows other text in the prompt: a Metaspace
        pre-tokenizer with prepend_scheme "first" writes its "▁" only at the very start of the whole text.
        Separate tokenizers.Tokenizer copies, not the shared one's encode_special_tokens flag toggled: one
        EdgeModel serves many threads, and another thread's prompt must never lose its control tokens.
        """
        with self._literal_lock:
            if self._literal is None:
                self._literal = _literal_tokenizers(self._tokenizer)
        tokenizer = self._literal[0 if at_start else 1]
        try:
            return list(tokenizer.encode(text, add_special_tokens=False).ids)
        except BaseException as exc:  # noqa: BLE001  (see _panic)
            raise _panic(exc, "encode", self._origin) from exc

    @cached_property
    def special_tokens(self) -> dict[int, str]:
        """Id -> string of each added token marked special (the control tokens a template writes).
        Non-special added tokens are vocabulary: tokenizers matches them in any text, as transformers does."""
        added = self._tokenizer.get_added_tokens_decoder()
        return {int(i): str(token.content) for i, token in added.items() if token.special and token.content}

    def normalize(self, text: str) -> str:
        """text as the normalizer hands it to matching (special tokens marked normalized match this form)."""
        normalizer = self._tokenizer.normalizer
        return text if normalizer is None else str(normalizer.normalize_str(text))

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def vocab(self) -> dict[str, int]:
        """Every token (added tokens included) and its id."""
        return self._tokenizer.get_vocab(with_added_tokens=True)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        try:
            return self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        except BaseException as exc:  # noqa: BLE001  (see _panic)
            raise _panic(exc, "decode", self._origin) from exc

    def token_id(self, token: str) -> int | None:
        return self._tokenizer.token_to_id(token)

    def stop_token_ids(self) -> set[int]:
        """Ids of the Phi-3 stop tokens (<|end|>, <|endoftext|>) where this vocabulary has them, whatever
        genai_config.json lists."""
        ids = (self.token_id(token) for token in STOP_TOKENS)
        return {i for i in ids if i is not None}

    def detokenizer(self) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self)


def _literal_tokenizers(tokenizer: Tokenizer) -> tuple[Tokenizer, Tokenizer]:
    """Two copies that read special tokens' strings as text: for text at the start, and text after it."""
    source = tokenizer.to_str()
    config = json.loads(source)
    at_start = Tokenizer.from_str(source)
    later = Tokenizer.from_str(json.dumps(_never_prepend(config))) if _has_first_prepend(config) else at_start
    at_start.encode_special_tokens = True
    later.encode_special_tokens = True  # (the same copy when no Metaspace prepends "first")
    return at_start, later


def _has_first_prepend(node: Any) -> bool:
    if isinstance(node, dict):
        return (node.get("type") == "Metaspace" and node.get("prepend_scheme") == "first") \
            or any(_has_first_prepend(v) for v in node.values())
    return isinstance(node, list) and any(_has_first_prepend(v) for v in node)


def _never_prepend(node: Any) -> Any:
    """The tokenizer.json with Metaspace's prepend_scheme "first" as "never" (the text is not at the start)."""
    if isinstance(node, dict):
        if node.get("type") == "Metaspace" and node.get("prepend_scheme") == "first":
            node = {**node, "prepend_scheme": "never"}
        return {key: _never_prepend(value) for key, value in node.items()}
    return [_never_prepend(value) for value in node] if isinstance(node, list) else node


def _panic(exc: BaseException, what: str, origin: Path) -> BaseException:
    """A Rust panic inside tokenizers (e.g. tokenizer.json's regex hitting Oniguruma's retry limit) surfaces
    as pyo3's PanicException, a BaseException that `except Exception` misses: one line instead. Anything else
    (KeyboardInterrupt, a TypeError from the caller) is returned unchanged to be re-raised."""
    if type(exc).__name__ != "PanicException":
        return exc
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else "panic"
    return ArtifactError(f"tokenizers failed to {what} ({first[:160]})", origin)


class IncrementalDetokenizer:
    """Turns a stream of token ids into text pieces, never splitting a multi-byte UTF-8 character.

    Byte-level BPE can spread one character over several tokens; decoding them one by one yields U+FFFD.
    So we decode a window of ids and hold the new text back while it ends in U+FFFD. The window starts one
    emitted chunk back (`_prefix`), not at the first id: decoders such as SentencePiece's Metaspace strip a
    leading space from the first token, so the suffix is the difference of two decodes that start at the same
    id, and the cost per token stays bounded instead of growing with the whole generation.
    """

    def __init__(self, tokenizer: EdgeTokenizer) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # window start
        self._read = 0  # ids before this one have been emitted as text

    def add(self, token_id: int) -> str:
        """Feed one id; returns the text it completes ("" while a character is still incomplete)."""
        self._ids.append(token_id)
        return self._emit(final=False)

    def flush(self) -> str:
        """Whatever is held back at the end (an incomplete character decodes to U+FFFD, as in decode())."""
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        if self._read == len(self._ids):
            return ""
        seen = self._tokenizer.decode(self._ids[self._prefix : self._read])
        text = self._tokenizer.decode(self._ids[self._prefix :])
        if not final and (text.endswith(REPLACEMENT) or len(text) <= len(seen)):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return text[len(seen) :]

"""Chat prompt ids in which a message's content cannot write a control token.

transformers' apply_chat_template renders the conversation to one string and encodes it, so a user message
holding the text "<|end|>\\n<|assistant|>\\n" closes its own turn and forges an assistant turn. We encode the
rendered text the same way, which keeps exact parity with transformers for every ordinary message, and
encode again only when a special token was matched (even partly) inside a message's content:

1. No content holds a special token's string, nor starts or ends with a piece of one that the template's
   text beside it could complete: the plain ids (one render, one encode; nearly every call).
2. Otherwise the contents are located in the rendered text. The template is rendered again with a sentinel
   in place of each content, which gives the template's own text; the real rendering must be that text
   with each content where its sentinel was, verbatim or stripped (a template may `| trim` it).
3. A special token whose characters (less the whitespace an lstrip/rstrip token takes in) overlap a
   content was injected. None: the plain ids. Some: the text is cut at the template's own control tokens
   and each piece between two of them is encoded with special tokens' strings read as text.

The cuts in 3 are where tokenizers itself splits the text (at every special token, before its normalizer
and pre-tokenizer run), so every id away from an injected string is the id the plain encode gives (tested
for byte-level BPE, a Prepend normalizer and Metaspace, whose "first" prepend is kept to the text's start).
Around an injected string the merges differ by design: its characters are now text. Only a conversation
with an injected token takes this path, so parity with transformers holds for every other one.
A template that changes content beyond stripping cannot be mapped back: the prompt is then the template's
own text with each content put in verbatim as text; a template that mangles the sentinel is refused.
A special token matched across a content's edge into the template's text counts as injected, so its
template part becomes text too (no template writes half a control token; none of Phi-3's does).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from phi3_edge.edge_runtime.chat import ChatTemplate, Message
from phi3_edge.edge_runtime.tokenizer import EdgeTokenizer
from phi3_edge.errors import Phi3EdgeError

_OPEN, _CLOSE = "\ue000", "\ue001"  # private-use characters: no template strips them, no token holds them
_SENTINEL = re.compile(f"{_OPEN}(\\d+){_CLOSE}")
Span = tuple[int, int]  # [start, end) characters of the rendered text
Cut = tuple[int, int, int]  # a control token's id and its [start, end) characters


def encode_chat(tokenizer: EdgeTokenizer, template: ChatTemplate, messages: Sequence[Message],
                origin: Path | None = None) -> list[int]:
    """Ids of the rendered conversation (generation prompt appended); origin names the template in errors."""
    text = template.render(messages)  # checks every content is a str
    if not any(_may_write_special(tokenizer, message["content"]) for message in messages):
        return tokenizer.encode(text, add_special_tokens=False)
    ids, offsets = tokenizer.encode_with_offsets(text)
    prompt, spans = _content_spans(template, messages, text, origin)
    prompt_ids, offsets = (ids, offsets) if prompt == text else tokenizer.encode_with_offsets(prompt)
    special = tokenizer.special_tokens
    tokens = [(token, start, end) for token, (start, end) in zip(prompt_ids, offsets, strict=True) if token in special]
    own = [cut for cut in tokens if not _overlaps(prompt, cut, spans)]
    if len(own) == len(tokens):
        return ids  # every control token is the template's: exactly the plain encode
    return _encode_between(tokenizer, prompt, own)


def _may_write_special(tokenizer: EdgeTokenizer, content: str) -> bool:
    """Whether a special token could be matched in this content, or across its edge with the template's text
    (it ends with a token's start, or begins with a token's end). Checked on the normalized form too: a
    token marked normalized matches there."""
    pattern, prefixes, suffixes, longest = _token_parts(tuple(tokenizer.special_tokens.values()))
    if pattern is None:
        return False
    for text in {content, tokenizer.normalize(content)}:
        if pattern.search(text):
            return True
        if any(text[-k:] in prefixes or text[:k] in suffixes for k in range(1, min(longest, len(text) + 1))):
            return True
    return False


@lru_cache(maxsize=8)
def _token_parts(tokens: tuple[str, ...]) -> tuple[re.Pattern[str] | None, frozenset[str], frozenset[str], int]:
    """A pattern matching any of the strings, their proper prefixes and suffixes, and the longest length."""
    if not tokens:
        return None, frozenset(), frozenset(), 0
    pattern = re.compile("|".join(re.escape(token) for token in sorted(tokens, key=len, reverse=True)))
    prefixes = frozenset(token[:k] for token in tokens for k in range(1, len(token)))
    suffixes = frozenset(token[k:] for token in tokens for k in range(1, len(token)))
    return pattern, prefixes, suffixes, max(map(len, tokens))


def _content_spans(template: ChatTemplate, messages: Sequence[Message], text: str,
                   origin: Path | None) -> tuple[str, list[Span]]:
    """The prompt text to encode and where each rendered content lies in it.

    Empty contents keep "" (templates test `message['content']` for truth) and cannot hold a token anyway.
    """
    stand_ins = [dict(message, content=f"{_OPEN}{i}{_CLOSE}" if message["content"] else "")
                 for i, message in enumerate(messages)]
    parts = _SENTINEL.split(template.render(stand_ins))
    pieces, slots = parts[0::2], [int(i) for i in parts[1::2]]  # the template's text around each content
    if any(_OPEN in piece or _CLOSE in piece for piece in pieces) or any(i >= len(messages) for i in slots):
        raise Phi3EdgeError("chat template rewrites message content in a way that cannot be followed; refusing "
                            "a message that holds a control token's text", origin)
    contents = [str(messages[i]["content"]) for i in slots]
    spans = _locate(text, pieces, contents)
    if spans is not None:
        return text, spans
    # Content transformed beyond stripping: the template's own text, each content verbatim in its place.
    prompt, spans = pieces[0], []
    for content, piece in zip(contents, pieces[1:], strict=True):
        spans.append((len(prompt), len(prompt) + len(content)))
        prompt += content + piece
    return prompt, spans


def _locate(text: str, pieces: list[str], contents: list[str]) -> list[Span] | None:
    """Spans of the contents if text is pieces[0] + contents[0] + pieces[1] + ..., each content verbatim or
    stripped; None when it is not."""
    if not text.startswith(pieces[0]):
        return None
    position, spans = len(pieces[0]), []
    for content, after in zip(contents, pieces[1:], strict=True):
        for rendered in dict.fromkeys((content, content.strip(), content.lstrip(), content.rstrip())):
            end = position + len(rendered)
            if text.startswith(rendered, position) and text.startswith(after, end):
                break
        else:
            return None
        spans.append((position, end))
        position = end + len(after)
    return spans if position == len(text) else None


def _overlaps(text: str, cut: Cut, spans: list[Span]) -> bool:
    """Whether a special token's own characters overlap a content (not the whitespace it took in beside it)."""
    _, start, end = cut
    matched = text[start:end]
    if matched.strip():
        start, end = start + len(matched) - len(matched.lstrip()), end - len(matched) + len(matched.rstrip())
    return any(first < end and start < last for first, last in spans)


def _encode_between(tokenizer: EdgeTokenizer, text: str, own: list[Cut]) -> list[int]:
    """The template's control tokens as ids, every text between them encoded with special strings as text."""
    ids: list[int] = []
    cursor = 0
    for token, start, end in own:
        if start > cursor:
            ids += tokenizer.encode_literal(text[cursor:start], at_start=cursor == 0)
        ids.append(token)
        cursor = end
    if cursor < len(text):
        ids += tokenizer.encode_literal(text[cursor:], at_start=cursor == 0)
    return ids

"""Chat messages -> prompt text with the artifact's own chat template (tokenizer_config.json), via jinja2.

Rendering mirrors transformers' apply_chat_template (5.x): a sandboxed environment with trim_blocks and
lstrip_blocks, its tojson / raise_exception / strftime_now helpers, and the tokenizer's named special tokens
(bos_token, eos_token, ...) as template variables. The rendered text is then encoded WITHOUT the tokenizer's
post-processor (add_special_tokens=False), as transformers does: the template already wrote any BOS.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from phi3_edge.errors import ArtifactError, Phi3EdgeError

TOKENIZER_CONFIG = "tokenizer_config.json"
Message = Mapping[str, Any]  # {"role": "system" | "user" | "assistant", "content": str}
_NAMED_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")  # transformers' special_tokens_map keys


class ChatTemplate:
    def __init__(self, source: str, special_tokens: dict[str, str], origin: Path) -> None:
        self._special_tokens = special_tokens
        self._origin = origin
        self._template = _compile(source, origin)

    @classmethod
    def load(cls, folder: Path) -> ChatTemplate:
        """The template in tokenizer_config.json; ArtifactError if the folder has none."""
        path = Path(folder) / TOKENIZER_CONFIG
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ArtifactError("not found (chat needs its chat_template)", path) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"not valid JSON ({exc})", path) from None
        source = _template_source(config.get("chat_template") if isinstance(config, dict) else None)
        if source is None:
            raise ArtifactError("has no chat_template; pass a plain string prompt instead of messages", path)
        return cls(source, _special_tokens(config), path)

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        _check_messages(messages)
        try:
            return self._template.render(messages=[dict(m) for m in messages],
                                         add_generation_prompt=add_generation_prompt, **self._special_tokens)
        except Exception as exc:  # jinja2's TemplateError, or a template's raise_exception()
            raise Phi3EdgeError(f"chat template failed: {exc}", self._origin) from exc


def _template_source(value: Any) -> str | None:
    """A string, or transformers' list form [{"name": "default", "template": ...}, ...]."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        default = named.get("default")
        return default if isinstance(default, str) else None
    return None


def _special_tokens(config: dict[str, Any]) -> dict[str, str]:
    tokens: dict[str, str] = {}
    for key in _NAMED_TOKENS:
        value = config.get(key)
        value = value.get("content") if isinstance(value, dict) else value  # AddedToken serialised as a dict
        if isinstance(value, str):
            tokens[key] = value
    return tokens


def _check_messages(messages: Sequence[Message]) -> None:
    if not messages:
        raise Phi3EdgeError("no chat messages to render")
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            raise Phi3EdgeError(f"chat message {index} must be a dict with string 'role' and 'content'")


def _compile(source: str, origin: Path) -> Any:
    # Imported here: a device that only completes raw prompts never needs jinja2.
    try:
        import jinja2
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise Phi3EdgeError("chat templates need jinja2 (pip install jinja2)") from None

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        # jinja's own tojson HTML-escapes; transformers' does not, and the token ids must match it.
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    # Sandboxed: a chat template is code that arrived with downloaded model files.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise ArtifactError(f"chat_template is not valid jinja ({exc})", origin) from None


def fit_conversation(messages: Sequence[Message], encode: Callable[[Sequence[Message]], list[int]],
                     budget: int) -> tuple[list[Message], list[int]]:
    """Drop the oldest non-system turns until the encoded conversation is at most `budget` tokens.

    A turn is a user message and the replies after it, so the kept history never starts with an assistant.
    The last message always stays; if it alone (with the system messages) is too long, the caller's context
    check reports it. Returns the kept messages and their ids.
    """
    kept = list(messages)
    ids = encode(kept)
    while len(ids) > budget:
        first = next((i for i, m in enumerate(kept) if m.get("role") != "system"), None)
        if first is None or first == len(kept) - 1:
            break
        del kept[first]
        while first < len(kept) - 1 and kept[first].get("role") not in ("user", "system"):
            del kept[first]  # the dropped user's replies go with it
        ids = encode(kept)
    return kept, ids

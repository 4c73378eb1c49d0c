"""Chat messages -> prompt text with the artifact's own chat template (tokenizer_config.json), via jinja2.

Rendering mirrors transformers' apply_chat_template (5.x): a sandboxed environment with trim_blocks and
lstrip_blocks, its tojson / raise_exception / strftime_now helpers, and the tokenizer's named special tokens
(bos_token, eos_token, ...) as template variables. The rendered text is then encoded WITHOUT the tokenizer's
post-processor (add_special_tokens=False), as transformers does: the template already wrote any BOS.
"""

from __future__ import annotations

import ctypes
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from phi3_edge.artifact_contract import TOKENIZER_CONFIG_FILE as TOKENIZER_CONFIG
from phi3_edge.errors import ArtifactError, Phi3EdgeError

Message = Mapping[str, Any]  # {"role": "system" | "user" | "assistant", "content": str}
JINJA2_FLOOR = (3, 1, 6)  # the first release without a known sandbox escape (|attr('format'), 3.1.5)
RENDER_SECONDS = 5.0  # a Phi-3 template renders a long conversation in milliseconds
MAX_RENDER_CHARS = 8 * 2**20  # far past any context window's worth of text
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
        variables = {"messages": [dict(m) for m in messages], "add_generation_prompt": add_generation_prompt,
                     **self._special_tokens}
        return bounded_render(self._template, variables, self._origin)


class _RenderStopped(Exception):
    """Raised inside a runaway render (by the watchdog, or when the output outgrows MAX_RENDER_CHARS)."""


def bounded_render(template: Any, variables: dict[str, Any], origin: Path, *,
                   seconds: float | None = None, max_chars: int = MAX_RENDER_CHARS) -> str:
    """template.render(**variables) in a worker thread, stopped after `seconds` or `max_chars` of output.

    A chat template is code from the artifact: `{% for i in range(10**5) %}{% for j in range(10**5) %}` runs
    10^10 steps inside the sandbox, which bounds ranges but not time. The worker consumes the template's
    output stream (so the size is checked as it grows); past the deadline the caller gives up and the
    worker is stopped with an asynchronous exception, which CPython delivers between the bytecodes of the
    template's loops.
    """
    seconds = RENDER_SECONDS if seconds is None else seconds
    outcome: dict[str, Any] = {}

    def work() -> None:
        pieces, size = [], 0
        try:
            for piece in template.generate(**variables):
                pieces.append(piece)
                size += len(piece)
                if size > max_chars:
                    raise _RenderStopped(f"its output passed {max_chars} characters")
            outcome["text"] = "".join(pieces)
        except BaseException as exc:  # noqa: BLE001  (reported to the caller, never raised in the worker)
            outcome["error"] = exc

    worker = threading.Thread(target=work, name="chat-template", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(worker.ident or 0),
                                                   ctypes.py_object(_RenderStopped))
        worker.join(1.0)
        raise Phi3EdgeError(f"chat template did not finish within {seconds:g} s; refusing it", origin)
    error = outcome.get("error")
    if isinstance(error, _RenderStopped):
        raise Phi3EdgeError(f"chat template stopped: {error}", origin)
    if isinstance(error, (MemoryError, RecursionError)):
        raise Phi3EdgeError(f"chat template stopped: {type(error).__name__}", origin)
    if error is not None:  # jinja2's TemplateError / SecurityError, or a template's raise_exception()
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise Phi3EdgeError(f"chat template failed: {first}", origin) from error
    return str(outcome["text"])


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

    if _version(jinja2.__version__) < JINJA2_FLOOR:  # older sandboxes have known escapes (CVE-2025-27516)
        raise Phi3EdgeError(f"jinja2 {jinja2.__version__} has known sandbox escapes; chat templates need "
                            f"jinja2>={'.'.join(map(str, JINJA2_FLOOR))} (pip install -U jinja2)")

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        # jinja's own tojson HTML-escapes; transformers' does not, and the token ids must match it.
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        """The sandbox, with `*` and `**` unable to build a gigabyte string or number in one step."""

        intercepted_binops = frozenset({"*", "**"})

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if operator == "**" and isinstance(right, int) and abs(right) > 4096:
                raise jinja2.exceptions.SecurityError("exponent too large")
            if operator == "*":
                sized, count = (left, right) if isinstance(right, int) else (right, left)
                if isinstance(sized, (str, list, tuple)) and isinstance(count, int) \
                        and len(sized) * count > MAX_RENDER_CHARS:
                    raise jinja2.exceptions.SecurityError("repetition too large")
            return super().call_binop(context, operator, left, right)

    # Sandboxed: a chat template is code that arrived with downloaded model files.
    env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise ArtifactError(f"chat_template is not valid jinja ({exc})", origin) from None


def _version(text: str) -> tuple[int, ...]:
    numbers = []
    for part in text.split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit()) if part[:1].isdigit() else ""
        numbers.append(int(digits) if digits else 0)
    return tuple(numbers)


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

"""A chat template is code from the artifact: sandboxed, and bounded in time and output size."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from phi3_edge.edge_runtime import chat as chat_module
from phi3_edge.edge_runtime.chat import ChatTemplate
from phi3_edge.errors import Phi3EdgeError

ORIGIN = Path("tokenizer_config.json")
HELLO = [{"role": "user", "content": "hi"}]


def render(source: str) -> str:
    return ChatTemplate(source, {}, ORIGIN).render(HELLO)


def test_a_billion_step_loop_does_not_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chat_module, "RENDER_SECONDS", 0.5)
    with pytest.raises(Phi3EdgeError, match="did not finish within 0.5 s") as caught:
        render("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x")
    assert "\n" not in str(caught.value)
    # The deadline is not only the caller giving up: the runaway render itself was stopped, so no thread is
    # left burning a core (a behaviour check instead of a wall-clock bound, which the house keeps out of tests).
    assert not [t for t in threading.enumerate() if t.name == "chat-template" and t.is_alive()]


def test_output_size_is_bounded() -> None:
    with pytest.raises(Phi3EdgeError, match="output passed"):
        render("{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxxxxxxxxxxx{% endfor %}{% endfor %}")


def test_one_huge_repetition_is_refused() -> None:
    with pytest.raises(Phi3EdgeError, match="repetition too large"):
        render("{{ 'a' * 1000000000 }}")
    with pytest.raises(Phi3EdgeError, match="exponent too large"):
        render("{{ 10 ** 100000000 }}")


def test_the_format_attr_escape_is_refused() -> None:
    escape = "{{ ('{0.__class__.__init__.__globals__}' | attr('format'))(cycler) }}"
    with pytest.raises(Phi3EdgeError):
        render(escape)


def test_an_old_jinja2_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import jinja2

    monkeypatch.setattr(jinja2, "__version__", "3.1.5")
    with pytest.raises(Phi3EdgeError, match="known sandbox escapes"):
        render("{{ messages[0].content }}")


def test_an_ordinary_template_still_renders() -> None:
    assert render("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}") == "<|user|>hi"

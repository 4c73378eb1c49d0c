"""The chat loop in a real terminal (a pseudo-terminal): Ctrl-C is a SIGINT the tty driver sends, not a
KeyboardInterrupt a test raises. A slow stand-in model keeps the reply going long enough to interrupt it."""

from __future__ import annotations

import os
import select
import sys
import time

import pytest

pty = pytest.importorskip("pty")  # POSIX only

# The child: the real ChatRepl on the real terminal, with a model that writes "tick " every 20 ms for 20 s.
CHILD = r"""
import sys, time
from dataclasses import dataclass
from phi3_edge.chat_io import TerminalReader
from phi3_edge.chat_repl import ChatOptions, ChatRepl

@dataclass
class Result:
    text: str
    stop_reason: str = "eos"

class SlowStream:
    result = None
    def __iter__(self):
        for _ in range(1000):
            time.sleep(0.02)
            yield "tick "
        self.result = Result("tick " * 1000)

class SlowModel:
    context_length = 4096
    max_new_tokens = 1000
    def prompt_tokens(self, messages):
        return 10 * len(messages)
    def reply(self, messages):
        return SlowStream()

sys.exit(ChatRepl(SlowModel(), TerminalReader(), sys.stdout, sys.stderr, ChatOptions(banner="ready")).run())
"""


class Terminal:
    def __init__(self, argv: list[str] | None = None) -> None:
        argv = argv if argv is not None else [sys.executable, "-c", CHILD]
        pid, fd = pty.fork()
        if pid == 0:  # the child: a session leader whose controlling terminal is the pty
            os.execv(argv[0], argv)
        self.pid, self.fd, self.screen = pid, fd, b""

    def expect(self, text: bytes, timeout: float = 20.0) -> None:
        """Read until `text` appears after what earlier expects consumed."""
        deadline = time.monotonic() + timeout
        while text not in self.screen:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise AssertionError(f"{text!r} never appeared; the terminal shows {self.screen[-400:]!r}")
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                chunk = b""
            if not chunk:
                raise AssertionError(f"the chat exited before {text!r}; it showed {self.screen[-400:]!r}")
            self.screen += chunk
        self.screen = self.screen[self.screen.index(text) + len(text):]

    def send(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def exit_code(self, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.read(self.fd, 4096)  # drain, so the child never blocks writing
            except OSError:
                pass
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.05)
        os.kill(self.pid, 9)
        raise AssertionError("the chat did not exit")


@pytest.fixture
def terminal() -> Terminal:
    term = Terminal()
    term.expect(b"ready")
    term.expect(b">>> ")
    return term


def test_ctrl_c_mid_reply_returns_to_the_prompt(terminal: Terminal) -> None:
    terminal.send(b"Hi\r")
    terminal.expect(b"tick tick tick ")
    terminal.send(b"\x03")  # Ctrl-C: the tty driver sends SIGINT to the chat
    terminal.expect(b"[reply stopped; this exchange is not kept]", timeout=5)
    terminal.expect(b">>> ", timeout=5)
    terminal.send(b"/bye\r")
    assert terminal.exit_code() == 0


# readline writes the prompt before it waits on the terminal: a SIGINT that lands in between sets Python's
# flag without interrupting the wait (a CPython race no person's finger hits), so the test lets it settle.
SETTLE_S = 0.5


def test_ctrl_c_twice_at_the_prompt_quits(terminal: Terminal) -> None:
    time.sleep(SETTLE_S)
    terminal.send(b"\x03")
    terminal.expect(b"Ctrl-C again or Ctrl-D to quit")
    terminal.expect(b">>> ")
    time.sleep(SETTLE_S)
    terminal.send(b"\x03")
    assert terminal.exit_code() == 0


def test_ctrl_d_quits(terminal: Terminal) -> None:
    terminal.send(b"\x04")
    assert terminal.exit_code() == 0


def test_the_chat_command_with_the_demo_model(tmp_path) -> None:
    """`phi3-edge chat` itself: the banner names the provider, /help stays local, a reply, Ctrl-D quits."""
    from phi3_edge import api

    folder = tmp_path / "demo"
    api.export("demo", "cpu-int4", folder, progress=False, fidelity=False)
    reply = api.load(folder).generate([{"role": "user", "content": "def f("}], 8).text
    term = Terminal([sys.executable, "-m", "phi3_edge.cli", "chat", str(folder), "--max-new-tokens", "8"])
    term.expect(b"on CPUExecutionProvider, 1024-token context")
    term.expect(b">>> ")
    term.send(b"/help\r")
    term.expect(b"/reset")
    term.expect(b">>> ")
    term.send(b"def f(\r")
    term.expect(reply.replace("\n", "\r\n").encode("utf-8") + b"\r\n")  # the tty turns \n into \r\n
    term.expect(b">>> ")
    term.send(b"\x04")
    assert term.exit_code() == 0

"""The chat loop with injected streams: commands, Ctrl-C, context handling, save/load, bad input."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from phi3_edge.chat_io import StreamReader
from phi3_edge.chat_repl import ChatOptions, ChatRepl, EdgeChatModel, read_conversation
from phi3_edge.errors import Phi3EdgeError

Message = dict[str, str]


@dataclass
class Result:
    text: str
    stop_reason: str


class FakeStream:
    def __init__(self, pieces: list[str], stop_reason: str, interrupt_after: int | None) -> None:
        self.result: Result | None = None
        self._pieces, self._stop, self._interrupt_after = pieces, stop_reason, interrupt_after

    def __iter__(self) -> Iterator[str]:
        for index, piece in enumerate(self._pieces):
            if index == self._interrupt_after:
                raise KeyboardInterrupt  # what Ctrl-C raises in the middle of a generation
            yield piece
        self.result = Result("".join(self._pieces), self._stop)


class FakeModel:
    """One token per word plus 2 per message; replies "reply N" and records every conversation it saw."""

    def __init__(self, context_length: int = 64, max_new_tokens: int = 8) -> None:
        self.context_length = context_length
        self.max_new_tokens = max_new_tokens
        self.seen: list[list[Message]] = []
        self.stop_reason = "eos"
        self.interrupt_after: int | None = None

    def prompt_tokens(self, messages: Sequence[Message]) -> int:
        return sum(len(m["content"].split()) + 2 for m in messages)

    def reply(self, messages: Sequence[Message]) -> FakeStream:
        self.seen.append([dict(m) for m in messages])
        interrupt, self.interrupt_after = self.interrupt_after, None
        return FakeStream(["reply ", str(len(self.seen))], self.stop_reason, interrupt)


class ScriptedReader:
    """Lines, with KeyboardInterrupt where the script says "^C" (Ctrl-C at the prompt)."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = list(lines)
        self.prompts: list[str] = []

    def read(self, prompt: str) -> str | None:
        self.prompts.append(prompt)
        if not self.lines:
            return None
        line = self.lines.pop(0)
        if line == "^C":
            raise KeyboardInterrupt
        return line


def _chat(lines: list[str], model: FakeModel | None = None, **options: object) -> tuple[ChatRepl, str, str, int]:
    model = model if model is not None else FakeModel()
    out, notices = io.StringIO(), io.StringIO()
    repl = ChatRepl(model, ScriptedReader(lines), out, notices, ChatOptions(**options))  # type: ignore[arg-type]
    code = repl.run()
    return repl, out.getvalue(), notices.getvalue(), code


def test_messages_stream_replies_and_keep_the_history() -> None:
    model = FakeModel()
    repl, out, _, code = _chat(["Hi", "", "And then?"], model, system="Be brief.")
    assert code == 0 and out == "reply 1\nreply 2\n"
    assert model.seen[1] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                             {"role": "assistant", "content": "reply 1"}, {"role": "user", "content": "And then?"}]
    assert repl.messages[-1] == {"role": "assistant", "content": "reply 2"}


def test_slash_commands_never_reach_the_model() -> None:
    model = FakeModel()
    repl, out, notices, _ = _chat(["/help", "/nonsense", "/system", "//etc/hosts is a file"], model)
    assert "/reset" in notices and "/save FILE" in notices  # the help text
    assert "unknown command /nonsense" in notices and "no system message" in notices
    assert [m[-1]["content"] for m in model.seen] == ["/etc/hosts is a file"]  # // sends a leading /
    assert out == "reply 1\n"


def test_bye_ends_the_chat_before_later_lines() -> None:
    model = FakeModel()
    _, out, _, code = _chat(["Hi", "/bye", "never sent"], model)
    assert code == 0 and len(model.seen) == 1 and out == "reply 1\n"


def test_reset_and_system() -> None:
    model = FakeModel()
    repl, _, notices, _ = _chat(["Hi", "/system Answer in French.", "/reset", "Again"], model)
    assert model.seen[-1] == [{"role": "system", "content": "Answer in French."},
                              {"role": "user", "content": "Again"}]
    assert "conversation cleared (the system message stays)" in notices
    _, _, notices, _ = _chat(["/system Be terse.", "/system", "/system off", "/system"], model)
    assert "system message: Be terse." in notices and notices.rstrip().endswith("no system message")


def test_ctrl_c_mid_reply_returns_to_the_prompt_and_drops_the_exchange() -> None:
    model = FakeModel()
    model.interrupt_after = 1
    repl, out, notices, code = _chat(["Hi", "Again"], model)
    assert "[reply stopped; this exchange is not kept]" in notices
    assert out == "reply \nreply 2\n"  # the cut reply ends its line; the chat goes on
    assert model.seen[1] == [{"role": "user", "content": "Again"}] and code == 0


def test_ctrl_c_at_the_prompt_twice_quits_once_hints() -> None:
    model = FakeModel()
    _, _, notices, code = _chat(["^C", "Hi", "^C", "^C", "never sent"], model)
    assert code == 0 and len(model.seen) == 1
    assert notices.count("Ctrl-C again or Ctrl-D to quit") == 2


def test_full_context_drops_the_oldest_turns_with_a_notice() -> None:
    model = FakeModel(context_length=40, max_new_tokens=8)  # room for the prompt: 32 tokens
    words = " ".join(["w"] * 8)  # 10 tokens a message with its 2
    repl, _, notices, _ = _chat([words, words, words], model, system="sys")
    # The third message: system 3 + 2 turns of (10 + 4) + 10 = 41 > 32: the oldest turn goes.
    assert "context full: dropped the oldest 1 turn to fit the 40-token context (27 tokens kept)" in notices
    assert [m["role"] for m in model.seen[2]] == ["system", "user", "assistant", "user"]
    assert repl.messages[0] == {"role": "system", "content": "sys"} and len(repl.history) == 4


def test_full_context_is_an_error_when_dropping_is_off() -> None:
    model = FakeModel(context_length=40, max_new_tokens=8)
    words = " ".join(["w"] * 8)
    repl, _, notices, _ = _chat([words, words, words, "/reset", "short"], model, drop_oldest=False)
    assert "leaving no room for a 8-token reply in the 40-token context; /reset" in notices
    assert len(model.seen) == 3 and model.seen[-1] == [{"role": "user", "content": "short"}]


def test_a_message_too_long_for_the_context_is_refused_in_one_line() -> None:
    model = FakeModel(context_length=20, max_new_tokens=4)
    _, out, notices, _ = _chat([" ".join(["w"] * 30), "ok"], model)
    assert "this message is 32 tokens with the system message; the 20-token context leaves no room" in notices
    assert out == "reply 1\n" and model.seen == [[{"role": "user", "content": "ok"}]]


@pytest.mark.parametrize(("reason", "says"), [("context", "[reply cut off: the 64-token context is full"),
                                              ("length", "[reply stopped at the 8-token limit")])
def test_a_cut_reply_says_why(reason: str, says: str) -> None:
    model = FakeModel()
    model.stop_reason = reason
    _, _, notices, _ = _chat(["Hi"], model)
    assert says in notices


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    saved = tmp_path / "chat.json"
    first, _, notices, _ = _chat(["Hi", f"/save {saved}"], system="Be brief.")
    assert f"saved 3 messages to {saved}" in notices
    assert json.loads(saved.read_text(encoding="utf-8")) == first.messages
    model = FakeModel()
    second, _, _, _ = _chat([f"/load {saved}", "More"], model)
    assert model.seen[0] == [*first.messages, {"role": "user", "content": "More"}]
    assert second.system == "Be brief."


@pytest.mark.parametrize(("content", "problem"), [
    (b"{not json", "not valid JSON"),
    (b'{"a": 1}', "expected a JSON list"),
    (b'[{"role": "robot", "content": "x"}]', "message 0 must be"),
    (b'[{"role": "user", "content": "x"}, {"role": "system", "content": "y"}]', "can only come first"),
])
def test_load_rejects_bad_files_in_one_line(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(Phi3EdgeError, match=problem):
        read_conversation(path)
    _, _, notices, _ = _chat([f"/load {path}", f"/load {tmp_path / 'missing.json'}", "/save", f"/save {tmp_path}"])
    lines = [line for line in notices.splitlines() if line.startswith("error:")]
    assert len(lines) == 4 and problem in lines[0] and "cannot read it" in lines[1]
    assert "/save needs a file name" in lines[2] and "cannot write it" in lines[3]


def test_multiline_messages() -> None:
    model = FakeModel()
    _, _, _, _ = _chat(['"""first line', "second line", 'third"""', '"""one line"""'], model)
    assert [m[-1]["content"] for m in model.seen] == ["first line\nsecond line\nthird", "one line"]


def test_invalid_utf8_on_stdin_is_one_line_and_the_chat_goes_on() -> None:
    model = FakeModel()
    out, notices = io.StringIO(), io.StringIO()
    reader = StreamReader(io.BytesIO(b"caf\xe9\nHi\n"))
    ChatRepl(model, reader, out, notices).run()
    assert notices.getvalue() == "error: that line is not valid UTF-8 text; nothing was sent\n"
    assert model.seen == [[{"role": "user", "content": "Hi"}]]


def test_edge_chat_model_replies_as_the_api(tiny_checkpoint, tmp_path: Path) -> None:
    from phi3_edge.api import export, load

    export(str(tiny_checkpoint("gqa")), "cpu-fp32", tmp_path / "artifact", progress=False)
    model = load(tmp_path / "artifact")
    chat = EdgeChatModel(model, max_new_tokens=6)
    out = io.StringIO()
    ChatRepl(chat, ScriptedReader(["Hi", "And then?"]), out, io.StringIO()).run()
    history: list[Message] = [{"role": "user", "content": "Hi"}]
    first = model.generate(history, 6).text
    history += [{"role": "assistant", "content": first}, {"role": "user", "content": "And then?"}]
    assert out.getvalue() == f"{first}\n{model.generate(history, 6).text}\n"
    # The same chat through a Conversation (the KV cache kept between turns) writes the same replies.
    from phi3_edge.api import conversation

    reused = io.StringIO()
    kept = EdgeChatModel(model, conversation(model, max_new_tokens=6), max_new_tokens=6)
    ChatRepl(kept, ScriptedReader(["Hi", "And then?"]), reused, io.StringIO()).run()
    assert reused.getvalue() == out.getvalue()
    assert chat.context_length == model.config.context_length
    assert chat.prompt_tokens(history) == len(model.encode_chat(history))

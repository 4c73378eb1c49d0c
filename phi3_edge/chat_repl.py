"""`phi3-edge chat`: a conversation in a terminal or over a pipe, with no click in it (the CLI wires it up).

    >>> Hi                      a message; the reply streams to stdout, notices go to stderr
    >>> /help                   slash commands are never sent to the model (//text sends "/text")
    >>> \"\"\"                     a message over several lines, until a line ending in \"\"\"

Ctrl-C during a reply stops it and returns to the prompt (the unfinished exchange is not kept); at the
prompt, Ctrl-C twice in a row or Ctrl-D (end of input) quits. When the conversation outgrows the context,
the oldest turns are dropped with a line saying so (or, with drop_oldest=False, the message is refused
with a line saying why); a reply cut off by the context or by max_new_tokens says so too.

The model is anything with the ChatModel shape; EdgeChatModel adapts phi3_edge.api.load()'s model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

from phi3_edge.chat_io import InvalidInput, LineReader, write_text
from phi3_edge.errors import Phi3EdgeError

Message = dict[str, str]
ROLES = ("system", "user", "assistant")
# GenerationResult.stop_reason values this loop explains (phi3_edge.edge_runtime.generate names them).
STOP_CONTEXT = "context"
STOP_LENGTH = "length"
MULTILINE = '"""'

HELP = """\
/help              this list
/reset             forget the conversation (the system message stays)
/system TEXT       set the system message; /system alone shows it, /system off removes it
/save FILE         write the conversation to FILE as JSON (a list of {"role", "content"} messages)
/load FILE         replace the conversation with the one in FILE (as /save writes it)
/bye               quit (also /exit, /quit, Ctrl-D, or Ctrl-C twice at the prompt)
//text             send "/text" as a message
\"\"\"               start a message over several lines; end it with a line ending in \"\"\"
Ctrl-C             stop the reply being written"""


class ReplyStream(Protocol):
    """Text pieces; `.result` (with .text and .stop_reason) is set once it is exhausted."""

    result: Any

    def __iter__(self) -> Iterator[str]: ...


class ChatModel(Protocol):
    @property
    def context_length(self) -> int: ...

    @property
    def max_new_tokens(self) -> int: ...

    def prompt_tokens(self, messages: Sequence[Message]) -> int: ...

    def reply(self, messages: Sequence[Message]) -> ReplyStream: ...


class EdgeChatModel:
    """An EdgeModel (api.load) with fixed generation options, in the ChatModel shape.

    With a `conversation` (api.conversation(model, **generation)) each reply reuses the KV cache of the
    tokens the previous turn left (the whole history is still passed: dropped or reloaded turns just reuse
    less); without one, every reply prefills the whole conversation.
    """

    def __init__(self, model: Any, conversation: Any = None, **generation: Any) -> None:
        self._model = model
        self._conversation = conversation
        self._generation = generation

    @property
    def context_length(self) -> int:
        return int(self._model.config.context_length)

    @property
    def max_new_tokens(self) -> int:
        return int(self._generation.get("max_new_tokens", 128))

    def prompt_tokens(self, messages: Sequence[Message]) -> int:
        return len(self._model.encode_chat(messages))

    def reply(self, messages: Sequence[Message]) -> ReplyStream:
        if self._conversation is not None:
            reused: ReplyStream = self._conversation.stream(list(messages))
            return reused
        stream: ReplyStream = self._model.stream(list(messages), **self._generation)
        return stream


@dataclass(frozen=True)
class ChatOptions:
    system: str | None = None
    drop_oldest: bool = True  # False: a conversation that outgrows the context is refused, not trimmed
    prompt: str = ">>> "
    banner: str | None = None  # printed to the notice stream before the first prompt
    terminal: bool = False  # a person at a terminal: Ctrl-D ends the prompt line before the shell's comes back


class ChatRepl:
    def __init__(self, model: ChatModel, reader: LineReader, out: TextIO, notices: TextIO,
                 options: ChatOptions | None = None) -> None:
        self.model = model
        self.options = options if options is not None else ChatOptions()
        self.system = self.options.system
        self.history: list[Message] = []  # user and assistant messages; the system message is kept apart
        self._reader = reader
        self._out = out
        self._notices = notices

    @property
    def messages(self) -> list[Message]:
        """The conversation as the model sees it: the system message first, when there is one."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.history

    def run(self) -> int:
        """Chat until /bye, end of input or Ctrl-C twice at the prompt; returns the exit code (0)."""
        if self.options.banner:
            self._say(self.options.banner)
        interrupted = False
        while True:
            try:
                line = self._read_message()
            except KeyboardInterrupt:
                if interrupted:
                    self._say("")
                    return 0
                interrupted = True
                self._say("\n(Ctrl-C again or Ctrl-D to quit, /help for commands)")
                continue
            except InvalidInput:
                interrupted = False
                self._say("error: that line is not valid UTF-8 text; nothing was sent")
                continue
            interrupted = False
            if line is None:
                if self.options.terminal:
                    self._say("")
                return 0
            if not self.handle(line):
                return 0

    def handle(self, line: str) -> bool:
        """One line of input (a message or a command); False when it asks to quit."""
        text = line.strip()
        if not text:
            return True
        if text.startswith("/") and not text.startswith("//"):
            return self._command(text)
        self.send(text[1:] if text.startswith("//") else text)
        return True

    def send(self, text: str) -> None:
        """One exchange: fit the conversation into the context, stream the reply, keep both messages."""
        messages = self._fit([*self.messages, {"role": "user", "content": text}])
        if messages is None:
            return
        pieces: list[str] = []
        try:
            stream = self.model.reply(messages)
            for piece in stream:
                pieces.append(piece)
                write_text(self._out, piece)
        except KeyboardInterrupt:
            write_text(self._out, "\n")
            self._say("[reply stopped; this exchange is not kept]")
            return
        except Phi3EdgeError as exc:
            if pieces:
                write_text(self._out, "\n")
            self._say(f"error: {_one_line(exc)}")
            return
        write_text(self._out, "\n")
        result = stream.result
        self.history = [m for m in messages if m["role"] != "system"]
        self.history.append({"role": "assistant", "content": str(result.text)})
        self._explain_stop(str(result.stop_reason))

    # -- context ----------------------------------------------------------------------------------------

    def _fit(self, messages: list[Message]) -> list[Message] | None:
        """The messages with the oldest turns dropped until a reply has room; None when nothing can fit."""
        context = self.model.context_length
        reserve = min(self.model.max_new_tokens, context // 2)  # room for a reply, at most half the context
        count = self.model.prompt_tokens(messages)
        if count + reserve <= context:
            return messages
        if not self.options.drop_oldest and len(messages) > 1 + bool(self.system):
            self._say(f"error: the conversation would be {count} tokens, leaving no room for a {reserve}-token "
                      f"reply in the {context}-token context; /reset to start over, or /save it first "
                      "(dropping old turns is off)")
            return None
        kept, dropped = list(messages), 0
        while count + reserve > context and _drop_oldest_turn(kept):
            dropped += 1
            count = self.model.prompt_tokens(kept)
        if count >= context:
            self._say(f"error: this message is {count} tokens with the system message; the {context}-token "
                      "context leaves no room for a reply; nothing was sent")
            return None
        if dropped:
            self._say(f"context full: dropped the oldest {dropped} turn{'s' * (dropped > 1)} to fit the "
                      f"{context}-token context ({count} tokens kept)")
        return kept

    def _explain_stop(self, reason: str) -> None:
        if reason == STOP_CONTEXT:
            then = "older turns will be dropped to make room" if self.options.drop_oldest else "/reset to go on"
            self._say(f"[reply cut off: the {self.model.context_length}-token context is full; {then}]")
        elif reason == STOP_LENGTH:
            self._say(f"[reply stopped at the {self.model.max_new_tokens}-token limit (--max-new-tokens)]")

    # -- input and commands -----------------------------------------------------------------------------

    def _read_message(self) -> str | None:
        line = self._reader.read(self.options.prompt)
        if line is None or not line.lstrip().startswith(MULTILINE):
            return line
        first = line.lstrip()[len(MULTILINE):].rstrip()
        if first.endswith(MULTILINE):  # """all on one line"""
            return first.removesuffix(MULTILINE)
        lines = [first]
        while (more := self._reader.read("... ")) is not None:
            if more.rstrip().endswith(MULTILINE):
                lines.append(more.rstrip().removesuffix(MULTILINE))
                break
            lines.append(more)
        return "\n".join(lines)

    def _command(self, text: str) -> bool:
        name, _, argument = text.partition(" ")
        argument = argument.strip()
        if name in ("/bye", "/exit", "/quit"):
            return False
        if name in ("/help", "/?"):
            self._say(HELP)
        elif name == "/reset":
            self.history = []
            self._say("conversation cleared" + (" (the system message stays)" if self.system else ""))
        elif name == "/system":
            self._system_command(argument)
        elif name in ("/save", "/load") and not argument:
            self._say(f"error: {name} needs a file name ({name} FILE)")
        elif name == "/save":
            self._save(Path(argument).expanduser())
        elif name == "/load":
            self._load(Path(argument).expanduser())
        else:
            self._say(f"unknown command {name}; /help lists them (start with // to send a leading /)")
        return True

    def _system_command(self, argument: str) -> None:
        if not argument:
            self._say(f"system message: {self.system}" if self.system else "no system message")
        elif argument == "off":
            self.system = None
            self._say("system message removed")
        else:
            self.system = argument
            self._say("system message set")

    def _save(self, path: Path) -> None:
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            temporary.write_text(json.dumps(self.messages, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            os.replace(temporary, path)  # an existing file is the old conversation or the new, never half
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            self._say(f"error: {path}: cannot write it ({exc.strerror or exc})")
            return
        self._say(f"saved {len(self.messages)} messages to {path}")

    def _load(self, path: Path) -> None:
        try:
            messages = read_conversation(path)
        except Phi3EdgeError as exc:
            self._say(f"error: {_one_line(exc)}")
            return
        system = [m["content"] for m in messages if m["role"] == "system"]
        self.system = system[0] if system else self.system
        self.history = [m for m in messages if m["role"] != "system"]
        self._say(f"loaded {len(messages)} messages from {path}")

    def _say(self, text: str) -> None:
        write_text(self._notices, text + "\n")


def read_conversation(path: Path) -> list[Message]:
    """A saved conversation: a JSON list of {"role", "content"} messages (or {"messages": [...]})."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise Phi3EdgeError(f"cannot read it ({exc.strerror or exc})", path) from None
    except (ValueError, RecursionError) as exc:  # bad JSON or not UTF-8
        raise Phi3EdgeError(f"not valid JSON ({str(exc)[:120]})", path) from None
    if isinstance(data, dict):
        data = data.get("messages")
    if not isinstance(data, list):
        raise Phi3EdgeError("expected a JSON list of {\"role\", \"content\"} messages", path)
    messages: list[Message] = []
    for index, item in enumerate(data):
        if not isinstance(item, dict) or item.get("role") not in ROLES or not isinstance(item.get("content"), str):
            raise Phi3EdgeError(f"message {index} must be {{\"role\": one of {', '.join(ROLES)}, "
                                "\"content\": text}", path)
        if item["role"] == "system" and index > 0:
            raise Phi3EdgeError(f"message {index}: a system message can only come first", path)
        messages.append({"role": item["role"], "content": item["content"]})
    return messages


def _drop_oldest_turn(messages: list[Message]) -> bool:
    """Remove the first user message and the replies after it; never the last message. False: nothing left."""
    first = next((i for i, m in enumerate(messages) if m["role"] != "system"), None)
    if first is None or first == len(messages) - 1:
        return False
    del messages[first]
    while first < len(messages) - 1 and messages[first]["role"] == "assistant":
        del messages[first]
    return True


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).splitlines())

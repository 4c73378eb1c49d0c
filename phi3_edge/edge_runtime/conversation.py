"""Multi-turn chat that keeps the KV cache between turns, so a turn prefills only the tokens that are new.

    chat = Conversation(model, system="You are terse.")
    for piece in chat.send("Hi"):                       # prefill: system + first user message
        print(piece, end="")
    for piece in chat.send("And in French?"):           # prefill: the reply's tail + the new message only
        print(piece, end="")

Each turn renders the whole conversation with the artifact's chat template and encodes it, as a fresh
generation would; then PrefixCache compares those ids with the ids whose keys/values the cache holds (the
previous prompt, the reply's tokens as they were generated) and feeds only what follows their longest
common prefix. Nothing assumes the template re-renders earlier turns the same way: where it does not (a
template that rewrites old turns, a reply whose text re-encodes to other ids, a truncated history) the
common prefix is simply shorter, and a fully different rendering is a full prefill. Reuse is therefore
exact: the tokens equal those of a full re-prefill (up to the rounding of a different chunking).

    cache holds   <|user|> Hi <|end|> <|assistant|> Hello ! <|end|>              (prompt 1 + reply 1)
    turn 2 ids    <|user|> Hi <|end|> <|assistant|> Hello ! <|end|> \n <|user|> And ... <|assistant|>
                  |------------------ common prefix: reused ------------------|-- fed this turn ------|

Rolling back costs nothing: keys/values past the common prefix stay in the buffer, and the next run's
attention_mask length (total_length) excludes them until new tokens overwrite them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from phi3_edge.edge_runtime.chat import Message, fit_conversation
from phi3_edge.edge_runtime.generate import Engine, GenerationOptions, GenerationResult, Generator
from phi3_edge.edge_runtime.kv_pass import ForwardPass
from phi3_edge.errors import Phi3EdgeError

if TYPE_CHECKING:
    from phi3_edge.edge_runtime.model import EdgeModel, TextStream


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id sequences."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class PrefixCache:
    """One KV cache that outlives a generation: the pass that holds it and the ids it holds, in order.

    Single-threaded: one conversation, one generation at a time. Each claim() is a new lease; a generation
    holding an older one (a turn abandoned mid-stream, then superseded) can neither run on the pass nor
    record into it, so a stale generator closed late by the garbage collector changes nothing.
    """

    def __init__(self, engine: Engine, max_length: int | None = None) -> None:
        self.max_length = max_length or engine.config.context_length
        self._forward = engine.start(self.max_length)
        self._switch = engine.config.rope_switch_length
        self._ids: list[int] = []
        self._lease = 0

    @property
    def ids(self) -> list[int]:
        """The ids whose keys/values are valid, position by position."""
        return list(self._ids)

    def claim(self, prompt_ids: Sequence[int]) -> tuple[ForwardPass, int, int]:
        """The pass for a generation of `prompt_ids`, how many leading prompt ids it already holds, the lease.

        At most len(prompt_ids) - 1: the last prompt id is always fed, its logits choose the first token.
        LongRoPE: keys cached by runs at most original_max_position_embeddings long were rotated with the
        short factors, longer runs with the long ones (generate.py re-runs the sequence at the switch); keys
        of the other kind than the new prompt needs are not reused.
        """
        reuse = min(common_prefix(self._ids, prompt_ids), len(prompt_ids) - 1)
        if self._switch is not None and (len(self._ids) > self._switch) != (len(prompt_ids) > self._switch):
            reuse = 0
        self._ids = self._ids[:reuse]
        self._lease += 1
        return self._forward, reuse, self._lease

    def check(self, lease: int) -> None:
        """Phi3EdgeError unless `lease` is the newest: only its generation may run on the pass."""
        if lease != self._lease:
            raise Phi3EdgeError("this generation was superseded by a newer one of the same conversation, "
                                "which now owns the KV cache")

    def record(self, fed_ids: Sequence[int], lease: int) -> None:
        """After a generation: these ids, in order, are what the pass now holds."""
        if lease == self._lease:
            self._ids = list(fed_ids)

    def invalidate(self, lease: int) -> None:
        """A run failed or was interrupted inside onnxruntime: trust nothing the buffer holds."""
        if lease == self._lease:
            self._ids = []


class Turn:
    """The text pieces of one reply (a TextStream); once exhausted, the exchange joins the conversation."""

    def __init__(self, conversation: Conversation, messages: list[Message], stream: TextStream,
                 reused: int) -> None:
        self._conversation = conversation
        self._messages = messages
        self.stream = stream
        self.reused_tokens = reused  # prompt tokens whose keys/values came from the cache
        self._pieces = self._run()

    @property
    def result(self) -> GenerationResult | None:
        return self.stream.result

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def _run(self) -> Iterator[str]:
        yield from self.stream
        assert self.stream.result is not None
        self._conversation.messages = [*self._messages, {"role": "assistant", "content": self.stream.result.text}]


class Conversation:
    """Messages so far plus the KV cache of their tokens; send() runs one turn.

    Keyword options (GenerationOptions' fields) given here are every turn's defaults; send() may override
    them. With truncate=True the oldest turns drop when the conversation outgrows the context (the cache
    then reuses only what still matches: the system message, typically).
    """

    def __init__(self, model: EdgeModel, system: str | None = None, messages: Sequence[Message] = (),
                 **defaults: Any) -> None:
        self.model = model
        self.messages: list[Message] = [{"role": "system", "content": system}] if system else []
        self.messages += list(messages)
        self._defaults = defaults
        self.cache = PrefixCache(model.session)

    def send(self, content: str, role: str = "user", **options: Any) -> Turn:
        """Stream the reply to one new message; the exchange is kept once the stream is exhausted."""
        messages: list[Message] = [*self.messages, {"role": role, "content": content}]
        kept, stream = self._stream(messages, options)
        return Turn(self, kept, stream, stream.generator.reused_tokens)

    def stream(self, messages: Sequence[Message], **options: Any) -> TextStream:
        """The reply to any conversation (a REPL that keeps its own history passes all of it every turn):
        what this conversation's cache holds of its tokens is reused, `self.messages` is left alone."""
        return self._stream(list(messages), options)[1]

    def _stream(self, messages: list[Message], options: dict[str, Any]) -> tuple[list[Message], TextStream]:
        from phi3_edge.edge_runtime.model import TextStream

        settings = GenerationOptions(**{**self._defaults, **options})
        if settings.truncate:
            budget = max(1, self.model.config.context_length - settings.max_new_tokens)
            messages, ids = fit_conversation(messages, self.model.encode_chat, budget)
        else:
            ids = self.model.encode_chat(messages)
        generator = Generator(self.model.session, ids, settings, self.model.eos_ids, cache=self.cache)
        return messages, TextStream(generator, self.model.tokenizer)

    def say(self, content: str, role: str = "user", **options: Any) -> GenerationResult:
        """send() run to the end; the reply's GenerationResult."""
        turn = self.send(content, role, **options)
        for _ in turn:
            pass
        assert turn.result is not None
        return turn.result

    def reset(self) -> None:
        """Forget the messages (the system message stays); the cache is reused where the prefix still matches."""
        self.messages = [m for m in self.messages if m.get("role") == "system"]

"""The generation loop over an engine: prefill the prompt, then one token per step through the KV cache.

An engine (DecoderSession for plain onnxruntime, GenaiDecoder for onnxruntime-genai) hands out one
ForwardPass per generation, which owns that generation's KV cache; the loop owns sampling and stopping, so
every backend gets the same tokens for the same logits.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from phi3_edge.edge_runtime.decoder_config import DecoderConfig
from phi3_edge.edge_runtime.kv_pass import ForwardPass
from phi3_edge.edge_runtime.sampling import Sampler, SamplingOptions
from phi3_edge.errors import Phi3EdgeError

# Why a generation ended: an eos id, max_new_tokens, the model's context_length, or a user stop string.
STOP_EOS = "eos"
STOP_LENGTH = "length"
STOP_CONTEXT = "context"
STOP_STRING = "stop"


class Engine(Protocol):
    config: DecoderConfig
    backend: str

    def start(self, max_length: int) -> ForwardPass: ...


@dataclass(frozen=True)
class GenerationOptions:
    """Everything that shapes one generation besides the prompt (the keyword arguments of generate/stream)."""

    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: Sequence[str] = ()  # text is cut right before the first of these (a tuple once constructed)
    ignore_eos: bool = False  # always generate max_new_tokens (benchmarks)
    truncate: bool = False  # chat: drop the oldest non-system turns when the conversation outgrows the context

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) \
                or self.max_new_tokens < 1:
            raise Phi3EdgeError(f"max_new_tokens must be at least 1, got {self.max_new_tokens!r}")
        if isinstance(self.stop, str):  # stop="END" would otherwise become five one-letter stop strings
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        _ = self.sampling  # validates the sampling fields now, not at the first token

    @property
    def sampling(self) -> SamplingOptions:
        return SamplingOptions(self.temperature, self.top_k, self.top_p, self.repetition_penalty, self.seed)


@dataclass(frozen=True)
class GenerationResult:
    """The outcome of one generation.

    token_ids are the new tokens only, ending with the eos id when stop_reason is "eos" (as transformers'
    generate() and onnxruntime-genai return them); text is their decoding without special tokens, cut before
    a stop string when stop_reason is "stop".
    """

    token_ids: list[int]
    text: str
    stop_reason: str
    prompt_tokens: int
    prefill_seconds: float  # prompt in -> first token out (TTFT)
    decode_seconds: float  # every later token

    @property
    def tokens_per_second(self) -> float:
        """Decode speed: tokens after the first over the time they took (the first is the prefill's)."""
        decoded = len(self.token_ids) - 1
        return decoded / self.decode_seconds if decoded > 0 and self.decode_seconds > 0 else 0.0


@dataclass
class Generator:
    """Iterate to get token ids one at a time; stop_reason and timings are set once iteration ends.

    Iterable once: the KV cache lives in the loop, so a second pass would need a second generator.
    """

    engine: Engine
    prompt_ids: list[int]
    options: GenerationOptions
    eos_ids: frozenset[int]
    token_ids: list[int] = field(default_factory=list, init=False)
    stop_reason: str | None = field(default=None, init=False)
    prefill_seconds: float = field(default=0.0, init=False)
    decode_seconds: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        context = self.engine.config.context_length
        if not self.prompt_ids:
            raise Phi3EdgeError("the prompt is empty (it encodes to no tokens)")
        if len(self.prompt_ids) >= context:
            raise Phi3EdgeError(f"the prompt is {len(self.prompt_ids)} tokens; genai_config.json's context_length "
                                f"of {context} leaves no room to generate")
        vocab = self.engine.config.vocab_size
        outside = [token for token in self.prompt_ids if not 0 <= token < vocab]
        if outside:  # onnxruntime would fail deep inside Gather with a message naming no token
            raise Phi3EdgeError(f"prompt token id {outside[0]} is outside the model's vocabulary of {vocab}")
        # The KV buffers hold every token fed to the model: the prompt and all new tokens but the last.
        self.max_length = min(context, len(self.prompt_ids) + self.options.max_new_tokens)
        self._started = False

    def __iter__(self) -> Iterator[int]:
        if self._started:
            raise RuntimeError("a Generator runs once; make a new one for another generation")
        self._started = True
        started = time.perf_counter()
        sampler = Sampler(self.options.sampling, self.engine.config.vocab_size, self.prompt_ids)
        forward = self.engine.start(self.max_length)
        new_ids, total = self.prompt_ids, len(self.prompt_ids)
        while True:
            token = sampler.choose(forward.run(new_ids, total))
            self._record_time(started)
            self.token_ids.append(token)
            self.stop_reason = self._stop_reason(token, total + 1)
            yield token
            if self.stop_reason:
                return
            started = time.perf_counter()
            new_ids, total = [token], total + 1
            if self._crosses_rope_switch(total):
                new_ids = self.prompt_ids + self.token_ids
                forward.reset()

    def finish(self, reason: str) -> None:
        """The consumer ended the generation early (a stop string appeared in the text)."""
        self.stop_reason = reason

    def _crosses_rope_switch(self, total: int) -> bool:
        """LongRoPE: the step whose sequence first outgrows original_max_position_embeddings re-runs the whole
        sequence, so every cached key is rotated with the long factors. That is what transformers' generate()
        does (Phi3ForCausalLM.prepare_inputs_for_generation); keeping short-factor keys would drift from it."""
        switch = self.engine.config.rope_switch_length
        return switch is not None and total == switch + 1

    def _record_time(self, started: float) -> None:
        # Only model time counts: the consumer's work between yields (printing, detokenizing) is excluded.
        elapsed = time.perf_counter() - started
        if self.token_ids:
            self.decode_seconds += elapsed
        else:
            self.prefill_seconds = elapsed

    def _stop_reason(self, token: int, sequence_length: int) -> str | None:
        if token in self.eos_ids and not self.options.ignore_eos:
            return STOP_EOS
        if len(self.token_ids) >= self.options.max_new_tokens:
            return STOP_LENGTH
        # Prompt + generated never outgrows the context (onnxruntime-genai's max_length): positions past it
        # have no rotary table and the model never saw them in training.
        if sequence_length >= self.engine.config.context_length:
            return STOP_CONTEXT
        return None

    def result(self, text: str) -> GenerationResult:
        """The finished generation; `text` is the caller's decoding (this loop knows no tokenizer)."""
        if self.stop_reason is None:
            raise RuntimeError("result() before the generation finished")
        return GenerationResult(
            token_ids=list(self.token_ids),
            text=text,
            stop_reason=self.stop_reason,
            prompt_tokens=len(self.prompt_ids),
            prefill_seconds=self.prefill_seconds,
            decode_seconds=self.decode_seconds,
        )


GreedyGenerator = Generator  # the name from before sampling existed

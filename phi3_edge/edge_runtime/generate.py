"""The generation loop over an engine: prefill the prompt, then one token per step through the KV cache.

An engine (DecoderSession for plain onnxruntime, GenaiDecoder for onnxruntime-genai) hands out one
ForwardPass per generation, which owns that generation's KV cache; the loop owns sampling and stopping, so
every backend gets the same tokens for the same logits.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, cast

from phi3_edge.edge_runtime.decoder_config import DecoderConfig
from phi3_edge.edge_runtime.kv_pass import ForwardPass
from phi3_edge.edge_runtime.lookup import DEFAULT_DRAFT_TOKENS, LookupStats, Speculator, VerifyPass
from phi3_edge.edge_runtime.sampling import Sampler, SamplingOptions
from phi3_edge.errors import Phi3EdgeError

if TYPE_CHECKING:
    from phi3_edge.edge_runtime.conversation import PrefixCache

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
    lookup: int = 0  # prompt-lookup decoding: draft tokens per verify pass (lookup.py); 0 = off, True = default

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) \
                or self.max_new_tokens < 1:
            raise Phi3EdgeError(f"max_new_tokens must be at least 1, got {self.max_new_tokens!r}")
        if isinstance(self.stop, str):  # stop="END" would otherwise become five one-letter stop strings
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        if isinstance(self.lookup, bool):
            object.__setattr__(self, "lookup", DEFAULT_DRAFT_TOKENS if self.lookup else 0)
        if not isinstance(self.lookup, int) or self.lookup < 0:
            raise Phi3EdgeError(f"lookup must be a draft length >= 0 (0 = off), got {self.lookup!r}")
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
    reused_tokens: int = 0  # prompt tokens whose keys/values a conversation's cache already held
    lookup: LookupStats | None = None  # prompt-lookup decoding's draft/accept counts, when it was on

    @property
    def tokens_per_second(self) -> float:
        """Decode speed: tokens after the first over the time they took (the first is the prefill's)."""
        decoded = len(self.token_ids) - 1
        return decoded / self.decode_seconds if decoded > 0 and self.decode_seconds > 0 else 0.0


@dataclass
class Generator:
    """Iterate to get token ids one at a time; stop_reason and timings are set once iteration ends.

    Iterable once: the KV cache lives in the loop, so a second pass would need a second generator. With a
    PrefixCache (conversation.py) the cache outlives the loop: the prompt's leading ids it already holds are
    not fed again (reused_tokens), and what the loop fed is recorded back into it at the end.
    """

    engine: Engine
    prompt_ids: list[int]
    options: GenerationOptions
    eos_ids: frozenset[int]
    cache: PrefixCache | None = None
    token_ids: list[int] = field(default_factory=list, init=False)
    stop_reason: str | None = field(default=None, init=False)
    prefill_seconds: float = field(default=0.0, init=False)
    decode_seconds: float = field(default=0.0, init=False)
    reused_tokens: int = field(default=0, init=False)
    lookup_stats: LookupStats | None = field(default=None, init=False)

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
        self._forward: ForwardPass | None = None
        self._lease = 0
        if self.cache is not None:
            self._forward, self.reused_tokens, self._lease = self.cache.claim(self.prompt_ids)
            self.max_length = self.cache.max_length
        self._started = False

    def __iter__(self) -> Iterator[int]:
        if self._started:
            raise RuntimeError("a Generator runs once; make a new one for another generation")
        self._started = True
        sampler = Sampler(self.options.sampling, self.engine.config.vocab_size, self.prompt_ids)
        forward = self._forward if self._forward is not None else self.engine.start(self.max_length)
        speculator = self._speculator(forward)
        try:
            yield from self._loop(forward, sampler, speculator)
        except GeneratorExit:  # the consumer stopped early: every run so far completed
            self._record_cache()
            raise
        except BaseException:  # a run failed or was interrupted inside onnxruntime
            if self.cache is not None:
                self.cache.invalidate(self._lease)
            raise
        self._record_cache()

    def _loop(self, forward: ForwardPass, sampler: Sampler, speculator: Speculator | None) -> Iterator[int]:
        """Prefill (the prompt's ids the cache lacks), then steps of one token, or more with lookup."""
        started = time.perf_counter()
        self._check_lease()
        tokens = [sampler.choose(forward.run(self.prompt_ids[self.reused_tokens:], len(self.prompt_ids)))]
        while True:
            self._record_time(started)
            for token in tokens:
                self.token_ids.append(token)
                self.stop_reason = self._stop_reason(token, len(self.prompt_ids) + len(self.token_ids))
                yield token
                if self.stop_reason:
                    return
            started = time.perf_counter()
            tokens = self._step(forward, sampler, speculator)

    def _step(self, forward: ForwardPass, sampler: Sampler, speculator: Speculator | None) -> list[int]:
        """The next token(s) after token_ids[-1], the one token chosen but not yet fed."""
        self._check_lease()
        cached = len(self.prompt_ids) + len(self.token_ids) - 1
        if speculator is not None and len(self.token_ids) == 1:
            speculator.observe(self.token_ids[0])  # the prefill's token, chosen outside speculator.step
        if self._crosses_rope_switch(cached + 1):
            forward.reset()
            token = sampler.choose(forward.run(self.prompt_ids + self.token_ids, cached + 1))
        elif speculator is None:
            token = sampler.choose(forward.run(self.token_ids[-1:], cached + 1))
        else:
            verify = cast(VerifyPass, forward)  # _speculator() checked it has run_all
            return speculator.step(verify, sampler, self.token_ids[-1], cached, self._room(cached))
        if speculator is not None:
            speculator.observe(token)
        return [token]

    def _room(self, cached: int) -> int:
        """The most tokens one verify pass may emit: what max_new_tokens and the KV buffer leave, and never a
        window that crosses the LongRoPE switch (the plain step there re-runs the sequence)."""
        room = min(self.options.max_new_tokens - len(self.token_ids), self.max_length - cached)
        switch = self.engine.config.rope_switch_length
        if switch is not None and cached < switch:
            room = min(room, switch - cached)
        return max(room, 1)

    def _speculator(self, forward: ForwardPass) -> Speculator | None:
        if not self.options.lookup:
            return None
        if not hasattr(forward, "run_all"):  # onnxruntime-genai returns only the last position's logits
            raise Phi3EdgeError(f"lookup decoding needs every position's logits; the {self.engine.backend} "
                                f"backend returns only the last one (use the ort backend)")
        speculator = Speculator.for_prompt(self.prompt_ids, self.options.lookup)
        self.lookup_stats = speculator.stats
        return speculator

    def _check_lease(self) -> None:
        if self.cache is not None:
            self.cache.check(self._lease)

    def _record_cache(self) -> None:
        if self.cache is not None:  # fed: the prompt and every token but the last
            self.cache.record(self.prompt_ids + self.token_ids[:-1], self._lease)

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
            reused_tokens=self.reused_tokens,
            lookup=self.lookup_stats,
        )


GreedyGenerator = Generator  # the name from before sampling existed

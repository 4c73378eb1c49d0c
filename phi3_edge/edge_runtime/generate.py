"""Greedy generation over a DecoderSession: prefill the prompt, then one token per step through the KV cache.

Plain numpy arrays carry present -> past between steps for now; IO binding (buffers that stay in place on the
device) slots in behind DecoderSession.step without changing this loop.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from phi3_edge.edge_runtime.session import DecoderSession
from phi3_edge.errors import Phi3EdgeError

# Why a generation ended: an eos id, max_new_tokens, or the model's context_length.
STOP_EOS = "eos"
STOP_LENGTH = "length"
STOP_CONTEXT = "context"


@dataclass(frozen=True)
class GenerationResult:
    """The outcome of one generation.

    token_ids are the new tokens only, ending with the eos id when stop_reason is "eos" (as transformers'
    generate() and onnxruntime-genai return them); text is their decoding without special tokens.
    """

    token_ids: list[int]
    text: str
    stop_reason: str
    prompt_tokens: int
    prefill_seconds: float  # prompt forward pass, i.e. time to the first token
    decode_seconds: float  # every later token

    @property
    def tokens_per_second(self) -> float:
        """Decode speed: tokens after the first over the time they took (the first is the prefill's)."""
        decoded = len(self.token_ids) - 1
        return decoded / self.decode_seconds if decoded > 0 and self.decode_seconds > 0 else 0.0


@dataclass
class GreedyGenerator:
    """Iterate to get token ids one at a time; stop_reason and timings are set once iteration ends.

    Iterable once: the KV cache lives in the loop, so a second pass would need a second generator.
    """

    session: DecoderSession
    prompt_ids: list[int]
    max_new_tokens: int
    eos_ids: frozenset[int]
    token_ids: list[int] = field(default_factory=list, init=False)
    stop_reason: str | None = field(default=None, init=False)
    prefill_seconds: float = field(default=0.0, init=False)
    decode_seconds: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        context = self.session.config.context_length
        if not self.prompt_ids:
            raise Phi3EdgeError("the prompt is empty (it encodes to no tokens)")
        if len(self.prompt_ids) >= context:
            raise Phi3EdgeError(f"the prompt is {len(self.prompt_ids)} tokens; genai_config.json's context_length "
                                f"of {context} leaves no room to generate")
        if self.max_new_tokens < 1:
            raise Phi3EdgeError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")

    def __iter__(self) -> Iterator[int]:
        if self.token_ids:
            raise RuntimeError("a GreedyGenerator runs once; make a new one for another generation")
        started = time.perf_counter()
        past = self.session.empty_cache()
        new_ids, total = self.prompt_ids, len(self.prompt_ids)
        while True:
            logits, past = self.session.step(new_ids, total, past)
            token = int(np.argmax(logits))
            self._record_time(started)
            self.token_ids.append(token)
            yield token
            self.stop_reason = self._stop_reason(token, total + 1)
            if self.stop_reason:
                return
            started = time.perf_counter()
            new_ids, total = [token], total + 1
            if self._crosses_rope_switch(total):
                new_ids, past = self.prompt_ids + self.token_ids, self.session.empty_cache()

    def _crosses_rope_switch(self, total: int) -> bool:
        """LongRoPE: the step whose sequence first outgrows original_max_position_embeddings re-runs the whole
        sequence, so every cached key is rotated with the long factors. That is what transformers' generate()
        does (Phi3ForCausalLM.prepare_inputs_for_generation); keeping short-factor keys would drift from it."""
        switch = self.session.config.rope_switch_length
        return switch is not None and total == switch + 1

    def _record_time(self, started: float) -> None:
        # Only model time counts: the consumer's work between yields (printing, detokenizing) is excluded.
        elapsed = time.perf_counter() - started
        if self.token_ids:
            self.decode_seconds += elapsed
        else:
            self.prefill_seconds = elapsed

    def _stop_reason(self, token: int, sequence_length: int) -> str | None:
        if token in self.eos_ids:
            return STOP_EOS
        if len(self.token_ids) >= self.max_new_tokens:
            return STOP_LENGTH
        # Prompt + generated never outgrows the context (onnxruntime-genai's max_length): positions past it
        # have no rotary table and the model never saw them in training.
        if sequence_length >= self.session.config.context_length:
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

"""One generation's forward state: the KV cache between decoder steps, in one of two layouts.

SharedBufferPass (GroupQueryAttention graphs): every past_key_values.i.* and present.i.* is bound, through
ORT IO binding, to the SAME preallocated buffer [1, kv_heads, max_length, head_dim]. GQA sees past and present
share memory and writes only the new positions in place; the valid length comes from attention_mask (the
graph derives seqlens_k and positions from it). No per-token copy of the cache, and no per-token allocation
of it either: this is onnxruntime-genai's past_present_share_buffer=true.

ConcatPass (any graph): plain run(); each step's present tensors (past + new, freshly allocated by ORT) are
fed back as the next past. Correct everywhere, but every step copies the whole cache.

A pass is private to one generation (never shared between threads); the session it runs on is shared.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np
import onnxruntime as ort

from phi3_edge import io_spec
from phi3_edge.errors import Phi3EdgeError

if TYPE_CHECKING:
    from phi3_edge.edge_runtime.session import DecoderSession, KVCache


class ForwardPass(Protocol):
    def run(self, input_ids: list[int], total_length: int) -> np.ndarray:
        """Feed new tokens (total_length = cached + new); returns the last position's logits [V].

        The array may be a view that the next run() overwrites: use it before calling run() again.
        """

    def reset(self) -> None:
        """Forget the cache: the next run() is a prefill again (LongRoPE's re-run at the switch)."""


class ConcatPass:
    def __init__(self, session: DecoderSession) -> None:
        self._session = session
        self._past: KVCache = session.empty_cache()

    def run(self, input_ids: list[int], total_length: int) -> np.ndarray:
        logits, self._past = self._session.step(input_ids, total_length, self._past)
        return logits

    def reset(self) -> None:
        self._past = self._session.empty_cache()


class SharedBufferPass:
    def __init__(self, session: DecoderSession, max_length: int) -> None:
        config = session.config
        self._session = session.ort_session
        self._max_length = max_length
        self._binding = self._session.io_binding()
        # np.zeros maps untouched pages lazily: a buffer sized for the whole context costs only what is written.
        shape = (1, config.kv_heads, max_length, config.head_dim)  # (B, Hkv, max_len, D)
        self._buffers = [np.zeros(shape, dtype=session.kv_dtype) for _ in session.past_names]
        for past, present, buffer in zip(session.past_names, session.present_names, self._buffers):
            value = ort.OrtValue.ortvalue_from_numpy(buffer)  # wraps the numpy memory, no copy
            self._binding.bind_ortvalue_input(past, value)
            self._binding.bind_ortvalue_output(present, value)
        self._mask = np.ones((1, max_length), dtype=np.int64)  # sliced per step: [1, total] without allocating
        self._vocab = config.vocab_size
        self._logits_dtype = session.logits_dtype
        self._step_logits = np.empty((1, 1, self._vocab), dtype=self._logits_dtype)  # (B, S=1, V), reused
        self._step_value = ort.OrtValue.ortvalue_from_numpy(self._step_logits)
        self._keep: list[np.ndarray] = []  # arrays bound for the current run must outlive it

    def run(self, input_ids: list[int], total_length: int) -> np.ndarray:
        if total_length > self._max_length:
            raise Phi3EdgeError(f"sequence of {total_length} tokens exceeds the {self._max_length}-token KV buffer")
        ids = np.asarray([input_ids], dtype=np.int64)  # (B=1, S)
        mask = self._mask[:, :total_length]  # (B=1, total), contiguous view
        self._binding.bind_cpu_input(io_spec.INPUT_IDS, ids)
        self._binding.bind_cpu_input(io_spec.ATTENTION_MASK, mask)
        logits = self._logits_for(len(input_ids))
        self._keep = [ids, mask, logits]
        self._session.run_with_iobinding(self._binding)
        return logits[0, -1]

    def _logits_for(self, new_tokens: int) -> np.ndarray:
        """A decode step reuses one [1, 1, V] buffer; a prefill gets its own [1, S, V] (the graph computes all S)."""
        if new_tokens == 1:
            self._binding.bind_ortvalue_output(io_spec.LOGITS, self._step_value)
            return self._step_logits
        logits = np.empty((1, new_tokens, self._vocab), dtype=self._logits_dtype)
        self._binding.bind_ortvalue_output(io_spec.LOGITS, ort.OrtValue.ortvalue_from_numpy(logits))
        return logits

    def reset(self) -> None:
        # Nothing to clear: attention_mask says how much of the buffer is valid, and a re-prefill rewrites
        # positions 0..total-1 of the same buffers.
        pass

    @property
    def buffers(self) -> list[np.ndarray]:
        """The KV buffers (past and present alike), key then value per layer; for tests and diagnostics."""
        return self._buffers

"""One generation's forward state: the KV cache between decoder steps, in one of two layouts.

SharedBufferPass (GroupQueryAttention graphs): every past_key_values.i.* and present.i.* is bound, through
ORT IO binding, to the SAME preallocated buffer [1, kv_heads, max_length, head_dim]. GQA sees past and present
share memory and writes only the new positions in place; the valid length comes from attention_mask (the
graph derives seqlens_k and positions from it). No per-token copy of the cache, and no per-token allocation
of it either: this is onnxruntime-genai's past_present_share_buffer=true.

ConcatPass (any graph): a plain forward; each step's present tensors (past + new, freshly allocated by ORT)
are fed back as the next past. Correct everywhere, but every step copies the whole cache.

Logits: run() needs the last position only, run_all() (prompt lookup's verify pass) every new one. A graph with
the optional logits_to_keep input (io_spec) is fed how many trailing positions to compute, so a prefill's
lm_head runs on one position instead of S; a graph exported before it always returns every position and the
last row is read from those.

A pass is private to one generation (never shared between threads); the session it runs on is shared. Passes
get what they need as arguments (a forward function, the cache layout, the ORT session), so this module
knows nothing of DecoderSession.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort

from phi3_edge import io_spec
from phi3_edge.errors import Phi3EdgeError

# onnxruntime's device name of host (numpy) memory, as IO binding spells it: asked of an OrtValue over numpy
# memory rather than written out, so no EP-like name literal lives outside targets/ (tests/test_layering.py).
HOST_MEMORY: str = ort.OrtValue.ortvalue_from_numpy(np.zeros(1, np.int64)).device_name()

KVCache = dict[str, np.ndarray]
# (new token ids, past, logits_to_keep) -> (logits at the last `keep` new positions (0: every one; a graph without
# the input: every one), the next past)
Forward = Callable[[list[int], KVCache, int], tuple[np.ndarray, KVCache]]


class ForwardPass(Protocol):
    def run(self, input_ids: list[int], total_length: int) -> np.ndarray:
        """Feed new tokens (total_length = cached + new); returns the last position's logits [V].

        The pass keeps the first total_length - len(input_ids) cached positions and drops any beyond them
        (a conversation's shorter common prefix, prompt lookup's rejected drafts). The array may be a view
        that the next run() overwrites: use it before calling run() again.
        """

    def reset(self) -> None:
        """Forget the cache: the next run() is a prefill again (LongRoPE's re-run at the switch)."""


@dataclass(frozen=True)
class CacheLayout:
    """The KV cache as the graph declares it: names in feed order, shapes and element types."""

    past_names: tuple[str, ...]  # layer by layer, key before value
    present_names: tuple[str, ...]  # same order: present.{i} of one step is past_key_values.{i} of the next
    kv_heads: int
    head_dim: int
    vocab_size: int
    kv_dtype: type[np.floating[Any]]
    logits_dtype: type[np.floating[Any]]
    keeps_logits: bool = False  # the graph has io_spec.LOGITS_TO_KEEP (exported since it existed)

    def logits_rows(self, new_tokens: int, keep: int) -> int:
        """Rows of logits a run of `new_tokens` returns when fed logits_to_keep=keep (>= 1)."""
        return min(keep, new_tokens) if self.keeps_logits else new_tokens

    def empty(self) -> KVCache:
        """Zero-length past tensors [1, kv_heads, 0, head_dim]: the prefill step's past."""
        empty = np.zeros((1, self.kv_heads, 0, self.head_dim), dtype=self.kv_dtype)  # (B, Hkv, past=0, D)
        return dict.fromkeys(self.past_names, empty)


class ConcatPass:
    def __init__(self, forward: Forward, layout: CacheLayout) -> None:
        self._forward = forward
        self._layout = layout
        self._past: KVCache = layout.empty()

    def run(self, input_ids: list[int], total_length: int) -> np.ndarray:
        last: np.ndarray = self._run(input_ids, total_length, 1)[-1]  # (1 or S, V) -> (V,)
        return last

    def run_all(self, input_ids: list[int], total_length: int) -> np.ndarray:
        """As run(), with the logits of every new position (S, V)."""
        return self._run(input_ids, total_length, len(input_ids))

    def _run(self, input_ids: list[int], total_length: int, logits_to_keep: int) -> np.ndarray:
        cached = total_length - len(input_ids)
        if self._past[self._layout.past_names[0]].shape[2] > cached:  # roll back: (B, Hkv, past, D) -> cached
            self._past = {name: np.ascontiguousarray(value[:, :, :cached]) for name, value in self._past.items()}
        logits, self._past = self._forward(input_ids, self._past, logits_to_keep)
        return logits

    def reset(self) -> None:
        self._past = self._layout.empty()


class SharedBufferPass:
    def __init__(self, session: ort.InferenceSession, layout: CacheLayout, max_length: int) -> None:
        self._session = session
        self._max_length = max_length
        self._binding = session.io_binding()
        # np.zeros maps untouched pages lazily: a buffer sized for the whole context costs only what is written.
        shape = (1, layout.kv_heads, max_length, layout.head_dim)  # (B, Hkv, max_len, D)
        self._buffers = [np.zeros(shape, dtype=layout.kv_dtype) for _ in layout.past_names]
        for past, present, buffer in zip(layout.past_names, layout.present_names, self._buffers, strict=True):
            value = ort.OrtValue.ortvalue_from_numpy(buffer)  # wraps the numpy memory, no copy
            self._binding.bind_ortvalue_input(past, value)
            self._binding.bind_ortvalue_output(present, value)
        self._mask = np.ones((1, max_length), dtype=np.int64)  # bound by pointer per step: [1, total], no copy
        self._vocab = layout.vocab_size
        self._logits_dtype = layout.logits_dtype
        # A decode step's input and output live in buffers bound once (DecodeBuffers): the step writes one id
        # into a [1, 1] array and rebinds nothing but the mask's length.
        self._step = DecodeBuffers(self._vocab, self._logits_dtype)
        self._step_bound = False
        self._keep: list[np.ndarray] = []  # arrays bound for the current run must outlive it
        self._layout = layout
        # logits_to_keep, when the graph has it: bound once by pointer, the value written before each run.
        self._logits_to_keep = np.ones(1, dtype=np.int64)  # [1]
        self._logits_to_keep_value = ort.OrtValue.ortvalue_from_numpy(self._logits_to_keep)  # no copy
        if layout.keeps_logits:
            self._binding.bind_ortvalue_input(io_spec.LOGITS_TO_KEEP, self._logits_to_keep_value)

    def run(self, input_ids: list[int], total_length: int) -> np.ndarray:
        last: np.ndarray = self._run(input_ids, total_length, 1)[-1]  # (1 or S, V) -> (V,)
        return last

    def run_all(self, input_ids: list[int], total_length: int) -> np.ndarray:
        """As run(), with the logits of every new position (S, V). Rolling back needs nothing here: GQA writes
        the new keys/values at positions total_length - len(input_ids) onwards, over whatever was there."""
        return self._run(input_ids, total_length, len(input_ids))

    def _run(self, input_ids: list[int], total_length: int, logits_to_keep: int) -> np.ndarray:
        """logits_to_keep >= 1 trailing positions wanted; returns (rows, V), rows = layout.logits_rows(...)."""
        if total_length > self._max_length:
            raise Phi3EdgeError(f"sequence of {total_length} tokens exceeds the {self._max_length}-token KV buffer")
        self._logits_to_keep[0] = logits_to_keep  # read by the graph only if bound (layout.keeps_logits)
        rows = self._layout.logits_rows(len(input_ids), logits_to_keep)
        logits = self._bind_step(input_ids[0]) if len(input_ids) == 1 else self._bind_prompt(input_ids, rows)
        # The mask is the first total_length ones of the preallocated row: bound by address, no OrtValue made.
        self._binding.bind_input(io_spec.ATTENTION_MASK, HOST_MEMORY, 0, np.int64, [1, total_length],
                                 self._mask.ctypes.data)  # (B=1, total)
        self._session.run_with_iobinding(self._binding)
        kept: np.ndarray = logits[0]  # (B, rows, V) -> (rows, V)
        return kept

    def _bind_step(self, token: int) -> np.ndarray:
        """One new token: its id into the bound [1, 1] buffer; ids and logits are (re)bound only after a prompt."""
        self._step.ids[0, 0] = token
        if not self._step_bound:
            self._binding.bind_ortvalue_input(io_spec.INPUT_IDS, self._step.ids_value)
            self._binding.bind_ortvalue_output(io_spec.LOGITS, self._step.logits_value)
            self._step_bound = True
        return self._step.logits

    def _bind_prompt(self, input_ids: list[int], rows: int) -> np.ndarray:
        """Several tokens (a prefill, a verify pass): fresh [1, S] ids and [1, rows, V] logits (rows: 1 for a
        prefill on a graph with logits_to_keep; S for a verify pass, or on a graph that computes every row)."""
        ids = np.asarray([input_ids], dtype=np.int64)  # (B=1, S)
        logits = np.empty((1, rows, self._vocab), dtype=self._logits_dtype)  # (B, rows, V)
        self._binding.bind_ortvalue_input(io_spec.INPUT_IDS, ort.OrtValue.ortvalue_from_numpy(ids))
        self._binding.bind_ortvalue_output(io_spec.LOGITS, ort.OrtValue.ortvalue_from_numpy(logits))
        self._keep = [ids, logits]
        self._step_bound = False
        return logits

    def reset(self) -> None:
        # Nothing to clear: attention_mask says how much of the buffer is valid, and a re-prefill rewrites
        # positions 0..total-1 of the same buffers.
        pass

    @property
    def buffers(self) -> list[np.ndarray]:
        """The KV buffers (past and present alike), key then value per layer; for tests and diagnostics."""
        return self._buffers


class DecodeBuffers:
    """The one-token step's input ids [1, 1] and logits [1, 1, V], each wrapped once in an OrtValue (no copy)."""

    def __init__(self, vocab: int, logits_dtype: type[np.floating[Any]]) -> None:
        self.ids = np.zeros((1, 1), dtype=np.int64)  # (B=1, S=1)
        self.logits = np.empty((1, 1, vocab), dtype=logits_dtype)  # (B=1, S=1, V)
        self.ids_value = ort.OrtValue.ortvalue_from_numpy(self.ids)
        self.logits_value = ort.OrtValue.ortvalue_from_numpy(self.logits)

"""The layer-streamed forward: the one place where per-layer activations of a Phi-3 model are produced.

A batch of token sequences goes through the decoder one layer at a time. Memory holds the sequences' hidden
states (tokens x hidden floats, twice: mlp output and residual stream) and one layer's weights, never the
model; the lm_head is applied in vocab chunks, and next-token statistics are accumulated chunk by chunk, so
a 200k vocabulary never exists as a (tokens, vocab) array either.

    ids ─► embed ─► [layer 0] ─► [layer 1] ─► ... ─► [layer L-1] ─► head chunk 0, 1, ... ─► KL / top-1 / NLL
                      ▲ one layer's weights in memory at a time; `hook` sees every Linear's input

Two sides implement the same small protocol (`LayeredModel`):
    CheckpointSide  the fp32 reference, straight from the checkpoint's safetensors (no fp32 artifact anywhere)
    ArtifactSide    a finished artifact folder, cut into one ORT session per layer

Why one-layer onnxruntime graphs and not numpy: the quantized side must give the artifact's own numbers, and
ORT's MatMulNBits at accuracy level 4 quantizes each activation block to int8 before the product, which a
numpy dequantize-and-matmul would not reproduce (the gate would then measure a model nobody ships). So the
quantized side runs the artifact's own nodes, and the reference runs the exporter's own blocks (attention,
mlp, norms, rotary caches) in ORT too: its GroupQueryAttention, rotary and sliding-window semantics are those
of the whole cpu-fp32 graph by construction, not by a second implementation.

Calibration (GPTQ, AWQ) consumes `reference_activations`: the fp32 reference's input to every Linear, layer by
layer, for the sequences given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from phi3_edge.reference.state import ActivationHook, State

TOKEN_BUDGET = 4096  # sequences are streamed in groups of at most this many tokens (hidden states are held)


class LayeredModel(Protocol):
    num_layers: int
    vocab_size: int

    def embed(self, ids: Sequence[int]) -> State: ...

    def run_layer(self, layer: int, states: Sequence[State], hook: ActivationHook | None = None) -> list[State]: ...

    def head_chunks(self, states: Sequence[State], vocab_chunk: int) -> Iterator[tuple[int, list[np.ndarray]]]: ...


@dataclass
class TokenStats:
    """Per-position streaming statistics of two next-token distributions (reference r, candidate c).

    Over vocab chunks, with running maxima m: z = sum exp(l - m), a = sum exp(lr - mr) (lr - lc). Then
        KL(r || c) = a / zr - (mr + log zr) + (mc + log zc)
    which is sum_v p_r (log p_r - log p_c) without ever holding a whole row. Float64 throughout.
    """

    mr: np.ndarray
    zr: np.ndarray
    a: np.ndarray
    mc: np.ndarray
    zc: np.ndarray
    best_r: np.ndarray  # (logit, id) running argmax of each side
    arg_r: np.ndarray
    best_c: np.ndarray
    arg_c: np.ndarray
    target_r: np.ndarray  # logit of the target token (NaN until its chunk is seen; NLL only)
    target_c: np.ndarray

    @classmethod
    def empty(cls, positions: int) -> TokenStats:
        def full(value: float) -> np.ndarray:
            return np.full(positions, value, dtype=np.float64)
        return cls(full(-np.inf), full(0.0), full(0.0), full(-np.inf), full(0.0), full(-np.inf),
                   np.zeros(positions, np.int64), full(-np.inf), np.zeros(positions, np.int64), full(np.nan),
                   full(np.nan))

    def update(self, start: int, ref: np.ndarray, cand: np.ndarray, targets: np.ndarray) -> None:
        lr, lc = ref.astype(np.float64), cand.astype(np.float64)  # (P, chunk)
        new_mr = np.maximum(self.mr, lr.max(axis=-1))
        scale = np.exp(self.mr - new_mr)
        weights = np.exp(lr - new_mr[:, None])
        self.zr = self.zr * scale + weights.sum(axis=-1)
        self.a = self.a * scale + (weights * (lr - lc)).sum(axis=-1)
        self.mr = new_mr
        new_mc = np.maximum(self.mc, lc.max(axis=-1))
        self.zc = self.zc * np.exp(self.mc - new_mc) + np.exp(lc - new_mc[:, None]).sum(axis=-1)
        self.mc = new_mc
        for logits, best, arg in ((lr, self.best_r, self.arg_r), (lc, self.best_c, self.arg_c)):
            top = logits.argmax(axis=-1)
            value = logits[np.arange(len(top)), top]
            better = value > best  # ties keep the earlier id, as argmax over a whole row does
            best[better], arg[better] = value[better], top[better] + start
        inside = (targets >= start) & (targets < start + lr.shape[1])
        rows = np.nonzero(inside)[0]
        self.target_r[rows] = lr[rows, targets[rows] - start]
        self.target_c[rows] = lc[rows, targets[rows] - start]

    def kl(self) -> np.ndarray:
        out: np.ndarray = self.a / self.zr - (self.mr + np.log(self.zr)) + (self.mc + np.log(self.zc))
        return out

    def nll(self) -> tuple[np.ndarray, np.ndarray]:
        """-log p(target) of each side (NaN where a position has no target)."""
        return self.mr + np.log(self.zr) - self.target_r, self.mc + np.log(self.zc) - self.target_c


def groups(sequences: Sequence[Sequence[int]], budget: int = TOKEN_BUDGET) -> list[list[int]]:
    """Indices of sequences, grouped in order so that each group holds at most `budget` tokens (or one)."""
    out: list[list[int]] = []
    count = budget + 1
    for index, ids in enumerate(sequences):
        if count + len(ids) > budget:
            out.append([])
            count = 0
        out[-1].append(index)
        count += len(ids)
    return out


def final_states(model: LayeredModel, sequences: Sequence[Sequence[int]],
                 hook: ActivationHook | None = None) -> list[State]:
    """Every sequence through every layer (one group: callers bound it with `groups`)."""
    states = [model.embed(ids) for ids in sequences]
    for layer in range(model.num_layers):
        states = model.run_layer(layer, states, hook)
    return states


def logits(model: LayeredModel, sequences: Sequence[Sequence[int]], vocab_chunk: int = 4096) -> list[np.ndarray]:
    """Full (S, V) float32 logits of each sequence: for tests and small vocabularies."""
    parts: list[list[np.ndarray]] = [[] for _ in sequences]
    for _, chunk in model.head_chunks(final_states(model, sequences), vocab_chunk):
        for held, piece in zip(parts, chunk, strict=True):
            held.append(piece)
    return [np.concatenate(held, axis=-1) for held in parts]


def reference_activations(model: LayeredModel, sequences: Sequence[Sequence[int]], hook: ActivationHook) -> None:
    """Calls `hook(layer, sequence, weight name, x)` with the input x (S, in) of every Linear, layer by layer."""
    for group in groups(sequences):
        def relay(layer: int, index: int, name: str, x: np.ndarray, group: list[int] = group) -> None:
            hook(layer, group[index], name, x)
        final_states(model, [sequences[i] for i in group], relay)


def compare(ref: LayeredModel, cand: LayeredModel, sequences: Sequence[Sequence[int]], vocab_chunk: int,
            with_targets: bool = False, on_layer: Callable[[int, int], None] | None = None) -> list[TokenStats]:
    """TokenStats of each sequence (targets: the next token at each position, the last has none).
    on_layer(done, total) after each layer of each group: the gate's progress bar."""
    if ref.vocab_size != cand.vocab_size:
        raise ValueError(f"vocabularies differ: {ref.vocab_size} and {cand.vocab_size}")
    stats: list[TokenStats] = []
    for group in groups(sequences):
        chosen = [sequences[i] for i in group]
        ref_states = [ref.embed(ids) for ids in chosen]
        cand_states = [cand.embed(ids) for ids in chosen]
        for layer in range(ref.num_layers):  # in step: one layer of each side in memory, one after the other
            ref_states = ref.run_layer(layer, ref_states)
            cand_states = cand.run_layer(layer, cand_states)
            if on_layer is not None:
                on_layer(layer + 1, ref.num_layers)
        group_stats = [TokenStats.empty(len(ids)) for ids in chosen]
        targets = [_targets(ids, with_targets) for ids in chosen]
        for (start, ref_chunk), (cand_start, cand_chunk) in zip(ref.head_chunks(ref_states, vocab_chunk),
                                                                cand.head_chunks(cand_states, vocab_chunk),
                                                                strict=True):
            assert start == cand_start
            for held, r, c, t in zip(group_stats, ref_chunk, cand_chunk, targets, strict=True):
                held.update(start, r, c, t)
        stats.extend(group_stats)
    return stats


def _targets(ids: Sequence[int], with_targets: bool) -> np.ndarray:
    out = np.full(len(ids), -1, dtype=np.int64)
    if with_targets:
        out[:-1] = np.asarray(ids[1:], dtype=np.int64)
    return out

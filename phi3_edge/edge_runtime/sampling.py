"""Choosing the next token from logits: greedy, or sampling with temperature / top-k / top-p, plus a
repetition penalty. Semantics follow transformers' logits processors (the reference users compare against):

  repetition penalty  every id already in the sequence (prompt included): logit / p if > 0, else logit * p
  temperature         logits / t; t == 0 means greedy (argmax), as onnxruntime-genai's do_sample=False
  top-k               keep the k largest logits (0 = off); top_k=1 is greedy whatever the temperature
  top-p               keep the smallest set of most likely ids whose probability reaches p (always >= 1 id)

Randomness comes from one numpy Generator per generation seeded with `seed`, so a seed reproduces a sample
exactly, and concurrent generations never share random state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from phi3_edge.errors import Phi3EdgeError


@dataclass(frozen=True)
class SamplingOptions:
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("temperature", "top_p", "repetition_penalty"):  # NaN passes every comparison below
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise Phi3EdgeError(f"{name} must be a finite number, got {value!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int):
            raise Phi3EdgeError(f"top_k must be an integer, got {self.top_k!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed < 2**64):
            raise Phi3EdgeError(f"seed must be an integer in [0, 2**64), got {self.seed!r}")
        if self.temperature < 0:
            raise Phi3EdgeError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise Phi3EdgeError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise Phi3EdgeError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise Phi3EdgeError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


class Sampler:
    """Per-generation state: the random stream and which ids the sequence already holds."""

    def __init__(self, options: SamplingOptions, vocab_size: int, prompt_ids: list[int]) -> None:
        self.options = options
        self._rng = np.random.default_rng(options.seed)
        self._penalize = options.repetition_penalty != 1.0
        self._seen = np.zeros(vocab_size, dtype=bool)
        if self._penalize:
            self._seen[np.asarray(prompt_ids, dtype=np.int64)] = True

    def choose(self, logits: np.ndarray) -> int:
        """The next id from one position's logits [V] (not modified: it may be the runtime's buffer)."""
        if self._penalize:
            logits = self._apply_penalty(logits)
        if self.options.greedy:
            token = int(np.argmax(logits))
        else:
            token = self._sample(logits)
        if self._penalize:
            self._seen[token] = True
        return token

    def _apply_penalty(self, logits: np.ndarray) -> np.ndarray:
        logits = logits.astype(np.float32)  # a copy
        seen = logits[self._seen]
        penalty = self.options.repetition_penalty
        logits[self._seen] = np.where(seen > 0, seen / penalty, seen * penalty)
        return logits

    def _sample(self, logits: np.ndarray) -> int:
        order, probs = self.distribution(logits)
        index = int(np.searchsorted(np.cumsum(probs), self._rng.random(), side="right"))
        return int(order[min(index, len(order) - 1)])  # min(): cumsum may end a hair below 1.0

    def distribution(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids, probabilities) that sampling draws from after temperature, top-k and top-p (no penalty)."""
        scaled = logits.astype(np.float64) / self.options.temperature
        order = self._candidates(scaled)
        probs = np.exp(scaled[order] - scaled[order].max())
        probs /= probs.sum()
        if self.options.top_p < 1.0:
            # Keep ids while the probability before them is < top_p: the smallest set reaching top_p.
            before = np.cumsum(probs) - probs
            keep = max(1, int(np.count_nonzero(before < self.options.top_p)))
            order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
        return order, probs

    def _candidates(self, scaled: np.ndarray) -> np.ndarray:
        """Ids still in play after top-k, most likely first when top-p needs the order (else vocab order)."""
        vocab, top_k = scaled.shape[0], self.options.top_k
        if 0 < top_k < vocab:
            candidates = np.argpartition(scaled, -top_k)[-top_k:]  # the k largest, unordered
        elif self.options.top_p < 1.0:
            candidates = np.arange(vocab)
        else:
            return np.arange(vocab)  # plain temperature sampling: no sort needed
        return candidates[np.argsort(-scaled[candidates], kind="stable")]

"""Prompt-lookup (n-gram) speculative decoding: guess the next tokens from the text so far, check them all in one
forward pass, keep the prefix the model agrees with.

Editing, summarising and code completion copy long runs of the prompt. When the last n tokens (n = 4, 3, 2)
also occur earlier in the sequence, the tokens that followed that earlier occurrence are a free draft:

    sequence   ... a b c d e ... x  a b c            suffix "a b c" occurred before, followed by "d e ..."
    verify     run [c d e f ...] (k+1 tokens) at positions t .. t+k, logits at every position
    accept     choose a token from each position's logits in order; stop at the first that differs from the
               draft. The tokens chosen are exactly those plain decoding would choose: each comes from the
               logits of the same prefix, through the same Sampler (one random draw per emitted token), so
               greedy output is identical and a seeded sample is the same sample
    roll back  the rejected drafts' keys/values stay in the KV buffer past the valid length; the next run's
               total_length (the attention_mask length) excludes them and its new tokens overwrite them

Decode on a CPU is bound by reading the weights: verifying k+1 tokens costs little more than one while k is
small, so each accepted draft token is nearly free. A step with no match is a plain one-token step, so a
generation that never repeats itself pays nothing but the index upkeep.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

DEFAULT_DRAFT_TOKENS = 8  # the most tokens one verify pass checks beyond the one it must compute anyway
NGRAM_MAX = 4
NGRAM_MIN = 2  # a 1-token suffix matches almost everywhere: its drafts are mostly rejected


class VerifyPass(Protocol):
    def run_all(self, input_ids: list[int], total_length: int) -> np.ndarray:
        """Feed new tokens after the first total_length - len(input_ids) cached ones (anything cached beyond
        that is dropped); returns the logits at every new position (S, V)."""


class Chooser(Protocol):
    def choose(self, logits: np.ndarray) -> int: ...


class NgramIndex:
    """For every n-gram (NGRAM_MIN <= n <= NGRAM_MAX) of the sequence, where its latest occurrence ended.

    An n-gram is registered only once a token follows it, so the current suffix never finds itself; the
    most recent earlier occurrence wins (in an edit, the nearest copy is the likeliest to continue).
    Appending is O(NGRAM_MAX) dict updates; a lookup is at most NGRAM_MAX dict reads.
    """

    def __init__(self, tokens: list[int] | None = None, *, max_n: int = NGRAM_MAX, min_n: int = NGRAM_MIN) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError(f"need 1 <= min_n <= max_n, got {min_n} and {max_n}")
        self.tokens: list[int] = []
        self._max_n, self._min_n = max_n, min_n
        self._last_end: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in range(min_n, max_n + 1)}
        self.extend(tokens or [])

    def extend(self, tokens: list[int]) -> None:
        for token in tokens:
            end = len(self.tokens) - 1  # the n-grams ending here now have a continuation: `token`
            for n, table in self._last_end.items():
                if end + 1 >= n:
                    table[tuple(self.tokens[end + 1 - n:end + 1])] = end
            self.tokens.append(token)

    def draft(self, limit: int) -> list[int]:
        """Up to `limit` tokens that followed the latest earlier occurrence of the longest matching suffix."""
        if limit <= 0:
            return []
        for n in range(min(self._max_n, len(self.tokens)), self._min_n - 1, -1):
            end = self._last_end[n].get(tuple(self.tokens[-n:]))
            if end is not None:
                return self.tokens[end + 1:end + 1 + limit]
        return []


@dataclass
class LookupStats:
    """How much drafting paid: verify passes run, draft tokens checked and accepted."""

    passes: int = 0
    drafted: int = 0
    accepted: int = 0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


@dataclass
class Speculator:
    """One generation's drafting state: the n-gram index over prompt + generated tokens, and its stats."""

    index: NgramIndex
    draft_tokens: int = DEFAULT_DRAFT_TOKENS
    stats: LookupStats = field(default_factory=LookupStats)

    @classmethod
    def for_prompt(cls, prompt_ids: list[int], draft_tokens: int = DEFAULT_DRAFT_TOKENS) -> Speculator:
        return cls(NgramIndex(list(prompt_ids)), draft_tokens)

    def observe(self, token: int) -> None:
        """A token chosen outside step() (the prefill's): the index must end with the last token chosen."""
        self.index.extend([token])

    def step(self, forward: VerifyPass, chooser: Chooser, last_token: int, cached: int, room: int) -> list[int]:
        """Tokens after `last_token` (already chosen, not yet fed): 1 + however many drafts the model agrees with.

        cached: tokens whose keys/values are valid in the pass (the sequence minus last_token). room: the most
        tokens this step may emit (what is left of max_new_tokens and of the KV buffer); the verify pass
        feeds at most `room` tokens, so it never writes past the buffer.
        """
        draft = self.index.draft(min(self.draft_tokens, room - 1))
        ids = [last_token, *draft]
        logits = forward.run_all(ids, cached + len(ids))  # (S, V)
        chosen: list[int] = []
        for row, expected in zip(logits, [*draft, None], strict=True):
            token = chooser.choose(row)
            chosen.append(token)
            if token != expected:
                break  # rows after a rejected draft were conditioned on the wrong token
        if draft:
            self.stats.passes += 1
            self.stats.drafted += len(draft)
            self.stats.accepted += len(chosen) - 1
        self.index.extend(chosen)
        return chosen

"""How far an artifact's next-token distributions are from a reference artifact's.

    kl      mean over positions of KL(reference || artifact), in nats, over the built-in prompts
    top1    fraction of those positions where both pick the same most likely token
    ppl     perplexity of each model on a user text (optional), in windows of at most `window` tokens

Both models see the same token ids (the artifact's tokenizer, which must equal the reference's). The
reference runs first and only its log-probabilities are kept, so the two sessions never coexist in memory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from phi3_edge.errors import Phi3EdgeError
from phi3_edge.evaluate.forward import ArtifactModel
from phi3_edge.evaluate.texts import PROMPTS

DEFAULT_WINDOW = 512  # perplexity window: long enough for context, short enough for a laptop's memory


@dataclass(frozen=True)
class FidelityReport:
    kl: float
    top1: float
    prompts: int
    positions: int
    ppl: float | None = None
    ref_ppl: float | None = None
    text_tokens: int | None = None  # tokens whose probability the perplexity averages

    def to_json(self) -> dict[str, Any]:
        return {"kl": self.kl, "top1": self.top1, "ppl": self.ppl, "ref_ppl": self.ref_ppl,
                "prompts": self.prompts, "positions": self.positions, "text_tokens": self.text_tokens}


def kl_per_position(ref_logp: np.ndarray, logp: np.ndarray) -> np.ndarray:
    """KL(P_ref || P) for each row of two (S, V) log-probability arrays."""
    kl: np.ndarray = (np.exp(ref_logp) * (ref_logp - logp)).sum(axis=-1)  # (S, V) -> (S,)
    return kl


def windows(ids: Sequence[int], window: int) -> list[list[int]]:
    """Chunks that overlap by one token, so every token after the first is predicted exactly once."""
    if window < 2:
        raise ValueError("a perplexity window needs at least 2 tokens")
    return [list(ids[start:start + window]) for start in range(0, max(len(ids) - 1, 1), window - 1)]


def negative_log_likelihood(model: ArtifactModel, ids: Sequence[int], window: int) -> tuple[float, int]:
    """Summed -log p(token | preceding tokens of its window) and the number of tokens predicted."""
    total, count = 0.0, 0
    for chunk in windows(ids, window):
        if len(chunk) < 2:
            continue
        logp = model.log_probs(chunk)  # (S, V)
        targets = np.asarray(chunk[1:])
        total -= float(logp[np.arange(len(targets)), targets].sum())
        count += len(targets)
    return total, count


def compare_artifacts(artifact: str | Path, reference: str | Path, *, text: str | None = None,
                      prompts: Sequence[str] = PROMPTS, window: int = DEFAULT_WINDOW,
                      verify_artifact: bool = True) -> FidelityReport:
    """KL / top-1 of `artifact` against `reference` on `prompts`, and both perplexities on `text`.

    verify_artifact=False skips hashing `artifact` against its manifest (the accuracy gate measures a staging
    folder before its manifest is written); the content checks still run."""
    candidate, ref = ArtifactModel(artifact, verify=verify_artifact), ArtifactModel(reference)
    _check_same_vocab(candidate, ref)
    context = min(candidate.config.context_length, ref.config.context_length)
    prompt_ids = [ids[:context] for ids in (candidate.encode(p) for p in prompts) if ids]
    if not prompt_ids:
        raise Phi3EdgeError("no evaluation prompt produced any token")
    text_ids = _text_ids(candidate, text)
    window = min(window, context)

    with ref:  # reference first; only its log-probabilities outlive its session
        ref_logps = [ref.log_probs(ids) for ids in prompt_ids]
        ref_nll = negative_log_likelihood(ref, text_ids, window) if text_ids else None
    with candidate:
        kls, agree = [], []
        for ids, ref_logp in zip(prompt_ids, ref_logps, strict=True):
            logp = candidate.log_probs(ids)
            kls.append(kl_per_position(ref_logp, logp))
            agree.append(ref_logp.argmax(axis=-1) == logp.argmax(axis=-1))
        nll = negative_log_likelihood(candidate, text_ids, window) if text_ids else None

    return FidelityReport(
        kl=float(np.concatenate(kls).mean()), top1=float(np.concatenate(agree).mean()),
        prompts=len(prompt_ids), positions=sum(len(ids) for ids in prompt_ids),
        ppl=_ppl(nll), ref_ppl=_ppl(ref_nll), text_tokens=nll[1] if nll else None,
    )


def _text_ids(model: ArtifactModel, text: str | None) -> list[int] | None:
    if text is None:
        return None
    ids = model.encode(text)
    if len(ids) < 2:
        raise Phi3EdgeError(f"the perplexity text has {len(ids)} token(s); it needs at least 2")
    return ids


def _ppl(nll: tuple[float, int] | None) -> float | None:
    return None if nll is None else math.exp(nll[0] / nll[1])


def _check_same_vocab(candidate: ArtifactModel, ref: ArtifactModel) -> None:
    """Same logits width and the same tokenizer vocabulary, or the per-token comparison means nothing."""
    sizes = candidate.config.vocab_size, ref.config.vocab_size
    if sizes[0] != sizes[1]:
        raise Phi3EdgeError(f"vocabularies differ: {candidate.folder} has {sizes[0]} logits, "
                            f"the reference {ref.folder} has {sizes[1]}")
    if candidate.tokenizer.vocab() != ref.tokenizer.vocab():
        raise Phi3EdgeError(f"vocabularies differ: {candidate.folder} and the reference {ref.folder} have "
                            "different tokenizer.json vocabularies")

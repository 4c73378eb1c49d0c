"""Full-sequence forwards of an artifact's decoder: log-probabilities at every position of a token sequence.

KL and perplexity need the next-token distribution at each position, not just the last one, so this does
not go through the runtime's step-by-step generation loop: DecoderSession.forward over the whole sequence
with an empty past gives logits [S, V] for every position at once. The session is the runtime's own
(phi3_edge.edge_runtime.session): evaluation measures exactly what a device runs.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import numpy as np

from phi3_edge.edge_runtime.decoder_config import DecoderConfig, read_decoder_config
from phi3_edge.edge_runtime.session import DecoderSession
from phi3_edge.edge_runtime.tokenizer import EdgeTokenizer
from phi3_edge.errors import ArtifactError
from phi3_edge.integrity import check_before_load


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64: fp16 logits are cast first, so rounding there does not enter KL."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    result: np.ndarray = x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return result


class ArtifactModel:
    """One artifact folder: its config and tokenizer now (cheap), its DecoderSession only inside `with`.

    The session is opened late and closed early so that two large artifacts never sit in memory together:
    the caller runs the reference, keeps its log-probabilities, closes it, then opens the candidate.
    """

    def __init__(self, folder: str | Path, *, intra_op_threads: int | None = None, verify: bool = True) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ArtifactError("is not a folder", self.folder)
        # Hashes (verify=False: the accuracy gate's own staging folder, before its manifest exists) and content
        # checks, as `run` does: eval must not measure a graph from outside the folder.
        self._guard = check_before_load(self.folder, verify=verify)
        self.config: DecoderConfig = read_decoder_config(self.folder)
        self.tokenizer = EdgeTokenizer.load(self.folder)
        self._threads = intra_op_threads
        self._session: DecoderSession | None = None

    def encode(self, text: str) -> list[int]:
        # add_special_tokens: the tokenizer's own post-processor decides BOS, as in the runtime's encode().
        return self.tokenizer.encode(text, add_special_tokens=True)

    def __enter__(self) -> ArtifactModel:
        # "concat": one forward per sequence, no generation, so no shared KV buffer (and no op census) is needed.
        self._session = DecoderSession(self.folder, self.config, intra_op_threads=self._threads, kv_cache="concat")
        self._guard.confirm()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._session = None  # drops the only reference: ORT frees the weights now, not at interpreter exit

    def log_probs(self, ids: list[int]) -> np.ndarray:
        """log p(next token | ids[: i + 1]) for every position i: float64 (S, V)."""
        if self._session is None:
            raise RuntimeError("open the model with `with ArtifactModel(...) as model:` first")
        logits, _ = self._session.forward(ids)  # (S, V), empty past
        return log_softmax(logits)

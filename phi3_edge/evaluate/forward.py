"""Full-sequence forwards of an artifact's decoder: log-probabilities at every position of a token sequence.

KL and perplexity need the next-token distribution at each position, not just the last one, so this does
not go through the runtime's step-by-step generation loop: one forward over the whole sequence with an empty
past gives logits [1, S, V] for every position at once (the I/O contract of phi3_edge.io_spec).
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from phi3_edge import io_spec
from phi3_edge.edge_runtime.session import DecoderConfig, read_decoder_config, session_options
from phi3_edge.errors import ArtifactError

TOKENIZER_NAME = "tokenizer.json"
# KV-cache element types our targets use; the empty past must be fed in the graph's own dtype.
_FLOAT_TYPES: dict[str, type[np.floating]] = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64: fp16 logits are cast first, so rounding there does not enter KL."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


class ArtifactModel:
    """One artifact folder: its config and tokenizer now (cheap), its ORT session only inside `with`.

    The session is opened late and closed early so that two large artifacts never sit in memory together:
    the caller runs the reference, keeps its log-probabilities, closes it, then opens the candidate.
    """

    def __init__(self, folder: str | Path, *, intra_op_threads: int | None = None) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ArtifactError("is not a folder", self.folder)
        self.config: DecoderConfig = read_decoder_config(self.folder)
        self.tokenizer = _load_tokenizer(self.folder)
        self._threads = intra_op_threads
        self._session: ort.InferenceSession | None = None
        self._past_dtype: type[np.floating] = np.float32

    def encode(self, text: str) -> list[int]:
        # add_special_tokens: the tokenizer's own post-processor decides BOS, as in the runtime's encode().
        return self.tokenizer.encode(text, add_special_tokens=True).ids

    def __enter__(self) -> ArtifactModel:
        path = self.folder / self.config.model_file
        if not path.is_file():
            raise ArtifactError("not found (the decoder graph genai_config.json names)", path)
        try:
            self._session = ort.InferenceSession(str(path), sess_options=session_options(self._threads),
                                                 providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own pybind types for a bad file
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ArtifactError(f"onnxruntime cannot load it: {first}", path) from exc
        kv_type = {i.name: i.type for i in self._session.get_inputs()}.get(io_spec.past_key(0))
        if kv_type not in _FLOAT_TYPES:
            raise ArtifactError(f"unsupported or missing KV-cache input type {kv_type}", path)
        self._past_dtype = _FLOAT_TYPES[kv_type]
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._session = None  # drops the only reference: ORT frees the weights now, not at interpreter exit

    def log_probs(self, ids: list[int]) -> np.ndarray:
        """log p(next token | ids[: i + 1]) for every position i: float64 (S, V)."""
        if self._session is None:
            raise RuntimeError("open the model with `with ArtifactModel(...) as model:` first")
        config = self.config
        empty = np.zeros((1, config.kv_heads, 0, config.head_dim), dtype=self._past_dtype)  # (B, Hkv, 0, D)
        feeds: dict[str, np.ndarray] = {
            io_spec.INPUT_IDS: np.asarray([ids], dtype=np.int64),  # (B=1, S)
            io_spec.ATTENTION_MASK: np.ones((1, len(ids)), dtype=np.int64),  # no padding in a batch of one
        }
        for layer in range(config.num_layers):
            feeds[io_spec.past_key(layer)] = empty
            feeds[io_spec.past_value(layer)] = empty
        (logits,) = self._session.run([io_spec.LOGITS], feeds)  # (1, S, V)
        return log_softmax(logits[0])


def _load_tokenizer(folder: Path) -> Tokenizer:
    path = folder / TOKENIZER_NAME
    if not path.is_file():
        raise ArtifactError("not found (evaluation tokenizes its prompts with it)", path)
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for malformed files
        raise ArtifactError(f"cannot be loaded by tokenizers ({str(exc).splitlines()[0]})", path) from exc

"""DecoderSession: an artifact's decoder graph as an onnxruntime session, the one runtime core.

    forward(ids, past)   logits at every position [S, V] and the next past: evaluation (KL, perplexity)
                         and the concat KV path use it (keep=k: the last k positions only, when the graph
                         has the optional logits_to_keep input)
    start(max_length)    a per-generation ForwardPass (kv_pass.py) for the step-by-step generation loop

The shapes come from genai_config.json (decoder_config.py), the KV-cache dtype from the session's own input
types: a cpu target's cache is float32, a GPU target's float16, and the runtime must not need the target table
to know which. Whether the graph has logits_to_keep comes from the session too: onnxruntime lists an input
backed by an initializer among the overridable initializers, not the inputs, so a folder exported before the
input existed simply lacks it and is run computing every position's logits, as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from phi3_edge import io_spec
from phi3_edge.artifact_contract import GENAI_CONFIG_FILE, ORT_FLOAT_TYPES
from phi3_edge.edge_runtime.census import read_graph_info
from phi3_edge.edge_runtime.decoder_config import DecoderConfig
from phi3_edge.edge_runtime.kv_pass import CacheLayout, ConcatPass, ForwardPass, KVCache, SharedBufferPass
from phi3_edge.edge_runtime.providers import CPU_PROVIDER
from phi3_edge.edge_runtime.threads import DEFAULT_TUNING, SessionTuning, session_options
from phi3_edge.errors import ArtifactError, Phi3EdgeError

KV_CACHE_MODES = ("auto", "shared", "concat")


class DecoderSession:
    """One decoder graph on the CPU EP, fed and read through the names in io_spec.

    Thread-safe: the InferenceSession is shared (its run() may be called concurrently); everything that
    changes during a generation lives in the ForwardPass that start() returns, one per generation.
    kv_cache: "shared" binds past and present to one preallocated buffer (GroupQueryAttention graphs only),
    "concat" feeds each step's present back as numpy arrays, "auto" picks "shared" when the graph allows it.
    """

    backend = "ort"

    def __init__(self, folder: Path, config: DecoderConfig, *, intra_op_threads: int | None = None,
                 kv_cache: str = "auto", providers: tuple[str, ...] = (CPU_PROVIDER,),
                 tuning: SessionTuning = DEFAULT_TUNING) -> None:
        model_path = Path(folder) / config.model_file
        if not model_path.is_file():
            raise ArtifactError(f"not found (the decoder graph {GENAI_CONFIG_FILE} names)", model_path)
        if kv_cache not in KV_CACHE_MODES:
            raise Phi3EdgeError(f"unknown kv_cache mode {kv_cache!r}; valid: {', '.join(KV_CACHE_MODES)}")
        self._session = _open(model_path, session_options(intra_op_threads, tuning), providers)
        self.config = config
        layers = range(config.num_layers)
        past = tuple(name for i in layers for name in (io_spec.past_key(i), io_spec.past_value(i)))
        present = tuple(name for i in layers for name in (io_spec.present_key(i), io_spec.present_value(i)))
        logits_type = {node.name: node.type for node in self._session.get_outputs()}.get(io_spec.LOGITS)
        self.layout = CacheLayout(past, present, config.kv_heads, config.head_dim, config.vocab_size,
                                  kv_dtype=self._check_inputs(past, model_path),
                                  logits_dtype=ORT_FLOAT_TYPES.get(str(logits_type), np.float32),
                                  keeps_logits=_has_logits_to_keep(self._session))
        self._output_names = [io_spec.LOGITS, *present]
        self.kv_cache = _resolve_kv_mode(kv_cache, model_path)

    @property
    def ort_session(self) -> ort.InferenceSession:
        return self._session

    def start(self, max_length: int) -> ForwardPass:
        """A fresh per-generation pass whose sequence (prompt + new tokens) never exceeds max_length."""
        if self.kv_cache == "shared":
            return SharedBufferPass(self._session, self.layout, max_length)
        return ConcatPass(self.forward, self.layout)

    def empty_cache(self) -> KVCache:
        """Zero-length past tensors [1, kv_heads, 0, head_dim]: the prefill step's past."""
        return self.layout.empty()

    def forward(self, input_ids: list[int], past: KVCache | None = None,
                keep: int = io_spec.KEEP_ALL_LOGITS) -> tuple[np.ndarray, KVCache]:
        """Run new tokens after `past` (None: an empty one); returns the logits at every new position [S, V]
        in the graph's dtype and the next past (this step's present tensors). keep > 0: only the last
        min(keep, S) positions' logits where the graph has logits_to_keep (layout.keeps_logits); a graph without
        it still returns all S, so callers that want the last row read [-1] either way."""
        past = self.layout.empty() if past is None else past
        total = past[self.layout.past_names[0]].shape[2] + len(input_ids)  # (B, Hkv, past, D): cached + new
        feeds: dict[str, np.ndarray] = {
            io_spec.INPUT_IDS: np.asarray([input_ids], dtype=np.int64),  # (B=1, S)
            # No padding in a batch of one: the mask is all ones over past + new tokens.
            io_spec.ATTENTION_MASK: np.ones((1, total), dtype=np.int64),  # (B=1, total)
            **past,
        }
        if keep != io_spec.KEEP_ALL_LOGITS and self.layout.keeps_logits:
            feeds[io_spec.LOGITS_TO_KEEP] = np.asarray([keep], dtype=np.int64)  # [1]
        outputs = self._session.run(self._output_names, feeds)
        # present.{i} of this step is past_key_values.{i} of the next one (same order, see CacheLayout).
        logits: np.ndarray = outputs[0][0]  # (B, kept, V) -> (kept, V)
        return logits, dict(zip(self.layout.past_names, outputs[1:], strict=True))

    def _check_inputs(self, past_names: tuple[str, ...], model_path: Path) -> type[np.floating[Any]]:
        """Every graph input must be one we feed; returns the KV-cache dtype."""
        inputs = {node.name: node.type for node in self._session.get_inputs()}
        expected = [io_spec.INPUT_IDS, io_spec.ATTENTION_MASK, *past_names]
        missing = [name for name in expected if name not in inputs]
        unknown = [name for name in inputs if name not in expected]
        if missing or unknown:
            detail = f"missing inputs {missing}" if missing else f"unexpected inputs {unknown}"
            raise ArtifactError(f"graph does not match {GENAI_CONFIG_FILE}: {detail}", model_path)
        kv_type = inputs[io_spec.past_key(0)]
        if kv_type not in ORT_FLOAT_TYPES:
            raise ArtifactError(f"unsupported KV-cache type {kv_type}", model_path)
        return ORT_FLOAT_TYPES[kv_type]


def _has_logits_to_keep(session: ort.InferenceSession) -> bool:
    """The optional logits_to_keep input (io_spec.optional_inputs): an initializer-backed input."""
    return any(node.name == io_spec.LOGITS_TO_KEEP for node in session.get_overridable_initializers())


def _open(model_path: Path, options: ort.SessionOptions, providers: tuple[str, ...]) -> ort.InferenceSession:
    """providers: what providers.choose_providers picked for this artifact on this machine."""
    try:
        return ort.InferenceSession(str(model_path), sess_options=options, providers=list(providers))
    except Exception as exc:  # ORT raises its own pybind types (Fail, InvalidGraph, ...) for a bad file
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArtifactError(f"onnxruntime cannot load it: {first_line}", model_path) from exc


def _resolve_kv_mode(mode: str, model_path: Path) -> str:
    """"auto" -> "shared" when every attention is GroupQueryAttention, read once from the op census.

    Only GQA writes the new keys into a past buffer it shares with present (ORT detects the shared pointer);
    a graph with plain Attention / MultiHeadAttention, or one we cannot parse (an ORT-format file), would
    read a max-length past as max-length context, so it keeps the concat path.
    """
    if mode != "auto":
        return mode
    try:
        info = read_graph_info(model_path)
    except ArtifactError:
        return "concat"
    other_attention = [op for op in info.ops if op.endswith("Attention") and not op.endswith("GroupQueryAttention")]
    return "shared" if info.has_gqa and not other_attention else "concat"

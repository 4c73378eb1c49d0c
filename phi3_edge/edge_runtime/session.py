"""Open an artifact folder's decoder as an onnxruntime session and run one forward step.

The shapes come from genai_config.json (the file onnxruntime-genai reads too), the KV-cache dtype from the
session's own input types: a cpu target's cache is float32, a GPU target's float16, and the runtime must not
need the target table to know which.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from phi3_edge import io_spec
from phi3_edge.edge_runtime.census import read_graph_info
from phi3_edge.edge_runtime.kv_pass import ConcatPass, ForwardPass, SharedBufferPass
from phi3_edge.errors import ArtifactError, Phi3EdgeError
from phi3_edge.manifest import MANIFEST_NAME

GENAI_CONFIG_NAME = "genai_config.json"
DEFAULT_MODEL_FILE = "model.onnx"
# ORT reports element types as strings; only these can be KV-cache dtypes of our targets.
_ORT_FLOAT_TYPES: dict[str, type[np.floating]] = {"tensor(float)": np.float32, "tensor(float16)": np.float16}

KVCache = dict[str, np.ndarray]
KV_CACHE_MODES = ("auto", "shared", "concat")


@dataclass(frozen=True)
class DecoderConfig:
    """What the generation loop needs from genai_config.json."""

    model_file: str
    num_layers: int
    kv_heads: int
    head_dim: int
    context_length: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    # LongRoPE: the length past which the long factors apply (None for plain RoPE). Read from manifest.json,
    # since genai_config.json has no field for it and onnxruntime-genai rejects unknown keys.
    rope_switch_length: int | None = None


def read_decoder_config(folder: Path) -> DecoderConfig:
    """Parse genai_config.json; any missing or malformed field is one ArtifactError naming the file."""
    path = Path(folder) / GENAI_CONFIG_NAME
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError("genai_config.json not found (not an exported artifact folder?)", folder) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"not valid JSON ({exc})", path) from None
    model = raw.get("model") if isinstance(raw, dict) else None
    decoder = model.get("decoder") if isinstance(model, dict) else None
    if not isinstance(decoder, dict):
        raise ArtifactError("missing the model.decoder section", path)
    return DecoderConfig(
        model_file=str(decoder.get("filename", DEFAULT_MODEL_FILE)),
        num_layers=_positive(decoder, "num_hidden_layers", path),
        kv_heads=_positive(decoder, "num_key_value_heads", path),
        head_dim=_positive(decoder, "head_size", path),
        context_length=_positive(model, "context_length", path),
        vocab_size=_positive(model, "vocab_size", path),
        eos_token_ids=_eos_ids(model.get("eos_token_id"), path),
        rope_switch_length=_rope_switch_length(Path(folder)),
    )


def _rope_switch_length(folder: Path) -> int | None:
    """original_max_position_embeddings of a LongRoPE model, from the manifest's normalized config."""
    try:
        spec = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8")).get("spec") or {}
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None  # a folder without our manifest: plain RoPE behaviour (what onnxruntime-genai does)
    longrope = spec.get("longrope") if isinstance(spec, dict) else None
    value = longrope.get("original_max_position_embeddings") if isinstance(longrope, dict) else None
    return value if isinstance(value, int) and value > 0 else None


def _positive(section: dict[str, Any], key: str, path: Path) -> int:
    value = section.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ArtifactError(f"{key} must be a positive integer, got {value!r}", path)
    return value


def _eos_ids(value: Any, path: Path) -> tuple[int, ...]:
    # onnxruntime-genai accepts a single id or a list of them.
    ids = value if isinstance(value, list) else [value]
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ArtifactError(f"model.eos_token_id must be an integer or a list of integers, got {value!r}", path)
    return tuple(ids)


def physical_cores() -> int:
    """Physical cores this process may run on; 0 (ORT picks its own default) where the topology is unknown.

    A decode step is bound by memory bandwidth and matmul units: a second thread on a hyper-threaded core
    shares both with the first, so it adds synchronisation cost without adding compute. Linux exposes the
    topology in sysfs; we count distinct (package, core) pairs among the CPUs in our affinity mask, which
    also honours taskset and cpusets (a container pinned to 2 CPUs of a 64-core host gets 2 threads, not 32).
    """
    if not hasattr(os, "sched_getaffinity"):  # not Linux
        return 0
    cores: set[tuple[str, str]] = set()
    for cpu in os.sched_getaffinity(0):
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text(), (topology / "core_id").read_text()))
        except OSError:  # sysfs not mounted (some sandboxes)
            return 0
    return len(cores)


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


def session_options(intra_op_threads: int | None = None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = physical_cores() if intra_op_threads is None else intra_op_threads
    return options


class DecoderSession:
    """One decoder graph on the CPU EP, fed and read through the names in io_spec.

    Thread-safe: the InferenceSession is shared (its run() may be called concurrently); everything that
    changes during a generation lives in the ForwardPass that start() returns, one per generation.
    kv_cache: "shared" binds past and present to one preallocated buffer (GroupQueryAttention graphs only),
    "concat" feeds each step's present back as numpy arrays, "auto" picks "shared" when the graph allows it.
    """

    backend = "ort"

    def __init__(self, folder: Path, config: DecoderConfig, *, intra_op_threads: int | None = None,
                 kv_cache: str = "auto") -> None:
        model_path = Path(folder) / config.model_file
        if not model_path.is_file():
            raise ArtifactError("not found (the decoder graph genai_config.json names)", model_path)
        if kv_cache not in KV_CACHE_MODES:
            raise Phi3EdgeError(f"unknown kv_cache mode {kv_cache!r}; valid: {', '.join(KV_CACHE_MODES)}")
        try:
            self._session = ort.InferenceSession(
                str(model_path), sess_options=session_options(intra_op_threads), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own pybind types (Fail, InvalidGraph, ...) for a bad file
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ArtifactError(f"onnxruntime cannot load it: {first_line}", model_path) from exc
        self.config = config
        # Flattened layer by layer, key before value: the order the graph lists them in and we feed them.
        layers = range(config.num_layers)
        self.past_names = [name for i in layers for name in (io_spec.past_key(i), io_spec.past_value(i))]
        self.present_names = [name for i in layers for name in (io_spec.present_key(i), io_spec.present_value(i))]
        self._output_names = [io_spec.LOGITS, *self.present_names]
        self.kv_dtype = self._check_inputs(model_path)
        logits_type = {node.name: node.type for node in self._session.get_outputs()}.get(io_spec.LOGITS)
        self.logits_dtype = _ORT_FLOAT_TYPES.get(str(logits_type), np.float32)
        self.kv_cache = _resolve_kv_mode(kv_cache, model_path)

    @property
    def ort_session(self) -> ort.InferenceSession:
        return self._session

    def start(self, max_length: int) -> ForwardPass:
        """A fresh per-generation pass whose sequence (prompt + new tokens) never exceeds max_length."""
        if self.kv_cache == "shared":
            return SharedBufferPass(self, max_length)
        return ConcatPass(self)

    def _check_inputs(self, model_path: Path) -> type[np.floating]:
        """Every graph input must be one we feed; returns the KV-cache dtype."""
        inputs = {node.name: node.type for node in self._session.get_inputs()}
        expected = [io_spec.INPUT_IDS, io_spec.ATTENTION_MASK, *self.past_names]
        missing = [name for name in expected if name not in inputs]
        unknown = [name for name in inputs if name not in expected]
        if missing or unknown:
            detail = f"missing inputs {missing}" if missing else f"unexpected inputs {unknown}"
            raise ArtifactError(f"graph does not match genai_config.json: {detail}", model_path)
        kv_type = inputs[io_spec.past_key(0)]
        if kv_type not in _ORT_FLOAT_TYPES:
            raise ArtifactError(f"unsupported KV-cache type {kv_type}", model_path)
        return _ORT_FLOAT_TYPES[kv_type]

    def empty_cache(self) -> KVCache:
        """Zero-length past tensors [1, kv_heads, 0, head_dim]: the prefill step's past."""
        shape = (1, self.config.kv_heads, 0, self.config.head_dim)  # (B, Hkv, past, D)
        empty = np.zeros(shape, dtype=self.kv_dtype)
        return {name: empty for name in self.past_names}

    def step(self, input_ids: list[int], total_length: int, past: KVCache) -> tuple[np.ndarray, KVCache]:
        """Run new tokens through the decoder; returns the last position's logits [V] and the next past."""
        feeds: dict[str, np.ndarray] = {
            io_spec.INPUT_IDS: np.asarray([input_ids], dtype=np.int64),  # (B=1, S)
            # No padding in a batch of one: the mask is all ones over past + new tokens.
            io_spec.ATTENTION_MASK: np.ones((1, total_length), dtype=np.int64),  # (B=1, total)
            **past,
        }
        outputs = self._session.run(self._output_names, feeds)
        logits = outputs[0][0, -1]  # (B, S, V) -> (V,)
        # present.{i} of this step is past_key_values.{i} of the next one (same order, see __init__).
        return logits, dict(zip(self.past_names, outputs[1:]))

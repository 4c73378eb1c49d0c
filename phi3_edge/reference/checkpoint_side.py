"""The fp32 reference streamed from the checkpoint: embedding rows, one layer's weights, lm_head in vocab chunks.

Resident at any time: the hidden states the driver holds, one layer's fp32 weights (453 MB at Phi-3-mini,
723 MB at medium) or one lm_head chunk (`HEAD_CHUNK_BYTES`), and one read slice of the checkpoint (the
WeightStore drops the pages it maps once a slice is converted).

The final RMSNorm and the lm_head run in numpy: they are one normalisation and one matrix product per chunk,
and in float32 they agree with ORT's kernels to ~1e-6 (the parity test holds them to 1e-4 like the rest).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
import onnxruntime as ort

from phi3_edge.exporter.config import Phi3Spec
from phi3_edge.exporter.decoder import DecoderPlan
from phi3_edge.exporter.weights import WeightStore
from phi3_edge.reference import layer_graph as lg
from phi3_edge.reference.state import HEAD_CHUNK_BYTES, ActivationHook, State, sequence_feeds, session_options
from phi3_edge.targets.table import REFERENCE_TARGET, get_target

EMBED_NAME = "model.embed_tokens.weight"

# (checkpoint tensor name, its fp32 rows as read) -> the rows to compute with instead: how calibration
# (reference/calibrate.py) runs the reference with quantized weights. Applied to every Linear, norm, embedding
# and lm_head read; the rows given are whole tensors, except embedding rows and lm_head chunks (whole rows).
WeightMap = Callable[[str, np.ndarray], np.ndarray]


class CheckpointSide:
    """A LayeredModel over checkpoint weights (see reference/streamed.py for the protocol)."""

    def __init__(self, spec: Phi3Spec, weight_files: Sequence[Path], *, threads: int | None = None,
                 weight_map: WeightMap | None = None) -> None:
        target = get_target(REFERENCE_TARGET)
        self.spec = spec
        self.plan = DecoderPlan(io_dtype="float32", fused_rotary=target.fused_rotary,
                                packed_qkv=target.packed_qkv, allow_if_node=target.allow_if_node)
        self.num_layers = spec.num_layers
        self.vocab_size = spec.vocab_size
        self._files = tuple(weight_files)
        self._threads = threads
        self.weight_map = weight_map
        self._store: WeightStore | None = None
        self._graphs: dict[tuple[bool, bool], tuple[lg.LayerGraph, ort.InferenceSession]] = {}

    def __enter__(self) -> CheckpointSide:
        self._store = WeightStore(self._files)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._graphs.clear()
        if self._store is not None:
            self._store.__exit__()
            self._store = None

    @property
    def store(self) -> WeightStore:
        if self._store is None:
            raise RuntimeError("use CheckpointSide inside `with`")
        return self._store

    def embed(self, ids: Sequence[int]) -> State:
        info = self.store.info(EMBED_NAME, (self.spec.vocab_size, self.spec.hidden_size))
        rows = {i: self._mapped(EMBED_NAME, self.store.read_rows(info, i, i + 1))[0] for i in sorted(set(ids))}
        return State(np.stack([rows[i] for i in ids])[None], None)  # (1, S, H)

    def run_layer(self, layer: int, states: Sequence[State], hook: ActivationHook | None = None) -> list[State]:
        graph, session = self._session(first=layer == 0, taps=hook is not None)
        weights = self._layer_weights(graph, layer)  # one layer's fp32 weights, dropped on return
        out: list[State] = []
        tap_names = [o.name for o in session.get_outputs()][2:]
        for index, state in enumerate(states):
            feeds = {**weights, **sequence_feeds(state, self.spec, self.plan.rotary_is_fused(self.spec))}
            results = session.run(None, feeds)
            out.append(State(results[0], results[1]))
            if hook is not None:
                taps = dict(zip(tap_names, results[2:], strict=True))
                for w in graph.linears:
                    hook(layer, index, lg.checkpoint_name(w.hf_name, layer), taps[w.x][0])  # (S, in)
        return out

    def head_chunks(self, states: Sequence[State], vocab_chunk: int) -> Iterator[tuple[int, list[np.ndarray]]]:
        """(first vocab id, [logits (S, chunk) per sequence]) for consecutive vocab chunks."""
        spec = self.spec
        norm = self._mapped("model.norm.weight", self._norm("model.norm.weight"))
        normed = [final_norm(state, norm, spec.rms_norm_eps) for state in states]
        name = EMBED_NAME if spec.tie_word_embeddings else "lm_head.weight"
        info = self.store.info(name, (spec.vocab_size, spec.hidden_size))
        for start in range(0, spec.vocab_size, vocab_chunk):
            weight = self._mapped(name, self.store.read_rows(info, start, min(spec.vocab_size, start + vocab_chunk)))
            yield start, [x @ weight.T for x in normed]  # (S, chunk)

    def default_vocab_chunk(self) -> int:
        return max(1, HEAD_CHUNK_BYTES // (4 * self.spec.hidden_size))

    def _session(self, *, first: bool, taps: bool) -> tuple[lg.LayerGraph, ort.InferenceSession]:
        key = (first, taps)
        if key not in self._graphs:
            self._graphs.pop((not first, taps), None)  # layer 0's graph is not needed again
            graph = lg.build_layer_graph(self.spec, self.plan, first=first, taps=taps)
            session = ort.InferenceSession(graph.model.SerializeToString(), sess_options=session_options(self._threads),
                                           providers=["CPUExecutionProvider"])
            self._graphs[key] = graph, session
        return self._graphs[key]

    def _layer_weights(self, graph: lg.LayerGraph, layer: int) -> dict[str, np.ndarray]:
        feeds: dict[str, np.ndarray] = dict(graph.constants)
        for norm in graph.norms:
            name = lg.checkpoint_name(norm, layer)
            feeds[norm] = self._mapped(name, self._norm(name))
        for w in graph.linears:
            name = lg.checkpoint_name(w.hf_name, layer)
            feeds[w.input_name] = self._mapped(name, self._rows(name, w))
        return feeds

    def _mapped(self, name: str, rows: np.ndarray) -> np.ndarray:
        return rows if self.weight_map is None else self.weight_map(name, rows)

    def _norm(self, name: str) -> np.ndarray:
        info = self.store.info(name, (self.spec.hidden_size,))
        return self.store.read_rows(info, 0, self.spec.hidden_size)

    def _rows(self, name: str, w: lg.WeightInput) -> np.ndarray:
        """W[rows] as a contiguous (out, in) float32 array (FusedMatMul transB=1 reads it transposed)."""
        rows = self.store.rows_of(name)
        info = self.store.info(name, (rows if w.rows else w.out_features, w.in_features))
        first, last = w.rows or (0, w.out_features)
        out = np.empty((last - first, w.in_features), dtype=np.float32)  # (out, in)
        step = max(1, (16 << 20) // (4 * w.in_features))  # bounded read slices: the store drops their pages
        for start in range(first, last, step):
            stop = min(last, start + step)
            out[start - first:stop - first] = self.store.read_rows(info, start, stop)  # (rows, in)
        return out


def final_norm(state: State, weight: np.ndarray, eps: float) -> np.ndarray:
    """SkipSimplifiedLayerNorm(hidden, residual) of the last layer, in float32 like the kernel: (S, H)."""
    x = state.hidden[0] if state.residual is None else state.hidden[0] + state.residual[0]  # (S, H)
    variance = np.mean(np.square(x, dtype=np.float32), axis=-1, keepdims=True, dtype=np.float32)
    out: np.ndarray = (x / np.sqrt(variance + np.float32(eps)) * weight).astype(np.float32)
    return out

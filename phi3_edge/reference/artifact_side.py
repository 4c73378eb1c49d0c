"""A finished artifact run segment by segment (reference/graph_cut.py): the quantized side of the gate.

Each segment is its own ORT session whose initializers point into the artifact's model.onnx.data (ORT is told
the folder through `session.model_external_initializers_file_folder_path`), so only one layer's weights are
loaded at a time, and the kernels are those of the artifact: same numbers as a whole-graph session.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
import onnx
import onnxruntime as ort

from phi3_edge import io_spec
from phi3_edge.edge_runtime.decoder_config import DecoderConfig, read_decoder_config
from phi3_edge.errors import ArtifactError
from phi3_edge.reference import graph_cut
from phi3_edge.reference.state import State, session_options

EXTERNAL_FOLDER_KEY = "session.model_external_initializers_file_folder_path"


class ArtifactSide:
    """A LayeredModel over an artifact folder (see reference/streamed.py for the protocol)."""

    def __init__(self, folder: str | Path, *, threads: int | None = None) -> None:
        self.folder = Path(folder)
        self.config: DecoderConfig = read_decoder_config(self.folder)
        self.num_layers = self.config.num_layers
        self.vocab_size = self.config.vocab_size
        self._threads = threads
        self._path = self.folder / self.config.model_file
        self._model: onnx.ModelProto | None = None
        self._index: dict[str, int] = {}

    def __enter__(self) -> ArtifactSide:
        try:
            self._model = onnx.load(str(self._path), load_external_data=False)
        except Exception as exc:  # protobuf's DecodeError, OSError
            raise ArtifactError(f"cannot be read as an ONNX graph ({type(exc).__name__})", self._path) from exc
        self._index = graph_cut.producers(self._model)
        self._elem = graph_cut.io_elem_type(self._model, io_spec.LOGITS)
        self._dtype = graph_cut.numpy_dtype(self._elem)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._model = None

    @property
    def model(self) -> onnx.ModelProto:
        if self._model is None:
            raise RuntimeError("use ArtifactSide inside `with`")
        return self._model

    def embed(self, ids: Sequence[int]) -> State:
        first = self._boundary(0)
        session = self._session(graph_cut.segment(self.model, [], [first.input[0]], self._elem, self._index))
        (hidden,) = session.run(None, {io_spec.INPUT_IDS: np.asarray([ids], dtype=np.int64)})  # (1, S, H)
        return State(hidden, None)

    def run_layer(self, layer: int, states: Sequence[State], hook: object = None) -> list[State]:
        here, after = self._boundary(layer), self._boundary(layer + 1)
        cuts = [here.input[0]] + ([here.input[1]] if layer > 0 else [])
        session = self._session(graph_cut.segment(self.model, cuts, list(after.input[:2]), self._elem, self._index))
        wanted = {i.name for i in session.get_inputs()}
        out = []
        for state in states:
            feeds = {cuts[0]: state.hidden, **({cuts[1]: state.residual} if state.residual is not None else {})}
            feeds.update({k: v for k, v in self._context_feeds(layer, state).items() if k in wanted})
            hidden, residual = session.run(None, feeds)
            out.append(State(hidden, residual))
        return out

    def head_chunks(self, states: Sequence[State], vocab_chunk: int) -> Iterator[tuple[int, list[np.ndarray]]]:
        norm = self._boundary(self.num_layers)
        node = graph_cut.head_node(self.model, io_spec.LOGITS, self._index)
        session = self._session(graph_cut.segment(self.model, list(norm.input[:2]), [node.input[0]], self._elem,
                                                  self._index))
        normed = [session.run(None, {norm.input[0]: s.hidden, norm.input[1]: s.residual})[0] for s in states]
        del session
        if node.op_type not in graph_cut.ROW_SLICED_OPS:  # a float MatMul head: (H, V) columns, run whole
            whole = self._session(graph_cut.segment(self.model, [node.input[0]], [io_spec.LOGITS], self._elem,
                                                    self._index))
            logits = [whole.run(None, {node.input[0]: x})[0][0].astype(np.float32) for x in normed]  # (S, V)
            del whole
            for start in range(0, self.vocab_size, vocab_chunk):
                yield start, [x[:, start:start + vocab_chunk] for x in logits]
            return
        for start in range(0, self.vocab_size, vocab_chunk):
            stop = min(self.vocab_size, start + vocab_chunk)
            chunk = self._session(graph_cut.row_slice(self.model, node, start, stop, io_spec.LOGITS))
            yield start, [chunk.run(None, {node.input[0]: x})[0][0].astype(np.float32) for x in normed]  # (S, c)

    def _boundary(self, layer: int) -> onnx.NodeProto:
        name = "model/norm" if layer == self.num_layers else f"model.layers.{layer}/input_layernorm"
        return graph_cut.boundary(self.model, name, str(self._path))

    def _context_feeds(self, layer: int, state: State) -> dict[str, np.ndarray]:
        length = state.length
        empty = np.zeros((1, self.config.kv_heads, 0, self.config.head_dim), dtype=self._dtype)  # (B, Hkv, 0, D)
        return {io_spec.ATTENTION_MASK: np.ones((1, length), dtype=np.int64),
                io_spec.INPUT_IDS: np.zeros((1, length), dtype=np.int64),  # layers read only its shape
                io_spec.past_key(layer): empty, io_spec.past_value(layer): empty}

    def _session(self, model: onnx.ModelProto) -> ort.InferenceSession:
        options = session_options(self._threads)
        options.add_session_config_entry(EXTERNAL_FOLDER_KEY, str(self.folder))
        try:
            return ort.InferenceSession(model.SerializeToString(), sess_options=options,
                                        providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT's pybind error types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ArtifactError(f"onnxruntime cannot load a segment of it: {first}", self._path) from exc

"""What in a graph decides which onnxruntime can run it: IR version, opsets, ops with their int attributes.

Read from model.onnx with onnx_wire (no `onnx` package: the runtime side and `inspect` use this too), on a
memory map, skipping weights by length. Subgraphs (If branches) count. runtime_compat.py maps the result to the
oldest onnxruntime / onnxruntime-genai that runs it.

Field numbers (onnx.proto3): ModelProto {ir_version = 1, opset_import = 8 {domain = 1, version = 2}, graph = 7};
GraphProto {node = 1, initializer = 5 {data_type = 2, name = 8}}; NodeProto {input = 1, op_type = 4,
attribute = 5, domain = 7}; AttributeProto {name = 1, i = 3, g = 6, graphs = 11}.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from pathlib import Path

from phi3_edge.errors import ArtifactError
from phi3_edge.onnx_wire import Message, WireError, each, int32, repeated, string, submessage

_MODEL_IR, _MODEL_GRAPH, _MODEL_OPSET = 1, 7, 8
_OPSET_DOMAIN, _OPSET_VERSION = 1, 2
_GRAPH_NODE, _GRAPH_INIT = 1, 5
_TENSOR_TYPE, _TENSOR_NAME = 2, 8
_NODE_INPUT, _NODE_OP, _NODE_ATTR, _NODE_DOMAIN = 1, 4, 5, 7
_ATTR_NAME, _ATTR_INT, _ATTR_GRAPH, _ATTR_GRAPHS = 1, 3, 6, 11
_VARINT = 0
_MAX_DEPTH = 16  # If bodies inside If bodies: ours nest one level


@dataclass(frozen=True)
class OpUse:
    """One distinct way an op is used: "domain.Op" (no domain for ONNX's), its int attributes, and the element
    type (TensorProto.DataType) of each input that is an initializer (None for computed inputs)."""

    op: str
    attrs: tuple[tuple[str, int], ...]
    const_types: tuple[int | None, ...] = ()

    def attr(self, name: str) -> int | None:
        return dict(self.attrs).get(name)


@dataclass(frozen=True)
class GraphFeatures:
    ir_version: int
    opsets: tuple[tuple[str, int], ...]  # (domain, version); "" is ONNX's default domain
    uses: frozenset[OpUse]

    def opset(self, domain: str = "") -> int | None:
        aliases = ("", "ai.onnx") if domain in ("", "ai.onnx") else (domain,)
        return next((version for name, version in self.opsets if name in aliases), None)


def read_graph_features(model_path: Path) -> GraphFeatures:
    """One ArtifactError naming the file when it is not an ONNX model."""
    try:
        with open(model_path, "rb") as handle:
            if handle.seek(0, 2) == 0:
                raise ArtifactError("cannot read the graph: empty file", model_path)
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                view = memoryview(mapped)
                problem = None
                try:
                    features = features_of((view,))
                except (WireError, UnicodeDecodeError, IndexError, RecursionError) as exc:
                    problem = str(exc) or type(exc).__name__
                view.release()  # only now (no traceback holds a sub-view) may the map close
    except OSError as exc:
        raise ArtifactError(f"cannot read the graph ({exc.strerror or exc})", model_path) from None
    if problem is not None:
        raise ArtifactError(f"cannot read the graph as an ONNX protobuf ({problem})", model_path)
    return features


def features_of(model: Message) -> GraphFeatures:
    graph = submessage(model, _MODEL_GRAPH)
    if graph is None:
        raise WireError("no graph")
    opsets = tuple((string(entry, _OPSET_DOMAIN), _int(entry, _OPSET_VERSION)) for entry in
                   repeated(model, _MODEL_OPSET))
    uses: set[OpUse] = set()
    _walk(graph, {}, uses, 0)
    return GraphFeatures(_int(model, _MODEL_IR), opsets, frozenset(uses))


def _walk(graph: Message, outer_types: dict[str, int], uses: set[OpUse], depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise WireError("subgraphs nested too deeply")
    # A subgraph may read its parent's initializers by name: they are constant inputs there too.
    types = {**outer_types, **{string(t, _TENSOR_NAME): _int(t, _TENSOR_TYPE) for t in repeated(graph, _GRAPH_INIT)}}
    for node in repeated(graph, _GRAPH_NODE):
        domain, op = string(node, _NODE_DOMAIN), string(node, _NODE_OP)
        name = f"{domain}.{op}" if domain not in ("", "ai.onnx") else op
        attrs: dict[str, int] = {}
        for attribute in repeated(node, _NODE_ATTR):
            value = int32(attribute, _ATTR_INT)
            if value is not None:
                attrs[string(attribute, _ATTR_NAME)] = value
            for body in (submessage(attribute, _ATTR_GRAPH), *repeated(attribute, _ATTR_GRAPHS)):
                if body is not None:
                    _walk(body, types, uses, depth + 1)
        inputs = [bytes(chunk[0]).decode("utf-8") for chunk in repeated(node, _NODE_INPUT)]
        uses.add(OpUse(name, tuple(sorted(attrs.items())), tuple(types.get(value) for value in inputs)))


def _int(message: Message, number: int) -> int:
    found = 0
    for field, wire, value in each(message):
        if field == number and wire == _VARINT and isinstance(value, int):
            found = value
    return found

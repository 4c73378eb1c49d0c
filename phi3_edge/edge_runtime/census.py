"""Read a decoder graph's structure (op census, declared inputs/outputs) without the `onnx` package.

A device installs the runtime alone, and `onnx` is an export-time dependency, so this walks the protobuf wire
format directly: only the handful of fields below, skipping everything else (weights included) by length.
Field numbers are those of onnx.proto3 (ModelProto.graph = 7, GraphProto.node = 1, ...).
"""

from __future__ import annotations

import mmap
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from phi3_edge.errors import ArtifactError
from phi3_edge.onnx_wire import WireError as _Malformed
from phi3_edge.onnx_wire import dim as _dim
from phi3_edge.onnx_wire import fields as _fields
from phi3_edge.onnx_wire import length_fields as _all
from phi3_edge.onnx_wire import text as _text

# onnx.proto3 field numbers we read.
_MODEL_GRAPH = 7
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_OUTPUT = 1, 5, 11, 12
_NODE_INPUT, _NODE_OUTPUT, _NODE_OP_TYPE, _NODE_ATTRIBUTE, _NODE_DOMAIN = 1, 2, 4, 5, 7
_TENSOR_NAME, _TENSOR_RAW_DATA, _TENSOR_EXTERNAL_DATA = 8, 9, 13
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
_ATTR_GRAPH, _ATTR_GRAPHS = 6, 11  # If/Loop bodies: their nodes count too
_VALUE_NAME, _VALUE_TYPE = 1, 2
_TYPE_TENSOR = 1
_TENSOR_ELEM_TYPE, _TENSOR_SHAPE = 1, 2
_SHAPE_DIM = 1
_DIM_VALUE, _DIM_PARAM = 1, 2
# TensorProto.DataType values a decoder's I/O can have.
_ELEM_TYPES = {1: "float32", 6: "int32", 7: "int64", 10: "float16", 11: "float64", 16: "bfloat16"}
_VARINT = 0  # protobuf wire type of an integer field
# Our attention op: its past/present buffers may be shared (updated in place), see kv_pass.py.
GQA_OP = "com.microsoft.GroupQueryAttention"
# Ops that read one row per token (an embedding lookup), not the whole tensor, of these input slots: Gather's
# data; GatherBlockQuantized's codes, scales and zero points (one block row each).
_ROW_LOOKUPS = {"Gather": (0,), "com.microsoft.GatherBlockQuantized": (0, 2, 3)}
# Ops that only re-view their first input: a quantized table's codes reach GatherBlockQuantized through a
# Reshape (exporter/heads.py: the 2-D view of MatMulNBits' 3-D codes), so lookups are followed through them.
_VIEWS = ("Reshape",)


@dataclass(frozen=True)
class TensorInfo:
    """One declared graph input or output: name, element type and shape (ints or symbolic names)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class GraphInfo:
    ops: Counter[str]  # "domain.OpType" (domain omitted for the default ONNX domain) -> node count
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    # Bytes of weights only ever indexed by a row lookup (an untied embedding table): a decode step reads
    # one row of them, so they do not count towards the bytes a token streams from memory.
    lookup_only_bytes: int = 0
    # Declared inputs that an initializer backs (a default, e.g. io_spec.LOGITS_TO_KEEP): onnxruntime lists them
    # as overridable initializers, not inputs; a caller may leave them out.
    optional_inputs: frozenset[str] = frozenset()

    @property
    def has_gqa(self) -> bool:
        return self.ops.get(GQA_OP, 0) > 0


def read_graph_info(model_path: Path) -> GraphInfo:
    """Op census and I/O of an ONNX file; one ArtifactError naming the file if it is not an ONNX model."""
    problem = "empty file"
    try:
        # mmap, not read(): a graph with embedded weights can be ~2 GB, of which we touch a few KB.
        with open(model_path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            try:
                return _parse(memoryview(mapped))
            except (_Malformed, UnicodeDecodeError, IndexError) as exc:
                problem = str(exc)  # the traceback (and the views into the map it holds) dies here
    except (OSError, ValueError) as exc:  # ValueError: mmap of an empty file
        problem = getattr(exc, "strerror", None) or str(exc)
    raise ArtifactError(f"cannot read the graph as an ONNX protobuf ({problem})", model_path)


def _parse(model: memoryview) -> GraphInfo:
    graph = _only(model, _MODEL_GRAPH)
    if graph is None:
        raise _Malformed("no graph")
    uses: dict[str, set[tuple[str, int]]] = {}
    views: dict[str, list[str]] = {}
    ops = _census(graph, Counter(), uses, views)
    sizes = {_text(tensor, _TENSOR_NAME): _tensor_bytes(tensor) for tensor in _all(graph, _GRAPH_INITIALIZER)}
    lookup_only = sum(size for name, size in sizes.items() if _lookup_only(name, uses, views))
    inputs = _values(graph, _GRAPH_INPUT)
    optional = frozenset(value.name for value in inputs if value.name in sizes)
    return GraphInfo(ops, inputs, _values(graph, _GRAPH_OUTPUT), lookup_only, optional)


def _lookup_only(name: str, uses: dict[str, set[tuple[str, int]]], views: dict[str, list[str]]) -> bool:
    """Every consumer of `name` reads one row per token: a row lookup's table slot, or a view (Reshape) whose
    outputs are lookup-only in turn. A tied table also read by lm_head's MatMulNBits is streamed whole."""
    def reads_rows(op: str, slot: int) -> bool:
        if op in _VIEWS and slot == 0:
            return all(_lookup_only(out, uses, views) for out in views.get(name, ()))
        return slot in _ROW_LOOKUPS.get(op, ())

    return bool(uses.get(name)) and all(reads_rows(op, slot) for op, slot in uses[name])


def _tensor_bytes(tensor: memoryview) -> int:
    """Stored size of an initializer: external data's "length" entry, else its inline raw_data."""
    for entry in _all(tensor, _TENSOR_EXTERNAL_DATA):
        if _text(entry, _ENTRY_KEY) == "length":
            return int(_text(entry, _ENTRY_VALUE))
    raw = _only(tensor, _TENSOR_RAW_DATA)
    return len(raw) if raw is not None else 0


def _only(buf: memoryview, number: int) -> memoryview | None:
    values = _all(buf, number)
    return values[0] if values else None


def _census(graph: memoryview, counts: Counter[str], uses: dict[str, set[tuple[str, int]]],
            views: dict[str, list[str]]) -> Counter[str]:
    """Count ops (subgraphs included) and record, per value name, which (op, input slot) consume it and, for
    a view op's first input, the values it becomes."""
    for node in _all(graph, _GRAPH_NODE):
        domain, op = _text(node, _NODE_DOMAIN), _text(node, _NODE_OP_TYPE)
        name = f"{domain}.{op}" if domain not in ("", "ai.onnx") else op
        counts[name] += 1
        inputs = [bytes(value).decode("utf-8") for value in _all(node, _NODE_INPUT)]
        for slot, value in enumerate(inputs):
            uses.setdefault(value, set()).add((name, slot))
        if name in _VIEWS and inputs:
            views.setdefault(inputs[0], []).extend(bytes(v).decode("utf-8") for v in _all(node, _NODE_OUTPUT))
        for attribute in _all(node, _NODE_ATTRIBUTE):
            for number in (_ATTR_GRAPH, _ATTR_GRAPHS):
                for subgraph in _all(attribute, number):
                    _census(subgraph, counts, uses, views)
    return counts


def _values(graph: memoryview, number: int) -> tuple[TensorInfo, ...]:
    return tuple(_tensor_info(value) for value in _all(graph, number))


def _tensor_info(value: memoryview) -> TensorInfo:
    name = _text(value, _VALUE_NAME)
    kind = _only(value, _VALUE_TYPE)
    tensor = _only(kind, _TYPE_TENSOR) if kind is not None else None
    if tensor is None:
        return TensorInfo(name, "?", ())
    elem = next((v for f, w, v in _fields(tensor) if f == _TENSOR_ELEM_TYPE and w == _VARINT), 0)
    shape = _only(tensor, _TENSOR_SHAPE)
    dims = tuple(_dim(dim) for dim in _all(shape, _SHAPE_DIM)) if shape is not None else ()
    return TensorInfo(name, _ELEM_TYPES.get(int(elem), f"type{elem}"), dims)

"""Read what integrity checks need from an ONNX file without the `onnx` package.

A device installs onnxruntime, numpy and tokenizers only; `onnx` is an export-time dependency. This walks
the protobuf wire format directly: declared graph inputs/outputs, and the external-data entries of every
tensor, wherever a TensorProto may sit. Everything else (inline weights included) is skipped by length, on a
memory map, so reading a large model.onnx costs neither memory nor a copy. Stdlib only.
Field numbers are those of onnx/onnx.proto3 (ModelProto.graph = 7, GraphProto.node = 1, ...).
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
ELEM_TYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool", 10: "float16",
              11: "float64", 16: "bfloat16"}
_MODEL_GRAPH, _MODEL_FUNCTIONS, _FUNCTION_NODE = 7, 25, 7
_GRAPH_NODE, _GRAPH_INIT, _GRAPH_IN, _GRAPH_OUT, _GRAPH_SPARSE = 1, 5, 11, 12, 15
_NODE_ATTRIBUTE = 5
# AttributeProto: t (5), tensors (10), sparse_tensor (22), sparse_tensors (23), g (6), graphs (11).
_ATTR_TENSORS, _ATTR_SPARSE, _ATTR_GRAPHS = (5, 10), (22, 23), (6, 11)
_SPARSE_PARTS = (1, 2)  # SparseTensorProto.values, .indices
_TENSOR_EXTERNAL = 13  # TensorProto.external_data: StringStringEntryProto {key = 1, value = 2}

GraphIO = dict[str, tuple[str, list[Any]]]  # name -> (dtype, shape of ints and symbolic names)
External = list[tuple[str, int, int]]  # (location, offset, length) per external tensor


class WireError(ValueError):
    """model.onnx is not a well-formed protobuf (truncated, or not an ONNX file at all)."""


def read_graph_io(path: Path) -> tuple[GraphIO, External]:
    """Declared inputs and outputs of the main graph, and every external-data reference in the model."""
    with open(path, "rb") as handle:
        if handle.seek(0, 2) == 0:
            raise WireError("empty file")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            problem = None
            try:
                result = _read(view)
            except (WireError, RecursionError) as exc:  # RecursionError: subgraphs nested beyond reason
                problem = str(exc) or "subgraphs nested too deeply"
            # Only now, with the traceback (and the sub-views its frames hold) gone, may the map close.
            view.release()
    if problem is not None:
        raise WireError(problem)
    return result


def _read(model: memoryview) -> tuple[GraphIO, External]:
    graphs = _all(model, _MODEL_GRAPH)
    if not graphs:
        raise WireError("no graph")
    io: GraphIO = dict(_value_info(value) for number in (_GRAPH_IN, _GRAPH_OUT) for value in _all(graphs[0], number))
    external: External = []
    _graph_tensors(graphs[0], external)
    for function in _all(model, _MODEL_FUNCTIONS):
        _nodes_tensors(_all(function, _FUNCTION_NODE), external)
    return io, external


def _graph_tensors(graph: memoryview, out: External) -> None:
    for tensor in _all(graph, _GRAPH_INIT):
        _tensor(tensor, out)
    for sparse in _all(graph, _GRAPH_SPARSE):
        _sparse(sparse, out)
    _nodes_tensors(_all(graph, _GRAPH_NODE), out)


def _nodes_tensors(nodes: list[memoryview], out: External) -> None:
    for node in nodes:
        for attribute in _all(node, _NODE_ATTRIBUTE):
            for tensor in _many(attribute, _ATTR_TENSORS):
                _tensor(tensor, out)
            for sparse in _many(attribute, _ATTR_SPARSE):
                _sparse(sparse, out)
            for subgraph in _many(attribute, _ATTR_GRAPHS):  # If/Loop bodies can hold initializers too
                _graph_tensors(subgraph, out)


def _sparse(sparse: memoryview, out: External) -> None:
    for tensor in _many(sparse, _SPARSE_PARTS):
        _tensor(tensor, out)


def _tensor(tensor: memoryview, out: External) -> None:
    entries = {_text(entry, 1): _text(entry, 2) for entry in _all(tensor, _TENSOR_EXTERNAL)}
    if "location" not in entries:
        return
    offset, length = entries.get("offset", "0"), entries.get("length", "0")
    if not (offset.isdigit() and length.isdigit()):
        raise WireError(f"external data offset {offset[:20]!r} / length {length[:20]!r} are not numbers")
    out.append((entries["location"], int(offset), int(length)))


def _value_info(value: memoryview) -> tuple[str, tuple[str, list[Any]]]:
    """ValueInfoProto {name = 1, type = 2 (TypeProto {tensor_type = 1 {elem_type = 1, shape = 2}})}."""
    dtype, dims = "?", []
    for kind in _all(value, 2):
        for tensor in _all(kind, 1):
            elem = next((v for f, w, v in _fields(tensor) if f == 1 and w == _VARINT), 0)
            dtype = ELEM_TYPES.get(int(elem), f"type{elem}")  # type: ignore[call-overload]
            dims = [_dim(dim) for shape in _all(tensor, 2) for dim in _all(shape, 1)]
    return _text(value, 1), (dtype, dims)


def _dim(dim: memoryview) -> int | str:
    """TensorShapeProto.Dimension {dim_value = 1, dim_param = 2}; '?' when neither is set."""
    for field, wire, value in _fields(dim):
        if field == 1 and wire == _VARINT:
            return int(value)  # type: ignore[arg-type]
        if field == 2 and wire == _LENGTH:
            return _decode(value)  # type: ignore[arg-type]
    return "?"


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value): ints for varint/fixed fields, a sub-view for length-delimited ones."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
            yield field, wire, value
            continue
        if wire == _LENGTH:
            width, pos = _varint(buf, pos)
        elif wire in (_FIXED64, _FIXED32):
            width = 8 if wire == _FIXED64 else 4
        else:  # groups (3, 4) do not occur in onnx.proto3
            raise WireError(f"unsupported wire type {wire}")
        if pos + width > end:
            raise WireError("truncated field")
        chunk = buf[pos : pos + width]
        yield field, wire, chunk if wire == _LENGTH else int.from_bytes(chunk, "little")
        pos += width


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while pos < len(buf) and shift < 70:  # 10 bytes at most: a longer run is junk, not a bigger number
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
    raise WireError("truncated varint")


def _all(buf: memoryview, number: int) -> list[memoryview]:
    return [value for field, wire, value in _fields(buf) if field == number and wire == _LENGTH]  # type: ignore[misc]


def _many(buf: memoryview, numbers: tuple[int, ...]) -> list[memoryview]:
    return [value for field, wire, value in _fields(buf) if field in numbers and wire == _LENGTH]  # type: ignore[misc]


def _text(buf: memoryview, number: int) -> str:
    values = _all(buf, number)
    return _decode(values[0]) if values else ""


def _decode(value: memoryview) -> str:
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError("a name is not UTF-8") from exc


# The wire primitives, public for the runtime's op census (edge_runtime/census.py): one protobuf reader.
fields = _fields
length_fields = _all
text = _text
dim = _dim

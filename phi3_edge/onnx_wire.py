"""Read what integrity checks need from an ONNX file without the `onnx` package, with protobuf's semantics.

A device installs onnxruntime, numpy and tokenizers only; `onnx` is an export-time dependency. This walks
the protobuf wire format directly: declared graph inputs/outputs, and the external-data entries of every
tensor, wherever a TensorProto may sit. Everything else (inline weights included) is skipped by length, on a
memory map, so reading a large model.onnx costs neither memory nor a copy. Stdlib only.
Field numbers are those of onnx/onnx.proto3 (ModelProto.graph = 7, GraphProto.node = 1, ...).

One reading for the verifier and the loader. The check must see the graph onnxruntime will load, so this
reader follows protobuf's parsing rules exactly, the way onnxruntime's (C++) and onnx's (upb) parsers do:
  - a singular message field that occurs several times is ONE message, the merge of every occurrence, which
    is the same as parsing the occurrences' bytes one after another: a `Message` here is that tuple of chunks;
  - a singular scalar or string field: the last occurrence wins;
  - a repeated field: every occurrence is one more element;
  - a oneof (TypeProto.value, Dimension.value): the last member set wins, and a message member merges only
    the occurrences since another member was last set;
  - a field whose wire type does not match the schema is an unknown field, and is ignored.
tests/integrity/test_untrusted_wire.py fuzzes this against onnx's own parser with hypothesis (duplicated,
split and interleaved fields). Why not the alternative (hand onnxruntime the external data ourselves with
SessionOptions.add_external_initializers)? It needs the graph's initializer names and dtypes, i.e. this same
parse, and a numpy copy or map per tensor; the check would still rest on reading the graph right. And the
runtime cannot use onnx's parser: the runtime installs without `onnx` (onnxruntime's wheel does depend on
`protobuf`, but not on onnx's schema). What still lies between check and load, a file changed after it was
hashed, is closed by integrity.loaded_unchanged (stat before and after the session is built).
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
ELEM_TYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool", 10: "float16",
              11: "float64", 16: "bfloat16"}
_MODEL_GRAPH, _MODEL_FUNCTIONS, _MODEL_TRAINING, _FUNCTION_NODE = 7, 25, 20, 7
_TRAINING_GRAPHS = (1, 2)  # TrainingInfoProto.initialization, .algorithm
_GRAPH_NODE, _GRAPH_INIT, _GRAPH_IN, _GRAPH_OUT, _GRAPH_SPARSE = 1, 5, 11, 12, 15
_NODE_ATTRIBUTE = 5
# AttributeProto: t (5) / tensors (10), sparse_tensor (22) / sparse_tensors (23), g (6) / graphs (11).
_ATTR_T, _ATTR_TENSORS, _ATTR_SPARSE, _ATTR_SPARSES, _ATTR_G, _ATTR_GRAPHS = 5, 10, 22, 23, 6, 11
_SPARSE_PARTS = (1, 2)  # SparseTensorProto.values, .indices (each a singular TensorProto)
_TENSOR_EXTERNAL = 13  # TensorProto.external_data: StringStringEntryProto {key = 1, value = 2}
_VALUE_NAME, _VALUE_TYPE = 1, 2
# TypeProto.value oneof members (all messages): tensor_type, sequence_type, map_type, opaque_type,
# sparse_tensor_type, optional_type.
_TYPE_TENSOR, _TYPE_ONEOF = 1, (1, 4, 5, 7, 8, 9)
_TENSOR_ELEM, _TENSOR_SHAPE, _SHAPE_DIM = 1, 2, 1
_DIM_VALUE, _DIM_PARAM = 1, 2  # the Dimension.value oneof
MAX_DEPTH = 64  # subgraphs nested deeper are refused (protobuf itself stops at 100 message levels)
# onnxruntime reads a tensor's bytes from *memory address* `offset` when its location is this tag.
ORT_MEMORY_TAG = "*/_ORT_MEM_ADDR_/*"

GraphIO = dict[str, tuple[str, list[Any]]]  # name -> (dtype, shape of ints and symbolic names)
External = list[tuple[str, int, int]]  # (location, offset, length) per external tensor
Message = tuple[memoryview, ...]  # one protobuf message: the bytes of every occurrence, merged in order


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
                result = read_model(view)
            except (WireError, RecursionError) as exc:  # RecursionError: subgraphs nested beyond reason
                problem = str(exc) or "subgraphs nested too deeply"
            # Only now, with the traceback (and the sub-views its frames hold) gone, may the map close.
            view.release()
    if problem is not None:
        raise WireError(problem)
    return result


def read_model(model: memoryview) -> tuple[GraphIO, External]:
    """read_graph_io on bytes in memory."""
    top: Message = (model,)
    graph = submessage(top, _MODEL_GRAPH)
    if graph is None:
        raise WireError("no graph")
    # Repeated inputs/outputs with one name: the dict keeps the last, as a name lookup in the loader would.
    io: GraphIO = dict(_value_info(value) for number in (_GRAPH_IN, _GRAPH_OUT) for value in repeated(graph, number))
    external: External = []
    _graph_tensors(graph, external, 0)
    for function in repeated(top, _MODEL_FUNCTIONS):
        _nodes_tensors(repeated(function, _FUNCTION_NODE), external, 0)
    for training in repeated(top, _MODEL_TRAINING):
        for number in _TRAINING_GRAPHS:
            if (sub := submessage(training, number)) is not None:
                _graph_tensors(sub, external, 1)
    return io, external


def _graph_tensors(graph: Message, out: External, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise WireError(f"subgraphs nested more than {MAX_DEPTH} deep")
    for tensor in repeated(graph, _GRAPH_INIT):
        _tensor(tensor, out)
    for sparse in repeated(graph, _GRAPH_SPARSE):
        _sparse(sparse, out)
    _nodes_tensors(repeated(graph, _GRAPH_NODE), out, depth)


def _nodes_tensors(nodes: list[Message], out: External, depth: int) -> None:
    for node in nodes:
        for attribute in repeated(node, _NODE_ATTRIBUTE):
            for tensor in _singular_and_repeated(attribute, _ATTR_T, _ATTR_TENSORS):
                _tensor(tensor, out)
            for sparse in _singular_and_repeated(attribute, _ATTR_SPARSE, _ATTR_SPARSES):
                _sparse(sparse, out)
            for subgraph in _singular_and_repeated(attribute, _ATTR_G, _ATTR_GRAPHS):  # If/Loop bodies
                _graph_tensors(subgraph, out, depth + 1)


def _singular_and_repeated(message: Message, one: int, many: int) -> list[Message]:
    single = submessage(message, one)
    return ([single] if single is not None else []) + repeated(message, many)


def _sparse(sparse: Message, out: External) -> None:
    for number in _SPARSE_PARTS:
        if (tensor := submessage(sparse, number)) is not None:
            _tensor(tensor, out)


def _tensor(tensor: Message, out: External) -> None:
    # Entries in order, later keys overriding earlier ones: onnxruntime's ExternalDataInfo and onnx's
    # ExternalDataInfo both loop over the entries and assign, so the last "location" is the one read.
    entries = {string(entry, 1): string(entry, 2) for entry in repeated(tensor, _TENSOR_EXTERNAL)}
    if "location" not in entries:
        return
    offset, length = entries.get("offset", "0"), entries.get("length", "0")
    if not (offset.isdigit() and length.isdigit()):
        raise WireError(f"external data offset {offset[:20]!r} / length {length[:20]!r} are not numbers")
    out.append((entries["location"], int(offset), int(length)))


def _value_info(value: Message) -> tuple[str, tuple[str, list[Any]]]:
    """ValueInfoProto {name = 1, type = 2 (TypeProto {tensor_type = 1 {elem_type = 1, shape = 2}})}."""
    dtype, dims = "?", []
    kind = submessage(value, _VALUE_TYPE)
    member, tensor = oneof_message(kind, _TYPE_ONEOF) if kind is not None else (None, None)
    if member == _TYPE_TENSOR and tensor is not None:
        elem = int32(tensor, _TENSOR_ELEM) or 0
        dtype = ELEM_TYPES.get(elem, f"type{elem}")
        shape = submessage(tensor, _TENSOR_SHAPE)
        dims = [message_dim(dim) for dim in repeated(shape, _SHAPE_DIM)] if shape is not None else []
    return string(value, _VALUE_NAME), (dtype, dims)


def message_dim(dim: Message) -> int | str:
    """TensorShapeProto.Dimension {dim_value = 1, dim_param = 2}: the member set last; '?' when neither is."""
    found: int | str = "?"
    for field, wire, value in each(dim):
        if field == _DIM_VALUE and wire == _VARINT:
            found = _signed(value, 64)  # type: ignore[arg-type]
        elif field == _DIM_PARAM and wire == _LENGTH:
            found = _decode(value)  # type: ignore[arg-type]
    return found


# -- protobuf semantics over merged messages ------------------------------------------------------------------

def each(message: Message) -> Iterator[tuple[int, int, int | memoryview]]:
    """Every field of the merged message, in wire order."""
    for chunk in message:
        yield from _fields(chunk)


def submessage(message: Message, number: int) -> Message | None:
    """A singular message field: every occurrence merged (None when absent)."""
    chunks = tuple(value for field, wire, value in each(message) if field == number and wire == _LENGTH)
    return chunks or None  # type: ignore[return-value]


def repeated(message: Message | None, number: int) -> list[Message]:
    """A repeated message (or string) field: one element per occurrence."""
    if message is None:
        return []
    return [(value,) for field, wire, value in each(message) if field == number and wire == _LENGTH]  # type: ignore[misc]


def string(message: Message, number: int) -> str:
    """A singular string field: the last occurrence ('' when absent)."""
    found: memoryview | None = None
    for field, wire, value in each(message):
        if field == number and wire == _LENGTH:
            found = value  # type: ignore[assignment]
    return _decode(found) if found is not None else ""


def int32(message: Message, number: int) -> int | None:
    """A singular int32 field (varint): the last occurrence, truncated to 32 bits like protobuf does."""
    found = None
    for field, wire, value in each(message):
        if field == number and wire == _VARINT:
            found = _signed(value, 32)  # type: ignore[arg-type]
    return found


def oneof_message(message: Message, members: tuple[int, ...]) -> tuple[int | None, Message | None]:
    """(member set last, its merged message): an occurrence of another member clears what came before."""
    current: int | None = None
    chunks: list[memoryview] = []
    for field, _wire, value in each(message):
        if field in members and isinstance(value, memoryview):
            if field != current:
                current, chunks = field, []
            chunks.append(value)
    return current, (tuple(chunks) if chunks else None)


def _signed(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value): ints for varint/fixed fields, a sub-view for length-delimited ones."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise WireError("field number 0")
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
            return result & ((1 << 64) - 1), pos
        shift += 7
    raise WireError("truncated varint")


def _decode(value: memoryview) -> str:
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError("a name is not UTF-8") from exc


# Single-chunk forms, public for the runtime's op census (edge_runtime/census.py): one protobuf reader.
# `text` and `dim` follow the rules above (last occurrence / last oneof member); `length_fields` lists every
# occurrence (a repeated field; a singular message field should be read with `submessage`, which merges).
fields = _fields


def length_fields(buf: memoryview, number: int) -> list[memoryview]:
    return [value for field, wire, value in _fields(buf) if field == number and wire == _LENGTH]  # type: ignore[misc]


def text(buf: memoryview, number: int) -> str:
    return string((buf,), number)


def dim(buf: memoryview) -> int | str:
    return message_dim((buf,))

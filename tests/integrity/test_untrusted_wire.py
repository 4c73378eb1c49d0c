"""onnx_wire reads a model.onnx the way protobuf does (onnx's parser, onnxruntime's parser): fuzzed against
onnx with duplicated, split and interleaved fields, so the verifier never sees a different graph than the
loader. Also: a crafted model.onnx whose second `graph` occurrence (merged by protobuf) or a repeated `value`
inside an external-data entry (last wins) points outside the folder is refused."""

from __future__ import annotations

from typing import Any

import onnx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from phi3_edge.onnx_wire import ELEM_TYPES, WireError, read_model


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def ld(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def vi(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def join(parts: list[bytes]) -> bytes:
    return b"".join(parts)


NAMES = st.sampled_from(["a", "b", "x", "past", "logits"])
KEYS = st.sampled_from(["location", "offset", "length", "checksum"])
VALUES = st.sampled_from(["w.data", "../secret", "/etc/passwd", "0", "16", "7"])

entry = st.lists(st.one_of(KEYS.map(lambda k: ld(1, k.encode())), VALUES.map(lambda v: ld(2, v.encode())),
                           st.just(vi(1, 3))), max_size=4).map(join)
tensor = st.lists(st.one_of(entry.map(lambda e: ld(13, e)), NAMES.map(lambda n: ld(8, n.encode())),
                            st.just(vi(2, 1)), st.just(vi(14, 1))), max_size=5).map(join)
sparse = st.lists(st.one_of(tensor.map(lambda t: ld(1, t)), tensor.map(lambda t: ld(2, t))), max_size=3).map(join)
dim = st.lists(st.one_of(st.integers(-3, 300).map(lambda v: vi(1, v)), NAMES.map(lambda n: ld(2, n.encode())),
                         st.just(ld(1, b"\x01")), st.just(ld(3, b"d"))), max_size=3).map(join)
shape = st.lists(dim.map(lambda d: ld(1, d)), max_size=3).map(join)
tensor_type = st.lists(st.one_of(st.sampled_from([0, 1, 7, 10, 99]).map(lambda e: vi(1, e)),
                                 shape.map(lambda s: ld(2, s))), max_size=4).map(join)
type_proto = st.lists(st.one_of(tensor_type.map(lambda t: ld(1, t)), st.just(ld(4, b"")), st.just(ld(8, b"")),
                                st.just(ld(6, b"den"))), max_size=4).map(join)
value_info = st.lists(st.one_of(NAMES.map(lambda n: ld(1, n.encode())), type_proto.map(lambda t: ld(2, t)),
                                st.just(vi(1, 4))), max_size=4).map(join)


def graphs(depth: int) -> st.SearchStrategy[bytes]:
    sub = graphs(depth - 1) if depth > 0 else st.just(b"")
    attribute = st.lists(st.one_of(NAMES.map(lambda n: ld(1, n.encode())), tensor.map(lambda t: ld(5, t)),
                                   tensor.map(lambda t: ld(10, t)), sparse.map(lambda s: ld(22, s)),
                                   sparse.map(lambda s: ld(23, s)), sub.map(lambda g: ld(6, g)),
                                   sub.map(lambda g: ld(11, g))), max_size=4).map(join)
    node = st.lists(st.one_of(attribute.map(lambda a: ld(5, a)), st.just(ld(4, b"Constant"))), max_size=3).map(join)
    return st.lists(st.one_of(value_info.map(lambda v: ld(11, v)), value_info.map(lambda v: ld(12, v)),
                              tensor.map(lambda t: ld(5, t)), sparse.map(lambda s: ld(15, s)),
                              node.map(lambda n: ld(1, n)), st.just(vi(5, 1))), max_size=6).map(join)


function = st.lists(graphs(0).map(lambda g: ld(7, g)), max_size=2).map(join)  # FunctionProto.node: NodeProto
models = st.lists(st.one_of(graphs(1).map(lambda g: ld(7, g)), st.just(vi(7, 2)), st.just(vi(1, 8)),
                            function.map(lambda f: ld(25, f))), min_size=1, max_size=4).map(join)


def expected(model: onnx.ModelProto) -> tuple[dict[str, Any], list[tuple[str, int, int]]]:
    """What read_model must return, computed from onnx's own parse."""
    io: dict[str, Any] = {}
    for value in [*model.graph.input, *model.graph.output]:
        if value.type.WhichOneof("value") != "tensor_type":
            io[value.name] = ("?", [])
            continue
        kind = value.type.tensor_type
        dims = [d.dim_value if d.WhichOneof("value") == "dim_value" else
                d.dim_param if d.WhichOneof("value") == "dim_param" else "?" for d in kind.shape.dim]
        io[value.name] = (ELEM_TYPES.get(kind.elem_type, f"type{kind.elem_type}"), dims)
    external = []
    for tensor in _tensors(model):
        entries = {e.key: e.value for e in tensor.external_data}
        if "location" in entries:
            offset, length = entries.get("offset", "0"), entries.get("length", "0")
            if not (offset.isdigit() and length.isdigit()):
                raise ValueError("not numbers")
            external.append((entries["location"], int(offset), int(length)))
    return io, external


def _tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    found: list[onnx.TensorProto] = []

    def sparse(s: onnx.SparseTensorProto) -> None:
        found.extend(part for name, part in (("values", s.values), ("indices", s.indices)) if s.HasField(name))

    def graph(g: onnx.GraphProto) -> None:
        found.extend(g.initializer)
        for s in g.sparse_initializer:
            sparse(s)
        nodes(g.node)

    def nodes(ns: Any) -> None:
        for node in ns:
            for a in node.attribute:
                if a.HasField("t"):
                    found.append(a.t)
                found.extend(a.tensors)
                if a.HasField("sparse_tensor"):
                    sparse(a.sparse_tensor)
                for s in a.sparse_tensors:
                    sparse(s)
                if a.HasField("g"):
                    graph(a.g)
                for g in a.graphs:
                    graph(g)

    graph(model.graph)
    for f in model.functions:
        nodes(f.node)
    return found


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(models)
def test_the_reader_agrees_with_onnx_on_any_field_layout(data: bytes) -> None:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception:  # noqa: BLE001  (onnx rejects it: nothing to compare)
        assume(False)
    assume(model.HasField("graph"))
    try:
        want = expected(model)
    except ValueError:
        with pytest.raises(WireError):
            read_model(memoryview(data))
        return
    io, external = read_model(memoryview(data))
    assert io == want[0]
    assert sorted(external) == sorted(want[1])


def entry_bytes(key: str, *values: str) -> bytes:
    return ld(1, key.encode()) + b"".join(ld(2, v.encode()) for v in values)


def test_a_second_graph_occurrence_is_merged_not_ignored() -> None:
    first = ld(5, ld(13, entry_bytes("location", "w.data")))
    second = ld(5, ld(13, entry_bytes("location", "../secret")))
    data = ld(7, first) + ld(7, second)
    assert sorted(read_model(memoryview(data))[1]) == [("../secret", 0, 0), ("w.data", 0, 0)]


def test_the_last_value_of_an_entry_wins() -> None:
    data = ld(7, ld(5, ld(13, entry_bytes("location", "w.data", "../secret"))))
    assert read_model(memoryview(data))[1] == [("../secret", 0, 0)]
    parsed = onnx.ModelProto.FromString(data)
    assert parsed.graph.initializer[0].external_data[0].value == "../secret"  # what onnx (and ORT) read

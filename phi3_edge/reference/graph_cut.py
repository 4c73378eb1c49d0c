"""Cut a finished artifact's decoder graph into segments: embedding, one per layer, final norm, lm_head chunks.

A segment is the set of nodes that lie between some cut values and some outputs, with the artifact's own
initializers still pointing into its model.onnx.data. Run as its own ORT session, a segment uses the very
kernels of the whole artifact (MatMulNBits at accuracy level 4 quantizes its activations to int8; numpy
could only approximate that), and loads only that segment's weights.

    input_ids ─► [embed] ─► x0 ─► [layer 0] ─► (x1, r1) ─► ... ─► [layer L-1] ─► (xL, rL) ─► [norm] ─► normed
    normed ─► [lm_head rows v0..v1] ─► logits[..., v0:v1]        (MatMulNBits B/scales/zero points sliced by row)

The cut values are the inputs of the boundary nodes the exporter names (decoder.py):
`model.layers.{i}/input_layernorm` and `model/norm`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from phi3_edge.errors import ArtifactError

ROW_SLICED_OPS = {"MatMulNBits"}  # lm_head ops whose weights are row-major by output feature


def boundary(model: onnx.ModelProto, name: str, where: str) -> onnx.NodeProto:
    """The node named `name`, or `name_<n>` (GraphBuilder's uniquifying suffix)."""
    pattern = re.compile(re.escape(name) + r"(_\d+)?")
    for node in model.graph.node:
        if pattern.fullmatch(node.name):
            return node  # type: ignore[no-any-return]
    raise ArtifactError(f"no node {name!r}: not a phi3-edge decoder graph (the streamed evaluation cuts there)",
                        where)


def producers(model: onnx.ModelProto) -> dict[str, int]:
    return {out: index for index, node in enumerate(model.graph.node) for out in node.output if out}


def segment(model: onnx.ModelProto, cuts: Sequence[str], outputs: Sequence[str], elem_type: int,
            index: dict[str, int]) -> onnx.ModelProto:
    """The nodes needed for `outputs` given `cuts` as inputs; graph inputs they reach stay inputs."""
    graph = model.graph
    wanted: set[int] = set()
    stack = list(outputs)
    stop = set(cuts)
    while stack:
        value = stack.pop()
        if value in stop or value not in index or index[value] in wanted:
            continue
        wanted.add(index[value])
        stack.extend(_reads(graph.node[index[value]]))
    nodes = [graph.node[i] for i in sorted(wanted)]
    used = {name for node in nodes for name in _reads(node)} | set(outputs)
    inputs = [helper.make_tensor_value_info(name, elem_type, None) for name in cuts]
    inputs += [i for i in graph.input if i.name in used and i.name not in stop]
    initializers = [t for t in graph.initializer if t.name in used]
    outs = [helper.make_tensor_value_info(name, elem_type, None) for name in outputs]
    sub = helper.make_graph(nodes, f"{graph.name}_segment", inputs, outs, initializers)
    return helper.make_model(sub, opset_imports=list(model.opset_import), ir_version=model.ir_version)


def head_node(model: onnx.ModelProto, logits: str, index: dict[str, int]) -> onnx.NodeProto:
    return model.graph.node[index[logits]]  # type: ignore[no-any-return]


def row_slice(model: onnx.ModelProto, node: onnx.NodeProto, start: int, stop: int, logits: str) -> onnx.ModelProto:
    """A one-node model computing logits[..., start:stop] with `node`'s weights cut to rows [start, stop)."""
    by_name = {t.name: t for t in model.graph.initializer}
    x, *weights = node.input
    sliced = [_slice_rows(by_name[w], start, stop) for w in weights if w]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    attrs["N"] = stop - start
    elem = _elem_type(model, logits)
    one = helper.make_node(node.op_type, [x, *[t.name for t in sliced]], [logits], name=node.name,
                           domain=node.domain, **attrs)
    graph = helper.make_graph([one], "lm_head_chunk", [helper.make_tensor_value_info(x, elem, None)],
                              [helper.make_tensor_value_info(logits, elem, None)], sliced)
    return helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)


def _slice_rows(tensor: TensorProto, start: int, stop: int) -> TensorProto:
    """Rows [start, stop) of an initializer: an external one by offset and length, an inline one by value."""
    if tensor.data_location != TensorProto.EXTERNAL:
        return numpy_helper.from_array(numpy_helper.to_array(tensor)[start:stop], tensor.name)
    info = {entry.key: entry.value for entry in tensor.external_data}
    dims = list(tensor.dims)
    row_bytes = int(info["length"]) // dims[0]
    out = TensorProto(name=tensor.name, dims=[stop - start, *dims[1:]], data_type=tensor.data_type)
    out.data_location = TensorProto.EXTERNAL
    offset = int(info.get("offset", "0")) + start * row_bytes
    for key, value in (("location", info["location"]), ("offset", str(offset)),
                       ("length", str((stop - start) * row_bytes))):
        entry = out.external_data.add()
        entry.key, entry.value = key, value
    return out


def _elem_type(model: onnx.ModelProto, name: str) -> int:
    for value in model.graph.output:
        if value.name == name:
            return int(value.type.tensor_type.elem_type)
    return TensorProto.FLOAT


def io_elem_type(model: onnx.ModelProto, logits: str) -> int:
    return _elem_type(model, logits)


def _reads(node: onnx.NodeProto) -> Iterable[str]:
    """A node's inputs, and the outer-scope names its subgraphs read (the LongRoPE If reads the caches)."""
    yield from (name for name in node.input if name)
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            for inner in attribute.g.node:
                yield from _reads(inner)


def numpy_dtype(elem_type: int) -> type[np.floating]:
    return np.float16 if elem_type == TensorProto.FLOAT16 else np.float32

"""A small ONNX graph builder: ops in, value names out.

Blocks call `GraphBuilder.op(...)` with value names and get value names back; the builder only collects
nodes and initializers in order. Weights never pass through here as arrays: they are streamed to the
external data file by `TensorWriter` and arrive as TensorProtos that point into it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal, overload

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MS_DOMAIN = "com.microsoft"
OPSET = 21  # ONNX opset: stable MatMul/Gather/Split semantics, and what ORT's contrib ops pair with
MS_OPSET = 1


class GraphBuilder:
    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._names: Counter[str] = Counter()
        self._constants: dict[tuple[str, bytes, tuple[int, ...]], str] = {}

    def unique(self, hint: str) -> str:
        self._names[hint] += 1
        count = self._names[hint]
        return hint if count == 1 else f"{hint}_{count - 1}"

    # Typed by overloads: no `outputs` -> one name; `outputs=2` or a list of names -> a tuple (a one-name list
    # returns that name at runtime; callers that pass one ignore the result).
    @overload
    def op(self, op_type: str, inputs: Sequence[str], *, name: str | None = None,
           outputs: int | Sequence[str], domain: str = "", **attrs: object) -> tuple[str, ...]: ...

    @overload
    def op(self, op_type: str, inputs: Sequence[str], *, name: str | None = None, outputs: Literal[1] = 1,
           domain: str = "", **attrs: object) -> str: ...

    def op(
        self,
        op_type: str,
        inputs: Sequence[str],
        *,
        name: str | None = None,
        outputs: int | Sequence[str] = 1,
        domain: str = "",
        **attrs: object,
    ) -> str | tuple[str, ...]:
        """Append one node; returns its output name (or a tuple when it has several, `outputs=2` or names)."""
        node_name = self.unique(name or op_type)
        if isinstance(outputs, int):
            output_names = [f"{node_name}/out{i}" if outputs > 1 else f"{node_name}/out" for i in range(outputs)]
        else:
            output_names = list(outputs)
        attributes: dict[str, Any] = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op_type, list(inputs), output_names, name=node_name, domain=domain,
                                           **attributes))
        return output_names[0] if len(output_names) == 1 else tuple(output_names)

    def rename_value(self, old: str, new: str) -> None:
        """Give a produced value its contract name (e.g. the lm_head MatMul output becomes `logits`)."""
        for node in self.nodes:
            node.output[:] = [new if out == old else out for out in node.output]
            node.input[:] = [new if inp == old else inp for inp in node.input]

    def add_initializer(self, tensor: TensorProto) -> str:
        self.initializers.append(tensor)
        return tensor.name

    def const(self, value: np.ndarray | Sequence[int] | int, dtype: np.dtype | type = np.int64) -> str:
        """A small inline constant initializer, shared between all users of the same value."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.tobytes(), array.shape)
        if key not in self._constants:
            name = self.unique(f"const/{array.dtype.name}_{'x'.join(map(str, array.shape)) or 'scalar'}")
            self.initializers.append(numpy_helper.from_array(array, name))
            self._constants[key] = name
        return self._constants[key]

    def model(
        self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto], doc: str = ""
    ) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, inputs, outputs, self.initializers, doc_string=doc)
        opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, MS_OPSET)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="phi3-edge")
        model.ir_version = 10  # what onnxruntime >= 1.20 reads; opset 21 needs IR >= 10
        return model


ONNX_DTYPES: dict[str, int] = {
    "float32": TensorProto.FLOAT,
    "float16": TensorProto.FLOAT16,
    "int64": TensorProto.INT64,
    "int32": TensorProto.INT32,
    "uint8": TensorProto.UINT8,
    "int8": TensorProto.INT8,
}


def value_info(name: str, dtype: str, shape: Sequence[str | int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, ONNX_DTYPES[dtype], list(shape))

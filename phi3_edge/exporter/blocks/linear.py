"""Linear layers: the one seam between float and quantized exports.

A `Linear` turns (x, checkpoint weight name, in, out) into a graph value. The float version emits a MatMul
on a transposed initializer; quantize/ provides MatMulNBits versions with the same signature.
"""

from __future__ import annotations

from typing import Protocol

from phi3_edge.exporter.graph import GraphBuilder
from phi3_edge.exporter.weight_source import WeightSource


class Linear(Protocol):
    def __call__(self, g: GraphBuilder, x: str, hf_name: str, in_features: int, out_features: int) -> str: ...


class FloatLinear:
    def __init__(self, source: WeightSource) -> None:
        self.source = source

    def __call__(self, g: GraphBuilder, x: str, hf_name: str, in_features: int, out_features: int) -> str:
        onnx_name = hf_name.removesuffix(".weight") + ".MatMul.weight"
        weight = g.add_initializer(self.source.transposed(hf_name, out_features, in_features, onnx_name))
        out = g.op("MatMul", [x, weight], name=hf_name.removesuffix(".weight") + "/MatMul")  # (B, S, out)
        assert isinstance(out, str)
        return out

"""Linear layers: the one seam between float and quantized exports.

A `Linear` turns (x, checkpoint weight name, in, out) into a graph value. The float version emits a MatMul
on a transposed initializer; exporter/blocks/nbits.py emits MatMulNBits with the same signature, and
exporter/blocks/recipe_linear.py picks one of them per checkpoint tensor, as the export's QuantRecipe says.
"""

from __future__ import annotations

from typing import Protocol

from phi3_edge.exporter.graph import GraphBuilder
from phi3_edge.exporter.weight_source import WeightSource

Rows = tuple[int, int]  # a range of output features (rows of the checkpoint's (out, in) weight)


class Linear(Protocol):
    def __call__(self, g: GraphBuilder, x: str, hf_name: str, in_features: int, out_features: int, *,
                 rows: Rows | None = None, label: str | None = None) -> str:
        """x @ W[rows].T; `rows` selects part of a packed weight (e.g. Q out of qkv_proj), named by `label`."""
        ...


def node_prefix(hf_name: str, label: str | None) -> str:
    """model.layers.0.self_attn.qkv_proj.weight, label q -> model.layers.0.self_attn.qkv_proj.q"""
    stem = hf_name.removesuffix(".weight")
    return f"{stem}.{label}" if label else stem


class FloatLinear:
    def __init__(self, source: WeightSource) -> None:
        self.source = source

    def __call__(self, g: GraphBuilder, x: str, hf_name: str, in_features: int, out_features: int, *,
                 rows: Rows | None = None, label: str | None = None) -> str:
        stem = node_prefix(hf_name, label)
        tensor = self.source.transposed(hf_name, out_features, in_features, f"{stem}.MatMul.weight", rows=rows)
        return g.op("MatMul", [x, g.add_initializer(tensor)], name=f"{stem}/MatMul")  # (B, S, out)

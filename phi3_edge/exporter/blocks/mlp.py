"""Phi-3 MLP: one packed gate_up projection, SiLU-gated.

    x ─► MatMul(gate_up) ─► Split ─┬─ gate ─► Sigmoid ─► Mul(gate) ─┐
                                   └─ up ──────────────────────────► Mul ─► MatMul(down) ─► y
"""

from __future__ import annotations

from phi3_edge.exporter.blocks.linear import Linear
from phi3_edge.exporter.graph import GraphBuilder


def mlp(g: GraphBuilder, x: str, linear: Linear, prefix: str, hidden: int, intermediate: int) -> str:
    gate_up = linear(g, x, f"{prefix}.gate_up_proj.weight", hidden, 2 * intermediate)  # (B, S, 2I)
    gate, up = g.op("Split", [gate_up], name=f"{prefix}/Split", outputs=2, axis=-1, num_outputs=2)  # 2x (B, S, I)
    sigmoid = g.op("Sigmoid", [gate], name=f"{prefix}/Sigmoid")
    silu = g.op("Mul", [gate, sigmoid], name=f"{prefix}/SiLU")
    gated = g.op("Mul", [silu, up], name=f"{prefix}/Gate")
    return linear(g, gated, f"{prefix}.down_proj.weight", intermediate, hidden)  # (B, S, H)

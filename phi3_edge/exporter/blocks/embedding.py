"""Token embedding: a Gather from the (vocab, hidden) table."""

from __future__ import annotations

from phi3_edge.exporter.graph import GraphBuilder


def embed_tokens(g: GraphBuilder, input_ids: str, table: str) -> str:
    out = g.op("Gather", [table, input_ids], name="embed_tokens", axis=0)  # (B, S, H)
    assert isinstance(out, str)
    return out

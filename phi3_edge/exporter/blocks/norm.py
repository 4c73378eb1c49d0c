"""RMSNorm as ORT's fused SimplifiedLayerNormalization / SkipSimplifiedLayerNormalization.

    x ──► SimplifiedLayerNormalization(weight) ──► y

    x ──┐
        ├─► SkipSimplifiedLayerNormalization(weight) ──► y      (normalized)
    skip┘                                          └──► x+skip (the residual stream, output 3)
"""

from __future__ import annotations

from phi3_edge.exporter.graph import MS_DOMAIN, GraphBuilder


def rms_norm(g: GraphBuilder, x: str, weight: str, eps: float, name: str) -> str:
    out = g.op("SimplifiedLayerNormalization", [x, weight], name=name, axis=-1, epsilon=eps, stash_type=1)
    assert isinstance(out, str)
    return out


def skip_rms_norm(g: GraphBuilder, x: str, skip: str, weight: str, eps: float, name: str) -> tuple[str, str]:
    """Returns (normalized, residual sum); the fused op saves one Add and one pass over the activations."""
    node = g.unique(name)
    normed, residual = f"{node}/out", f"{node}/residual"
    g.op("SkipSimplifiedLayerNormalization", [x, skip, weight], name=node, domain=MS_DOMAIN,
         outputs=[normed, "", "", residual], epsilon=eps)
    return normed, residual

"""Self-attention with a KV cache, on ORT's GroupQueryAttention (GQA) kernel.

Fused form (rotary inside GQA, one packed QKV MatMul):

    x ─► MatMul(qkv) ─► GroupQueryAttention(do_rotary=1, cos, sin, past k/v) ─► MatMul(o) ─► y
                                        └──► present k/v

Unfused-rotary form, for configs outside the fused kernel's constraints (and targets that ask for it):

    x ─► MatMul(qkv) ─► Split ─┬─ q ─► RotaryEmbedding(position_ids) ─┐
                               ├─ k ─► RotaryEmbedding(position_ids) ─┼─► GroupQueryAttention(do_rotary=0) ─► ...
                               └─ v ──────────────────────────────────┘
"""

from __future__ import annotations

from dataclasses import dataclass

from phi3_edge.exporter.blocks.linear import Linear
from phi3_edge.exporter.graph import MS_DOMAIN, GraphBuilder


@dataclass(frozen=True)
class AttentionShape:
    hidden: int
    num_heads: int
    kv_heads: int
    head_dim: int
    rotary_dim: int
    local_window: int  # GQA local_window_size; -1 = full causal attention
    fused_rotary: bool
    packed_qkv: bool = True  # False: three MatMuls on row slices of the checkpoint's packed qkv_proj


@dataclass(frozen=True)
class KvCache:
    past_key: str
    past_value: str
    present_key: str
    present_value: str


@dataclass(frozen=True)
class AttentionInputs:
    seqlens_k: str  # int32 (B,): total tokens per row minus one, from attention_mask
    total_len: str  # int32 scalar: attention_mask width
    cos_cache: str
    sin_cache: str
    position_ids: str | None  # int64 (B, S); only the unfused form reads it


def attention(g: GraphBuilder, x: str, linear: Linear, prefix: str, shape: AttentionShape, cache: KvCache,
              inputs: AttentionInputs) -> str:
    q_size, kv_size = shape.num_heads * shape.head_dim, shape.kv_heads * shape.head_dim
    if shape.packed_qkv:
        qkv = linear(g, x, f"{prefix}.qkv_proj.weight", shape.hidden, q_size + 2 * kv_size)  # (B, S, (N+2Nkv) D)
        if shape.fused_rotary:
            query, key, value = qkv, "", ""  # GQA splits the packed tensor itself
        else:
            query, key, value = _split(g, qkv, prefix, shape)
    else:
        query, key, value = _separate_projections(g, x, linear, prefix, shape)
    if not shape.fused_rotary:
        query, key = _rotate(g, query, key, prefix, shape, inputs)
    out, _, _ = g.op(
        "GroupQueryAttention",
        [query, key, value, cache.past_key, cache.past_value, inputs.seqlens_k, inputs.total_len,
         *((inputs.cos_cache, inputs.sin_cache) if shape.fused_rotary else ())],  # GQA checks caches if given
        name=f"{prefix}/GroupQueryAttention",
        domain=MS_DOMAIN,
        outputs=[f"{prefix}/attn_out", cache.present_key, cache.present_value],  # (B, S, N D), 2x (B, Nkv, T, D)
        num_heads=shape.num_heads,
        kv_num_heads=shape.kv_heads,
        scale=shape.head_dim ** -0.5,
        local_window_size=shape.local_window,
        do_rotary=int(shape.fused_rotary),
        rotary_interleaved=0,
    )
    return linear(g, out, f"{prefix}.o_proj.weight", q_size, shape.hidden)  # (B, S, H)


def _split(g: GraphBuilder, qkv: str, prefix: str, shape: AttentionShape) -> tuple[str, str, str]:
    q_size, kv_size = shape.num_heads * shape.head_dim, shape.kv_heads * shape.head_dim
    sizes = g.const([q_size, kv_size, kv_size])
    query, key, value = g.op("Split", [qkv, sizes], name=f"{prefix}/SplitQKV", outputs=3, axis=-1)
    return query, key, value  # (B, S, N D), (B, S, Nkv D), (B, S, Nkv D)


def _separate_projections(g: GraphBuilder, x: str, linear: Linear, prefix: str,
                          shape: AttentionShape) -> tuple[str, str, str]:
    """Q, K and V as three MatMuls over row ranges of the checkpoint's packed qkv_proj weight."""
    q_size, kv_size = shape.num_heads * shape.head_dim, shape.kv_heads * shape.head_dim
    bounds = {"q": (0, q_size), "k": (q_size, q_size + kv_size), "v": (q_size + kv_size, q_size + 2 * kv_size)}
    return tuple(  # type: ignore[return-value]
        linear(g, x, f"{prefix}.qkv_proj.weight", shape.hidden, stop - start, rows=(start, stop), label=label)
        for label, (start, stop) in bounds.items()
    )


def _rotate(g: GraphBuilder, query: str, key: str, prefix: str, shape: AttentionShape,
            inputs: AttentionInputs) -> tuple[str, str]:
    assert inputs.position_ids is not None, "the unfused rotary form needs position_ids"
    rotated = []
    for tensor, heads, label in ((query, shape.num_heads, "q"), (key, shape.kv_heads, "k")):
        rotated.append(g.op(
            "RotaryEmbedding", [tensor, inputs.position_ids, inputs.cos_cache, inputs.sin_cache],
            name=f"{prefix}/Rotary_{label}", domain=MS_DOMAIN,
            num_heads=heads, rotary_embedding_dim=shape.rotary_dim, interleaved=0,
        ))  # (B, S, heads * D), first rotary_dim of each head rotated
    return rotated[0], rotated[1]

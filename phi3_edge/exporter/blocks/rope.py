"""Rotary position caches: plain RoPE, partial rotary, and LongRoPE's short/long switch.

The caches are (positions, rotary_dim / 2) cos and sin tables, the layout GroupQueryAttention and
RotaryEmbedding read (non-interleaved halves, as transformers' rotate_half). They are computed exactly as
transformers computes them, in float32, so prefill and decode match it bit for bit in the angles.

LongRoPE picks the factor set once per forward call from the total length, like transformers'
`longrope_frequency_update` (max(position_ids) + 1 > original_max_position_embeddings): keys already in the
cache keep the factors they were rotated with, so a generation that crosses the boundary matches too.

    total_len ─► Greater(original) ─► If ─┬─ then: cos/sin_long  (long factors, max_position_embeddings rows)
                                          └─ else: cos/sin_short (short factors)

Without an If node (DirectML graph capture cannot run one), the two tables are stacked and the positions
are shifted into the long half instead; this needs explicit position_ids, so only the unfused rotary form:

    cos/sin = [short; long]   (2 * max_position_embeddings rows)
    position_ids + max_position_embeddings * Cast(Greater(total_len, original)) ─► RotaryEmbedding
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from onnx import TensorProto, helper

from phi3_edge.exporter.config import Phi3Spec
from phi3_edge.exporter.graph import GraphBuilder

ArrayInitializer = Callable[[str, np.ndarray], str]  # (name, array) -> initializer name


def inverse_frequencies(spec: Phi3Spec, factors: Sequence[float] | None) -> np.ndarray:
    """(rotary_dim / 2,) float32, computed in the same order and precision as transformers."""
    exponents = np.arange(0, spec.rotary_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(spec.rotary_dim)
    base_powers = np.power(np.float32(spec.rope_theta), exponents, dtype=np.float32)
    if factors is not None:
        base_powers = np.asarray(factors, dtype=np.float32) * base_powers
    inverse: np.ndarray = (np.float32(1.0) / base_powers).astype(np.float32)
    return inverse


def cos_sin_tables(spec: Phi3Spec, length: int, factors: Sequence[float] | None,
                   scale: float) -> tuple[np.ndarray, np.ndarray]:
    positions = np.arange(length, dtype=np.float32)[:, None]  # (T, 1)
    angles = positions * inverse_frequencies(spec, factors)[None, :]  # (T, rotary_dim / 2)
    return ((np.cos(angles) * np.float32(scale)).astype(np.float32),
            (np.sin(angles) * np.float32(scale)).astype(np.float32))


def stacked_rotary_caches(g: GraphBuilder, spec: Phi3Spec, total_len: str, position_ids: str, dtype: str,
                          initializer: ArrayInitializer) -> tuple[str, str, str]:
    """LongRoPE without an If node: (cos, sin, shifted position_ids) over the stacked [short; long] tables."""
    rope = spec.longrope
    assert rope is not None
    length = spec.max_position_embeddings
    long_cos, long_sin = cos_sin_tables(spec, length, rope.long_factor, rope.attention_factor)
    short_cos, short_sin = cos_sin_tables(spec, length, rope.short_factor, rope.attention_factor)
    cos = initializer("cos_cache_stacked", np.concatenate([short_cos, long_cos]).astype(dtype))  # (2T, R/2)
    sin = initializer("sin_cache_stacked", np.concatenate([short_sin, long_sin]).astype(dtype))  # (2T, R/2)
    use_long = g.op("Greater", [total_len, g.const(rope.original_max_position_embeddings)], name="rope/use_long")
    half = g.op("Cast", [use_long], name="rope/long_half", to=TensorProto.INT64)
    offset = g.op("Mul", [half, g.const(length)], name="rope/offset")
    shifted = g.op("Add", [position_ids, offset], name="rope/shifted_positions")  # (B, S)
    return cos, sin, shifted


def rotary_caches(g: GraphBuilder, spec: Phi3Spec, total_len: str, dtype: str,
                  initializer: ArrayInitializer) -> tuple[str, str]:
    """(cos_cache, sin_cache) graph values for this forward call; total_len is an int64 scalar."""
    length = spec.max_position_embeddings
    rope = spec.longrope
    if rope is None:
        cos, sin = cos_sin_tables(spec, length, None, 1.0)
        return initializer("cos_cache", cos.astype(dtype)), initializer("sin_cache", sin.astype(dtype))
    long_cos, long_sin = cos_sin_tables(spec, length, rope.long_factor, rope.attention_factor)
    short_cos, short_sin = cos_sin_tables(spec, length, rope.short_factor, rope.attention_factor)
    names = [initializer(name, array.astype(dtype)) for name, array in (
        ("cos_cache_long", long_cos), ("sin_cache_long", long_sin),
        ("cos_cache_short", short_cos), ("sin_cache_short", short_sin))]
    original = g.const(rope.original_max_position_embeddings)
    use_long = g.op("Greater", [total_len, original], name="rope/use_long_factors")
    elem = TensorProto.FLOAT16 if dtype == "float16" else TensorProto.FLOAT
    then_branch = _select_branch("rope_long", names[0], names[1], elem)
    else_branch = _select_branch("rope_short", names[2], names[3], elem)
    cos_cache, sin_cache = g.op("If", [use_long], name="rope/select_caches", outputs=["cos_cache", "sin_cache"],
                                then_branch=then_branch, else_branch=else_branch)
    return cos_cache, sin_cache


def _select_branch(name: str, cos: str, sin: str, elem: int) -> object:
    """A subgraph that forwards two outer-scope caches (If branches may read outer initializers)."""
    nodes = [helper.make_node("Identity", [cos], [f"{name}/cos"], name=f"{name}/cos"),
             helper.make_node("Identity", [sin], [f"{name}/sin"], name=f"{name}/sin")]
    outputs = [helper.make_tensor_value_info(f"{name}/cos", elem, None),
               helper.make_tensor_value_info(f"{name}/sin", elem, None)]
    return helper.make_graph(nodes, name, [], outputs)

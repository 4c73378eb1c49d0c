"""Assembles the Phi-3 decoder graph with the KV-cache I/O contract of io_spec.

    input_ids ─► Gather(embed) ─► [layer 0 .. L-1] ─► Slice(last k) ─► SkipSimplifiedLayerNorm(final) ─► lm_head
    logits_to_keep (k; default 0 = every position) ─────────┘                                 logits ◄─┘
    attention_mask ─► ReduceSum-1 ─► seqlens_k ──┐
                  └─► Shape[1] ─► total_len ─────┴─► every GroupQueryAttention (and the LongRoPE If)

    layer i:  residual ─► (Skip)SimplifiedLayerNorm ─► attention ─► SkipSimplifiedLayerNorm ─► mlp ─► next layer
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from phi3_edge import io_spec
from phi3_edge.exporter.blocks.attention import AttentionInputs, AttentionShape, KvCache, attention
from phi3_edge.exporter.blocks.linear import Linear
from phi3_edge.exporter.blocks.mlp import mlp
from phi3_edge.exporter.blocks.norm import rms_norm, skip_rms_norm
from phi3_edge.exporter.blocks.rope import rotary_caches, stacked_rotary_caches
from phi3_edge.exporter.config import Phi3Spec
from phi3_edge.exporter.graph import GraphBuilder, value_info
from phi3_edge.exporter.heads import Heads
from phi3_edge.exporter.weight_source import WeightSource

INLINE_LIMIT_BYTES = 1024  # smaller arrays live in model.onnx; the rest go to the external data file
FUSED_ROTARY_HALF_DIM_MULTIPLE = 8  # GQA's fused rotary kernels vectorize the half-dimension in groups of 8


@dataclass(frozen=True)
class DecoderPlan:
    """Graph-shape choices for one export, derived from the target table and the config."""

    io_dtype: str  # "float32" | "float16"
    fused_rotary: bool  # requested by the target; still subject to the kernel's constraint
    packed_qkv: bool = True  # one QKV MatMul (False: three, for EPs whose attention wants them separate)
    allow_if_node: bool = True  # False: LongRoPE by stacked caches + shifted positions

    def rotary_is_fused(self, spec: Phi3Spec) -> bool:
        if spec.longrope is not None and not self.allow_if_node:
            return False  # the stacked-cache LongRoPE needs explicit positions, i.e. a separate rotary node
        return self.fused_rotary and (spec.rotary_dim // 2) % FUSED_ROTARY_HALF_DIM_MULTIPLE == 0


def local_window_size(spec: Phi3Spec) -> int:
    """transformers attends to keys with q - kv < sliding_window (the query itself included); GQA's
    local_window_size has the same meaning (checked against transformers in the sliding-window parity test)."""
    return spec.sliding_window if spec.sliding_window is not None else -1


def build_decoder(g: GraphBuilder, spec: Phi3Spec, plan: DecoderPlan, source: WeightSource, linear: Linear,
                  heads: Heads, on_layer: Callable[[int], None] = lambda layer: None) -> onnx.ModelProto:
    initializer = _array_initializer(g, source)
    seqlens_k, total_len_i64, total_len = _sequence_lengths(g)
    fused = plan.rotary_is_fused(spec)
    positions = None if fused else _position_ids(g)
    if spec.longrope is not None and not plan.allow_if_node:
        assert positions is not None
        cos, sin, positions = stacked_rotary_caches(g, spec, total_len_i64, positions, plan.io_dtype, initializer)
    else:
        cos, sin = rotary_caches(g, spec, total_len_i64, plan.io_dtype, initializer)
    inputs = AttentionInputs(seqlens_k, total_len, cos, sin, positions)
    shape = AttentionShape(spec.hidden_size, spec.num_heads, spec.num_kv_heads, spec.head_dim, spec.rotary_dim,
                           local_window_size(spec), fused, plan.packed_qkv)

    hidden = heads.embed(g, io_spec.INPUT_IDS)  # (B, S, H)
    residual: str | None = None
    for layer in range(spec.num_layers):
        prefix = f"model.layers.{layer}"
        norm1 = _norm_weight(g, source, spec, f"{prefix}.input_layernorm.weight")
        if residual is None:
            normed, residual = rms_norm(g, hidden, norm1, spec.rms_norm_eps, f"{prefix}/input_layernorm"), hidden
        else:
            normed, residual = skip_rms_norm(g, hidden, residual, norm1, spec.rms_norm_eps, f"{prefix}/input_layernorm")
        cache = KvCache(io_spec.past_key(layer), io_spec.past_value(layer),
                        io_spec.present_key(layer), io_spec.present_value(layer))
        attn = attention(g, normed, linear, f"{prefix}.self_attn", shape, cache, inputs)
        norm2 = _norm_weight(g, source, spec, f"{prefix}.post_attention_layernorm.weight")
        normed, residual = skip_rms_norm(g, attn, residual, norm2, spec.rms_norm_eps,
                                         f"{prefix}/post_attention_layernorm")
        hidden = mlp(g, normed, linear, f"{prefix}.mlp", spec.hidden_size, spec.intermediate_size)
        on_layer(layer)

    final_norm = _norm_weight(g, source, spec, "model.norm.weight")
    hidden, residual = _kept_positions(g, hidden, residual or hidden)  # (B, S, H) -> (B, k, H)
    normed, _ = skip_rms_norm(g, hidden, residual, final_norm, spec.rms_norm_eps, "model/norm")
    logits = heads.lm_head(g, normed)  # (B, k, V)
    g.rename_value(logits, io_spec.LOGITS)
    return g.model(_graph_inputs(spec, plan), _graph_outputs(spec, plan))


def _sequence_lengths(g: GraphBuilder) -> tuple[str, str, str]:
    """seqlens_k (int32 (B,), tokens per row - 1), total length as int64 and int32 scalars."""
    tokens = g.op("ReduceSum", [io_spec.ATTENTION_MASK, g.const([1])], name="mask/tokens", keepdims=0)  # (B,)
    last = g.op("Sub", [tokens, g.const(1)], name="mask/last_index")
    seqlens_k = g.op("Cast", [last], name="mask/seqlens_k", to=onnx.TensorProto.INT32)
    mask_shape = g.op("Shape", [io_spec.ATTENTION_MASK], name="mask/shape")  # [B, T]
    total_i64 = g.op("Gather", [mask_shape, g.const(1)], name="mask/total_len", axis=0)  # scalar T
    total = g.op("Cast", [total_i64], name="mask/total_len_i32", to=onnx.TensorProto.INT32)
    return seqlens_k, total_i64, total


def _position_ids(g: GraphBuilder) -> str:
    """Positions of the new tokens: cumulative mask count - 1, last S columns (left padding safe)."""
    counts = g.op("CumSum", [io_spec.ATTENTION_MASK, g.const(1)], name="positions/cumsum")  # (B, T)
    positions = g.op("Sub", [counts, g.const(1)], name="positions/all")  # (B, T)
    ids_shape = g.op("Shape", [io_spec.INPUT_IDS], name="positions/ids_shape", start=1, end=2)  # [S]
    start = g.op("Neg", [ids_shape], name="positions/start")  # [-S]
    end = g.const([np.iinfo(np.int64).max])
    return g.op("Slice", [positions, start, end, g.const([1])], name="positions/new")  # (B, S)


def _kept_positions(g: GraphBuilder, hidden: str, residual: str) -> tuple[str, str]:
    """The last logits_to_keep positions of the final norm's two inputs; the default 0 keeps them all.

        logits_to_keep [k] ─► Neg ─► [-k] ─► Slice(axis 1, -k : end) of hidden and residual

    Slice clamps: -0 = 0 starts at the first position, and k >= S also keeps all S. The input is backed by an
    initializer holding the default (io_spec.optional_inputs), so onnxruntime does not constant-fold it away.
    """
    for value, default in io_spec.optional_inputs():  # logits_to_keep's default, under the input's own name
        g.add_initializer(numpy_helper.from_array(np.array([default], dtype=np.int64), value.name))
    start = g.op("Neg", [io_spec.LOGITS_TO_KEEP], name="logits_to_keep/start")  # [-k]
    end, axis = g.const([np.iinfo(np.int64).max]), g.const([1])
    kept = g.op("Slice", [hidden, start, end, axis], name="logits_to_keep/hidden")  # (B, k, H)
    if residual == hidden:  # no layer ran (a test graph): one value, one slice
        return kept, kept
    return kept, g.op("Slice", [residual, start, end, axis], name="logits_to_keep/residual")  # (B, k, H)


def _norm_weight(g: GraphBuilder, source: WeightSource, spec: Phi3Spec, hf_name: str) -> str:
    return g.add_initializer(source.as_is(hf_name, (spec.hidden_size,), hf_name))


def _array_initializer(g: GraphBuilder, source: WeightSource) -> Callable[[str, np.ndarray], str]:
    def initializer(name: str, array: np.ndarray) -> str:
        if array.nbytes <= INLINE_LIMIT_BYTES:
            return g.add_initializer(numpy_helper.from_array(array, name))
        return g.add_initializer(source.writer.write(name, array.shape, array.dtype.name, [array]))
    return initializer


def _graph_inputs(spec: Phi3Spec, plan: DecoderPlan) -> list[onnx.ValueInfoProto]:
    specs = io_spec.decoder_inputs(spec.num_layers, spec.num_kv_heads, spec.head_dim, plan.io_dtype)
    specs += [optional for optional, _ in io_spec.optional_inputs()]  # after the required ones, as io_spec says
    return [value_info(s.name, s.dtype, s.shape) for s in specs]


def _graph_outputs(spec: Phi3Spec, plan: DecoderPlan) -> list[onnx.ValueInfoProto]:
    specs = io_spec.decoder_outputs(spec.num_layers, spec.num_kv_heads, spec.head_dim, spec.vocab_size,
                                    plan.io_dtype)
    return [value_info(s.name, s.dtype, s.shape) for s in specs]


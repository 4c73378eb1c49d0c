"""One decoder layer of the cpu-fp32 graph, built with the exporter's own blocks, weights as graph inputs.

The same blocks (attention, mlp, rms_norm, skip_rms_norm, rotary_caches) and the same op sequence as
exporter/decoder.py's layer loop, so the layer computes what the whole cpu-fp32 graph computes. Weights are
graph *inputs*, not initializers: one session serves every layer (only the fed arrays change), and ORT
reads the caller's numpy buffers in place, so a layer costs its fp32 weights once, never a proto copy plus
an ORT copy plus a prepacked copy.

    hidden ──┐
    residual ┴► (Skip)SimplifiedLayerNorm ─► attention(GQA, empty past) ─► SkipSimplifiedLayerNorm ─► mlp ─► hidden'
                                                                                   └──► residual'
    (layer 0 has no residual input: SimplifiedLayerNorm, residual = hidden)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from phi3_edge.exporter.blocks.attention import AttentionInputs, AttentionShape, KvCache, attention
from phi3_edge.exporter.blocks.linear import Rows, node_prefix
from phi3_edge.exporter.blocks.mlp import mlp
from phi3_edge.exporter.blocks.norm import rms_norm, skip_rms_norm
from phi3_edge.exporter.blocks.rope import rotary_caches
from phi3_edge.exporter.config import Phi3Spec
from phi3_edge.exporter.decoder import DecoderPlan, local_window_size
from phi3_edge.exporter.graph import MS_DOMAIN, GraphBuilder, value_info

LAYER_PREFIX = "layer"  # checkpoint names are written with this prefix; `checkpoint_name` maps it to layer i
HIDDEN, RESIDUAL = "hidden", "residual"
HIDDEN_OUT, RESIDUAL_OUT = "hidden_out", "residual_out"
SEQLENS_K, TOTAL_LEN, TOTAL_LEN_I64, POSITION_IDS = "seqlens_k", "total_len", "total_len_i64", "position_ids"
PAST_KEY, PAST_VALUE = "past_key", "past_value"


@dataclass(frozen=True)
class WeightInput:
    """A Linear's weight as a graph input: x @ W[rows].T, fed in the checkpoint's own (out, in) layout."""

    input_name: str
    hf_name: str  # with LAYER_PREFIX; checkpoint_name(hf_name, layer) is the checkpoint tensor
    in_features: int
    out_features: int
    rows: Rows | None
    x: str  # the graph value the Linear multiplies: what calibration-based quantizers want to see


@dataclass
class LayerGraph:
    model: onnx.ModelProto
    linears: list[WeightInput] = field(default_factory=list)
    norms: list[str] = field(default_factory=list)  # hf names (LAYER_PREFIX) of the norm weights, = input names
    constants: dict[str, np.ndarray] = field(default_factory=dict)  # rotary caches, fed on every run


def checkpoint_name(hf_name: str, layer: int) -> str:
    """layer.self_attn.qkv_proj.weight, 3 -> model.layers.3.self_attn.qkv_proj.weight"""
    return f"model.layers.{layer}." + hf_name.removeprefix(LAYER_PREFIX + ".")


class _InputLinear:
    """The exporter's Linear protocol, with the weight declared as a graph input instead of an initializer."""

    def __init__(self, graph: LayerGraph) -> None:
        self.graph = graph

    def __call__(self, g: GraphBuilder, x: str, hf_name: str, in_features: int, out_features: int, *,
                 rows: Rows | None = None, label: str | None = None) -> str:
        stem = node_prefix(hf_name, label)
        name = f"{stem}.MatMul.weight"
        self.graph.linears.append(WeightInput(name, hf_name, in_features, out_features, rows, x))
        # FusedMatMul(transB=1): MLAS reads B transposed while packing it, so the weight is fed as the
        # checkpoint's (out, in) rows, with no (in, out) copy made per layer (ORT fuses MatMul+Transpose so too).
        out = g.op("FusedMatMul", [x, name], name=f"{stem}/MatMul", domain=MS_DOMAIN, transB=1)  # (B, S, out)
        assert isinstance(out, str)
        return out


def build_layer_graph(spec: Phi3Spec, plan: DecoderPlan, *, first: bool, taps: bool = False) -> LayerGraph:
    """The layer graph; `first`: no residual input (layer 0); `taps`: every Linear's input is an output too."""
    if spec.longrope is not None and not plan.allow_if_node:
        raise ValueError("the streamed reference uses the cpu-fp32 plan (LongRoPE through an If node)")
    g = GraphBuilder("phi3_layer")
    layer = LayerGraph(onnx.ModelProto())
    linear = _InputLinear(layer)

    def constant(name: str, array: np.ndarray) -> str:
        layer.constants[name] = array
        return name

    fused = plan.rotary_is_fused(spec)
    cos, sin = rotary_caches(g, spec, TOTAL_LEN_I64, "float32", constant)
    inputs = AttentionInputs(SEQLENS_K, TOTAL_LEN, cos, sin, None if fused else POSITION_IDS)
    shape = AttentionShape(spec.hidden_size, spec.num_heads, spec.num_kv_heads, spec.head_dim, spec.rotary_dim,
                           local_window_size(spec), fused, plan.packed_qkv)
    eps = spec.rms_norm_eps
    norm1, norm2 = f"{LAYER_PREFIX}.input_layernorm.weight", f"{LAYER_PREFIX}.post_attention_layernorm.weight"
    layer.norms += [norm1, norm2]
    if first:
        normed, residual = rms_norm(g, HIDDEN, norm1, eps, f"{LAYER_PREFIX}/input_layernorm"), HIDDEN
    else:
        normed, residual = skip_rms_norm(g, HIDDEN, RESIDUAL, norm1, eps, f"{LAYER_PREFIX}/input_layernorm")
    cache = KvCache(PAST_KEY, PAST_VALUE, "present_key", "present_value")  # empty past; presents unused
    attn = attention(g, normed, linear, f"{LAYER_PREFIX}.self_attn", shape, cache, inputs)
    normed, residual = skip_rms_norm(g, attn, residual, norm2, eps, f"{LAYER_PREFIX}/post_attention_layernorm")
    hidden = mlp(g, normed, linear, f"{LAYER_PREFIX}.mlp", spec.hidden_size, spec.intermediate_size)
    g.op("Identity", [hidden], name="hidden_out", outputs=[HIDDEN_OUT])
    g.op("Identity", [residual], name="residual_out", outputs=[RESIDUAL_OUT])
    layer.model = g.model(_inputs(spec, layer, first, fused), _outputs(spec, layer, taps))
    return layer


def _inputs(spec: Phi3Spec, layer: LayerGraph, first: bool, fused: bool) -> list[onnx.ValueInfoProto]:
    hidden = spec.hidden_size
    kv = ("batch", spec.num_kv_heads, 0, spec.head_dim)  # (B, Hkv, 0, D): the reference has no past
    specs: list[onnx.ValueInfoProto] = [value_info(HIDDEN, "float32", ("batch", "seq", hidden))]
    if not first:
        specs.append(value_info(RESIDUAL, "float32", ("batch", "seq", hidden)))
    specs += [value_info(SEQLENS_K, "int32", ("batch",)), value_info(TOTAL_LEN, "int32", ()),
              value_info(TOTAL_LEN_I64, "int64", ()),
              value_info(PAST_KEY, "float32", kv), value_info(PAST_VALUE, "float32", kv)]
    if not fused:
        specs.append(value_info(POSITION_IDS, "int64", ("batch", "seq")))
    specs += [value_info(n, "float32", (hidden,)) for n in layer.norms]
    specs += [value_info(w.input_name, "float32", (w.out_features, w.in_features)) for w in layer.linears]
    specs += [value_info(n, "float32", a.shape) for n, a in layer.constants.items()]
    return specs


def _outputs(spec: Phi3Spec, layer: LayerGraph, taps: bool) -> list[onnx.ValueInfoProto]:
    hidden = spec.hidden_size
    outs = [value_info(HIDDEN_OUT, "float32", ("batch", "seq", hidden)),
            value_info(RESIDUAL_OUT, "float32", ("batch", "seq", hidden))]
    if taps:
        seen = {HIDDEN, RESIDUAL}
        for w in layer.linears:
            if w.x not in seen:  # Q, K and V of an unpacked plan share one input
                seen.add(w.x)
                outs.append(value_info(w.x, "float32", ("batch", "seq", w.in_features)))
    return outs

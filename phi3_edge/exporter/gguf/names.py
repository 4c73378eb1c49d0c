"""GGUF tensor names -> the Hugging Face names the graph asks for, and llama.cpp's Q/K row order undone.

llama.cpp's converter reorders the rows of a Llama model's q_proj and k_proj inside each head so that its
interleaved ("NORM") rotary sees pairs (x0, x1), (x2, x3), ...; the Hugging Face layout pairs x_i with
x_{i + D/2} (rotate_half). Per head of D rows:

    GGUF row  h*D + 2*j + i   holds   HF row  h*D + i*(D/2) + j        (i in {0, 1}, j < D/2)

so HF row r is read from GGUF row `unpermuted_rows(...)[r]`: a row gather, exact, no arithmetic (and blocks
run along rows, so it works on quantized rows as stored). Phi-3 files use the NEOX rotary and are not
permuted; their packed attn_qkv / ffn_up (gate|up) keep the Hugging Face packing.
"""

from __future__ import annotations

import re

import numpy as np

_GLOBAL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_qkv.weight": "self_attn.qkv_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
# ffn_up is up_proj in a Llama file and the packed gate|up projection in a Phi-3 file.
_FFN_UP = {"llama": "mlp.up_proj.weight", "phi3": "mlp.gate_up_proj.weight"}
# Read by gguf/spec.py into the Phi3Spec (LongRoPE factors), not weights of the graph.
SPEC_TENSORS = ("rope_factors_long.weight", "rope_factors_short.weight")
_BLOCK = re.compile(r"^blk\.(\d+)\.(.+)$")


def hf_name(gguf_name: str, arch: str) -> str | None:
    """The Hugging Face name of a GGUF tensor, or None for one we do not know (reported as unused)."""
    if gguf_name in _GLOBAL:
        return _GLOBAL[gguf_name]
    match = _BLOCK.match(gguf_name)
    if match is None:
        return None
    layer, rest = match.groups()
    name = _FFN_UP[arch] if rest == "ffn_up.weight" else _LAYER.get(rest)
    return f"model.layers.{layer}.{name}" if name else None


def permuted_heads(gguf_name: str, arch: str, num_heads: int, num_kv_heads: int) -> int | None:
    """How many heads llama.cpp permuted this tensor's rows in (None: not permuted)."""
    if arch != "llama":
        return None
    if gguf_name.endswith(".attn_q.weight"):
        return num_heads
    if gguf_name.endswith(".attn_k.weight"):
        return num_kv_heads
    return None


def unpermuted_rows(rows: int, heads: int) -> np.ndarray:
    """index[r] = the GGUF row that holds Hugging Face row r (see the module docstring)."""
    half = rows // heads // 2
    # HF (head, i, j) at h*2*half + i*half + j comes from GGUF (head, j, i) at h*2*half + 2*j + i.
    head, i, j = np.meshgrid(np.arange(heads), np.arange(2), np.arange(half), indexing="ij")  # (heads, 2, half)
    return (head * 2 * half + 2 * j + i).reshape(-1)

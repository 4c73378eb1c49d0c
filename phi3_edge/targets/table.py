"""The target table: frozen data, target name -> everything that differs between targets.

No `if ep == ...` anywhere else: code reads a named field here, and each field says why it exists.
This module imports no code of ours.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    name: str
    execution_provider: str  # ORT EP name as onnxruntime-genai's provider_options spells it ("cpu", "cuda", "dml")
    weight_format: str  # "fp32" | "fp16" | "int8" | "int4"
    io_dtype: str  # activations, logits and KV cache: "float32" | "float16"
    block_size: int | None  # MatMulNBits quantization block (int4/int8 only)
    accuracy_level: int | None  # MatMulNBits compute precision: 4 = int8 activations on CPU (fast, mobile)
    fused_rotary: bool  # GQA do_rotary=1; DirectML needs a separate RotaryEmbedding with position_ids
    packed_qkv: bool  # one QKV MatMul; DirectML's GQA wants separate Q/K/V
    allow_if_node: bool  # DirectML graph capture cannot run an If node (LongRoPE cache switch)
    ort_format: bool  # mobile: also emit model.ort + required_operators.config
    logits_atol: float  # tolerance against the cpu-fp32 reference on tiny checkpoints
    notes: str


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("cpu-fp32", "cpu", "fp32", "float32", None, None, True, True, True, False, 1e-4,
               "the reference every other target is measured against"),
    )
}


def get_target(name: str) -> Target:
    """Look a target up by name; unknown names raise KeyError listing the valid ones (callers wrap it)."""
    try:
        return TARGETS[name]
    except KeyError:
        raise KeyError(f"unknown target {name!r}; valid targets: {', '.join(TARGETS)}") from None

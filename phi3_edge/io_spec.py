"""The decoder graph's I/O contract, as data.

Imported by the exporter (to name graph inputs/outputs), the runtime (to feed them), the genai_config writer
and the tests. Names and layouts match what onnxruntime-genai expects, so its runtime is a real client of
our artifacts.

    inputs   input_ids                         int64  [batch, seq]
             attention_mask                    int64  [batch, total_seq]
             past_key_values.{i}.key / .value  io     [batch, kv_heads, past_seq, head_dim]
    outputs  logits                            io     [batch, seq, vocab]
             present.{i}.key / .value          io     [batch, kv_heads, total_seq, head_dim]
"""

from __future__ import annotations

from dataclasses import dataclass

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
LOGITS = "logits"
PAST_KEY_TEMPLATE = "past_key_values.%d.key"
PAST_VALUE_TEMPLATE = "past_key_values.%d.value"
PRESENT_KEY_TEMPLATE = "present.%d.key"
PRESENT_VALUE_TEMPLATE = "present.%d.value"

BATCH = "batch_size"
SEQ = "sequence_length"
TOTAL_SEQ = "total_sequence_length"
PAST_SEQ = "past_sequence_length"


def past_key(layer: int) -> str:
    return PAST_KEY_TEMPLATE % layer


def past_value(layer: int) -> str:
    return PAST_VALUE_TEMPLATE % layer


def present_key(layer: int) -> str:
    return PRESENT_KEY_TEMPLATE % layer


def present_value(layer: int) -> str:
    return PRESENT_VALUE_TEMPLATE % layer


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, element type name ("int64", "float32", "float16"), symbolic shape."""

    name: str
    dtype: str
    shape: tuple[str | int, ...]


def decoder_inputs(num_layers: int, kv_heads: int, head_dim: int, io_dtype: str) -> list[TensorSpec]:
    specs = [
        TensorSpec(INPUT_IDS, "int64", (BATCH, SEQ)),
        TensorSpec(ATTENTION_MASK, "int64", (BATCH, TOTAL_SEQ)),
    ]
    for layer in range(num_layers):
        for name in (past_key(layer), past_value(layer)):
            specs.append(TensorSpec(name, io_dtype, (BATCH, kv_heads, PAST_SEQ, head_dim)))
    return specs


def decoder_outputs(num_layers: int, kv_heads: int, head_dim: int, vocab: int, io_dtype: str) -> list[TensorSpec]:
    specs = [TensorSpec(LOGITS, io_dtype, (BATCH, SEQ, vocab))]
    for layer in range(num_layers):
        for name in (present_key(layer), present_value(layer)):
            specs.append(TensorSpec(name, io_dtype, (BATCH, kv_heads, TOTAL_SEQ, head_dim)))
    return specs

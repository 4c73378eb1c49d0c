"""The decoder graph's I/O contract, as data.

Imported by the exporter (to name graph inputs/outputs), the runtime (to feed them), the genai_config writer
and the tests. Names and layouts match what onnxruntime-genai expects, so its runtime is a real client of
our artifacts.

logits_to_keep (HF generate's name) is backed by an initializer of the same name (ONNX IR >= 4: an input with a
default). onnxruntime lists it among a session's overridable initializers, not its inputs, so
onnxruntime-genai, Optimum and any caller that does not feed it see the same graph as before and get logits at
every position (kept_seq = seq). Fed k > 0, the graph keeps only the last min(k, seq) positions before the final
norm and lm_head (kept_seq = min(k, seq)): a prefill that needs only the next token skips (S - 1) x V of the
lm_head. Negative values are not part of the contract.

    inputs   input_ids                         int64  [batch, seq]
             attention_mask                    int64  [batch, total_seq]
             past_key_values.{i}.key / .value  io     [batch, kv_heads, past_seq, head_dim]
             logits_to_keep (optional)         int64  [1]   default 0 = logits at every position
    outputs  logits                            io     [batch, kept_seq, vocab]
             present.{i}.key / .value          io     [batch, kv_heads, total_seq, head_dim]
"""

from __future__ import annotations

from dataclasses import dataclass

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
LOGITS = "logits"
PAST_KEY_TEMPLATE = "past_key_values.%d.key"
LOGITS_TO_KEEP = "logits_to_keep"
KEEP_ALL_LOGITS = 0  # logits_to_keep's default: every position, exactly the graph without the input
PAST_VALUE_TEMPLATE = "past_key_values.%d.value"
PRESENT_KEY_TEMPLATE = "present.%d.key"
PRESENT_VALUE_TEMPLATE = "present.%d.value"

BATCH = "batch_size"
SEQ = "sequence_length"
TOTAL_SEQ = "total_sequence_length"
PAST_SEQ = "past_sequence_length"
KEPT_SEQ = "kept_sequence_length"  # logits' positions: sequence_length, or min(logits_to_keep, it) when fed


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


def optional_inputs() -> list[tuple[TensorSpec, int]]:
    """Inputs a caller may leave out, each with the default its initializer holds; declared after the required
    ones (decoder_inputs), which are what a session's get_inputs() lists."""
    return [(TensorSpec(LOGITS_TO_KEEP, "int64", (1,)), KEEP_ALL_LOGITS)]


def decoder_outputs(num_layers: int, kv_heads: int, head_dim: int, vocab: int, io_dtype: str) -> list[TensorSpec]:
    specs = [TensorSpec(LOGITS, io_dtype, (BATCH, KEPT_SEQ, vocab))]
    for layer in range(num_layers):
        for name in (present_key(layer), present_value(layer)):
            specs.append(TensorSpec(name, io_dtype, (BATCH, kv_heads, TOTAL_SEQ, head_dim)))
    return specs

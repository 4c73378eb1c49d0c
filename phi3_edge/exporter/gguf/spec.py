"""A GGUF file's hyper-parameters -> the same frozen Phi3Spec a config.json gives.

The metadata is rewritten as the config.json transformers would save for it and validated by the very same
spec_from_dict, so a GGUF model and a Hugging Face checkpoint cannot disagree on what a field means.

    {arch}.embedding_length / feed_forward_length / block_count     hidden / intermediate / layers
    {arch}.attention.head_count(_kv), key_length                    heads, KV heads, head_dim
    {arch}.rope.dimension_count, rope.freq_base                     rotary dim (Phi-4-mini: partial), theta
    {arch}.rope.scaling.* + rope_factors_short/long tensors         Phi-3 LongRoPE (phi3 files)
    {arch}.attention.sliding_window                                 Phi-3's sliding window (phi3 files)
    no output.weight                                                tied embeddings
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from phi3_edge.errors import CheckpointError
from phi3_edge.exporter.config import Phi3Spec, spec_from_dict
from phi3_edge.exporter.gguf.reader import GgufFile, open_gguf
from phi3_edge.exporter.gguf.store import architecture

# What the Phi-3 graph has no place for: refused by name rather than silently ignored.
_REFUSED_ROPE_SCALING = ("linear", "yarn", "llama3")


def gguf_spec(path: Path) -> Phi3Spec:
    return spec_from_dict(gguf_config(open_gguf(path)), path)  # the parsed file is shared (see open_gguf)


def gguf_config(file: GgufFile) -> dict[str, Any]:
    """The config.json transformers would save for this file's model."""
    arch = architecture(file)

    def get(key: str, default: Any = None) -> Any:
        return file.field(f"{arch}.{key}", default)

    hidden, heads = get("embedding_length"), get("attention.head_count")
    vocab = get("vocab_size") or len(file.field("tokenizer.ggml.tokens", []) or []) or _embed_rows(file)
    config: dict[str, Any] = {
        "model_type": arch,
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": get("feed_forward_length"),
        "num_hidden_layers": get("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": get("attention.head_count_kv", heads),
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon", 1e-5),
        "max_position_embeddings": get("context_length"),
        "rope_theta": get("rope.freq_base", 10000.0),
        "tie_word_embeddings": "output.weight" not in file.tensors,
        "bos_token_id": file.field("tokenizer.ggml.bos_token_id"),
        "eos_token_id": file.field("tokenizer.ggml.eos_token_id"),
        "pad_token_id": file.field("tokenizer.ggml.padding_token_id"),
        "hidden_act": "silu",
    }
    head_dim = get("attention.key_length") or (hidden // heads if isinstance(hidden, int) and heads else None)
    if head_dim is not None:
        config["head_dim"] = head_dim
    rotary = get("rope.dimension_count")
    if isinstance(rotary, int) and isinstance(head_dim, int) and head_dim > 0 and rotary != head_dim:
        config["partial_rotary_factor"] = rotary / head_dim
    _check_rope_scaling(file, arch)
    if arch == "phi3":
        config["sliding_window"] = get("attention.sliding_window")
        config["rope_scaling"] = _longrope(file, arch)
    return config


def _check_rope_scaling(file: GgufFile, arch: str) -> None:
    kind = file.field(f"{arch}.rope.scaling.type")
    if kind in _REFUSED_ROPE_SCALING or "rope_freqs.weight" in file.tensors:
        what = kind if kind else "llama3 (rope_freqs.weight)"
        raise CheckpointError(f"rope scaling {what!r} is not supported (only plain rope and Phi-3's LongRoPE)",
                              file.path)


def _longrope(file: GgufFile, arch: str) -> dict[str, Any] | None:
    """Phi-3-128k / 3.5 / 4-mini: per-frequency factors are tensors, the switch point is metadata."""
    short, long = file.tensors.get("rope_factors_short.weight"), file.tensors.get("rope_factors_long.weight")
    if short is None and long is None:
        return None
    if short is None or long is None:
        raise CheckpointError("has one of rope_factors_short/long but not the other", file.path)
    rope: dict[str, Any] = {
        "rope_type": "longrope",
        "short_factor": [float(x) for x in file.vector(short)],
        "long_factor": [float(x) for x in file.vector(long)],
        "original_max_position_embeddings": file.field(f"{arch}.rope.scaling.original_context_length"),
    }
    factor = file.field(f"{arch}.rope.scaling.attn_factor")
    if factor is not None:
        rope["attention_factor"] = factor
    return rope


def _embed_rows(file: GgufFile) -> int | None:
    embed = file.tensors.get("token_embd.weight")
    return embed.shape[0] if embed is not None else None

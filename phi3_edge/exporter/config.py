"""A frozen Phi3Spec from config.json: only the fields the graph needs, validated.

Accepts configs as the hub ships them (`rope_scaling`, top-level `rope_theta`, `partial_rotary_factor`,
`original_max_position_embeddings`) and as transformers 5 saves them (`rope_parameters`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from phi3_edge.errors import CheckpointError

SUPPORTED_MODEL_TYPES = ("phi3",)
LONGROPE_NAMES = ("longrope", "su")  # "su" is the name the first Phi-3-128k configs used


@dataclass(frozen=True)
class LongRope:
    """LongRoPE: per-frequency short/long factors, switched at `original_max_position_embeddings`."""

    short_factor: tuple[float, ...]
    long_factor: tuple[float, ...]
    original_max_position_embeddings: int
    attention_factor: float  # magnitude scaling applied to cos/sin (both factor sets)


@dataclass(frozen=True)
class Phi3Spec:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    rope_theta: float
    rotary_dim: int  # head_dim * partial_rotary_factor (Phi-4-mini: 0.75)
    tie_word_embeddings: bool
    sliding_window: int | None
    longrope: LongRope | None
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    pad_token_id: int | None
    hidden_act: str = "silu"
    raw_model_type: str = "phi3"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("extra")
        return data


def load_spec(config_path: Path) -> Phi3Spec:
    """Read and validate config.json; every problem is a one-line CheckpointError naming the file."""
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError("config.json not found (a Hugging Face checkpoint folder has one)", config_path.parent)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"not valid JSON ({exc})", config_path) from None
    if not isinstance(raw, dict):
        raise CheckpointError("expected a JSON object", config_path)
    return spec_from_dict(raw, config_path)


def spec_from_dict(raw: dict[str, Any], where: Path | str = "config.json") -> Phi3Spec:
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"model_type {model_type!r} is not supported; phi3-edge exports the Phi-3 family (model_type 'phi3': "
            "Phi-3-mini/medium, Phi-3.5-mini, Phi-4-mini)",
            where,
        )
    reader = _Fields(raw, where)
    hidden = reader.positive_int("hidden_size")
    heads = reader.positive_int("num_attention_heads")
    kv_heads = reader.positive_int("num_key_value_heads", default=heads)
    if heads % kv_heads:
        raise CheckpointError(f"num_key_value_heads {kv_heads} does not divide num_attention_heads {heads}", where)
    head_dim = reader.positive_int("head_dim", default=hidden // heads if hidden % heads == 0 else 0)
    if "head_dim" not in raw and hidden % heads:
        raise CheckpointError(f"hidden_size {hidden} is not divisible by num_attention_heads {heads}", where)
    rope = _rope_parameters(raw)
    partial = float(rope.get("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0)) or 1.0)
    rotary_dim = int(head_dim * partial)
    if not 0 < partial <= 1 or rotary_dim % 2:
        raise CheckpointError(f"partial_rotary_factor {partial} gives an odd or empty rotary dim {rotary_dim}", where)
    act = raw.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise CheckpointError(f"hidden_act {act!r} is not supported (Phi-3 uses silu)", where)
    max_pos = reader.positive_int("max_position_embeddings")
    sliding = raw.get("sliding_window")
    if sliding is not None and (not isinstance(sliding, int) or sliding <= 0):
        raise CheckpointError(f"sliding_window must be a positive integer or null, got {sliding!r}", where)
    eos = raw.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if isinstance(eos, int) else ())
    return Phi3Spec(
        vocab_size=reader.positive_int("vocab_size"),
        hidden_size=hidden,
        intermediate_size=reader.positive_int("intermediate_size"),
        num_layers=reader.positive_int("num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=reader.positive_float("rms_norm_eps", default=1e-5),
        max_position_embeddings=max_pos,
        rope_theta=float(rope.get("rope_theta", raw.get("rope_theta", 10000.0))),
        rotary_dim=rotary_dim,
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        sliding_window=sliding,
        longrope=_longrope(raw, rope, rotary_dim, max_pos, where),
        bos_token_id=raw.get("bos_token_id"),
        eos_token_ids=eos_ids,
        pad_token_id=raw.get("pad_token_id"),
        hidden_act="silu",
        extra={},
    )


def _rope_parameters(raw: dict[str, Any]) -> dict[str, Any]:
    """transformers 5 writes `rope_parameters`; the hub's configs carry `rope_scaling` (possibly null)."""
    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    return dict(rope) if isinstance(rope, dict) else {}


def _longrope(
    raw: dict[str, Any], rope: dict[str, Any], rotary_dim: int, max_pos: int, where: Path | str
) -> LongRope | None:
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type in (None, "default"):
        return None
    if rope_type not in LONGROPE_NAMES:
        raise CheckpointError(f"rope type {rope_type!r} is not supported (expected default or longrope)", where)
    short, long = rope.get("short_factor"), rope.get("long_factor")
    for name, factors in (("short_factor", short), ("long_factor", long)):
        if not isinstance(factors, list) or len(factors) != rotary_dim // 2:
            raise CheckpointError(f"rope {name} must be a list of {rotary_dim // 2} numbers", where)
    original = int(rope.get("original_max_position_embeddings") or raw.get("original_max_position_embeddings") or 0)
    if original <= 0:
        raise CheckpointError("longrope needs original_max_position_embeddings", where)
    return LongRope(
        short_factor=tuple(float(x) for x in short),
        long_factor=tuple(float(x) for x in long),
        original_max_position_embeddings=original,
        attention_factor=_attention_factor(rope, max_pos, original),
    )


def _attention_factor(rope: dict[str, Any], max_pos: int, original: int) -> float:
    """The magnitude scaling LongRoPE implies, computed exactly as transformers does."""
    if rope.get("attention_factor") is not None:
        return float(rope["attention_factor"])
    factor = rope.get("factor") or max_pos / original
    if factor <= 1.0:
        return 1.0
    return math.sqrt(1 + math.log(factor) / math.log(original))


class _Fields:
    def __init__(self, raw: dict[str, Any], where: Path | str) -> None:
        self.raw, self.where = raw, where

    def positive_int(self, key: str, default: int | None = None) -> int:
        value = self.raw.get(key, default)
        if value is None:
            raise CheckpointError(f"missing field {key!r}", self.where)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise CheckpointError(f"{key} must be a positive integer, got {value!r}", self.where)
        return value

    def positive_float(self, key: str, default: float) -> float:
        value = self.raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise CheckpointError(f"{key} must be a positive number, got {value!r}", self.where)
        return float(value)

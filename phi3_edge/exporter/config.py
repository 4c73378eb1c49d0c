"""A frozen Phi3Spec from config.json: only the fields the graph needs, validated.

Accepts configs as the hub ships them (`rope_scaling`, top-level `rope_theta`, `partial_rotary_factor`,
`original_max_position_embeddings`) and as transformers 5 saves them (`rope_parameters`).

config.json is untrusted input: every field the graph uses is type-checked and bounded, and every failure is
one CheckpointError line (tests/exporter/test_fuzz.py feeds this module arbitrary JSON).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from phi3_edge.errors import CheckpointError

SUPPORTED_MODEL_TYPES = ("phi3", "llama", "mistral")
# Llama is Phi-3's math with unfused q/k/v and gate/up projections (WeightStore packs them by row ranges);
# Mistral is Llama plus a sliding window, accepted only without one (its window semantics are not checked here).
LLAMA_LIKE = ("llama", "mistral")
LONGROPE_NAMES = ("longrope", "su")  # "su" is the name the first Phi-3-128k configs used
# Upper bounds, 8x or more above any Phi model. The rope tables (positions x rotary_dim/2 floats) are built
# from config values alone, before any checkpoint shape is checked; the other bounds keep a hostile
# config.json from sizing anything (genai_config, masks) far beyond what a safetensors file could back.
LIMITS = {
    "hidden_size": 1 << 16,
    "intermediate_size": 1 << 18,
    "num_hidden_layers": 1024,
    "num_attention_heads": 1024,
    "num_key_value_heads": 1024,
    "head_dim": 1024,
    "vocab_size": 1 << 22,
    "max_position_embeddings": 1 << 21,
    "original_max_position_embeddings": 1 << 21,
    "sliding_window": 1 << 31,
}
MAX_ROPE_TABLE = 1 << 26  # floats per cos/sin table (Phi-3-128k: 131072 x 48 = 6.3M)


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
    """Read and validate config.json (or a GGUF file's metadata); every problem is one CheckpointError line."""
    from phi3_edge.exporter.checkpoint import is_gguf

    if is_gguf(Path(config_path)):
        from phi3_edge.exporter.gguf.spec import gguf_spec

        return gguf_spec(Path(config_path))
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(
            "config.json not found (a Hugging Face checkpoint folder has one)", config_path.parent
        ) from None
    except OSError as exc:  # a folder named config.json, no permission
        raise CheckpointError(f"cannot be read ({exc.strerror or exc})", config_path) from None
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, a 5000-digit number, absurd nesting
        raise CheckpointError(f"not valid JSON ({_short(str(exc), 120)})", config_path) from None
    if not isinstance(raw, dict):
        raise CheckpointError("expected a JSON object", config_path)
    return spec_from_dict(raw, config_path)


def spec_from_dict(raw: dict[str, Any], where: Path | str = "config.json") -> Phi3Spec:
    if not isinstance(raw, dict):
        raise CheckpointError("expected a JSON object", where)
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"model_type {_short(model_type)} is not supported; phi3-edge exports model_type 'phi3' (Phi-3-mini/"
            "medium, Phi-3.5-mini, Phi-4-mini) and Llama-layout models ('llama', 'mistral' without sliding window)",
            where,
        )
    reader = _Fields(raw, where)
    if model_type in LLAMA_LIKE:
        _check_llama_like(raw, str(model_type), where)
    hidden = reader.positive_int("hidden_size")
    heads = reader.positive_int("num_attention_heads")
    kv_heads = reader.positive_int("num_key_value_heads", default=heads)
    if heads % kv_heads:
        raise CheckpointError(f"num_key_value_heads {kv_heads} does not divide num_attention_heads {heads}", where)
    if "head_dim" not in raw and hidden % heads:
        raise CheckpointError(f"hidden_size {hidden} is not divisible by num_attention_heads {heads}", where)
    head_dim = reader.positive_int("head_dim", default=hidden // heads)
    rope = _rope_parameters(raw)
    partial = reader.number("partial_rotary_factor", rope.get("partial_rotary_factor",
                                                              raw.get("partial_rotary_factor", 1.0)), default=1.0)
    rotary_dim = int(head_dim * partial) if 0 < partial <= 1 else 0
    if rotary_dim <= 0 or rotary_dim % 2:
        raise CheckpointError(f"partial_rotary_factor {partial} gives an odd or empty rotary dim {rotary_dim}", where)
    act = raw.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise CheckpointError(f"hidden_act {_short(act)} is not supported (Phi-3 uses silu)", where)
    max_pos = reader.positive_int("max_position_embeddings")
    if max_pos * (rotary_dim // 2) > MAX_ROPE_TABLE:
        raise CheckpointError(f"max_position_embeddings {max_pos} x rotary dim {rotary_dim} is too large "
                              f"(rope tables beyond {MAX_ROPE_TABLE} values)", where)
    sliding = raw.get("sliding_window")
    sliding = None if sliding is None else reader.positive_int("sliding_window")
    rope_theta = reader.number("rope_theta", rope.get("rope_theta", raw.get("rope_theta", 10000.0)), 10000.0)
    return Phi3Spec(
        vocab_size=reader.positive_int("vocab_size"),
        hidden_size=hidden,
        intermediate_size=reader.positive_int("intermediate_size"),
        num_layers=reader.positive_int("num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=reader.number("rms_norm_eps", raw.get("rms_norm_eps"), default=1e-5),
        max_position_embeddings=max_pos,
        rope_theta=rope_theta,
        rotary_dim=rotary_dim,
        tie_word_embeddings=reader.flag("tie_word_embeddings"),
        sliding_window=sliding,
        longrope=_longrope(raw, rope, rotary_dim, max_pos, reader),
        bos_token_id=reader.token_id("bos_token_id"),
        eos_token_ids=reader.token_ids("eos_token_id"),
        pad_token_id=reader.token_id("pad_token_id"),
        hidden_act="silu",
        raw_model_type=str(model_type),
        extra={},
    )


def _check_llama_like(raw: dict[str, Any], model_type: str, where: Path | str) -> None:
    """What a Llama/Mistral config may carry that the Phi-3 graph has no place for: refuse it by name."""
    for key in ("attention_bias", "mlp_bias"):
        if raw.get(key):
            raise CheckpointError(f"{key} is true; the Phi-3 graph has bias-free projections", where)
    if model_type == "mistral" and raw.get("sliding_window") is not None:
        raise CheckpointError("Mistral's sliding_window is not supported (only sliding_window: null)", where)
    if raw.get("pretraining_tp", 1) not in (None, 1):
        raise CheckpointError(f"pretraining_tp {_short(raw.get('pretraining_tp'))} is not supported (only 1)", where)


def _rope_parameters(raw: dict[str, Any]) -> dict[str, Any]:
    """transformers 5 writes `rope_parameters`; the hub's configs carry `rope_scaling` (possibly null)."""
    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    return dict(rope) if isinstance(rope, dict) else {}


def _longrope(raw: dict[str, Any], rope: dict[str, Any], rotary_dim: int, max_pos: int,
              reader: _Fields) -> LongRope | None:
    where = reader.where
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type in (None, "default"):
        return None
    if rope_type not in LONGROPE_NAMES:
        raise CheckpointError(f"rope type {_short(rope_type)} is not supported (expected default or longrope; "
                              "llama3/linear/dynamic/yarn scaling is not implemented)", where)
    short = reader.factors("short_factor", rope.get("short_factor"), rotary_dim // 2)
    long = reader.factors("long_factor", rope.get("long_factor"), rotary_dim // 2)
    original = rope.get("original_max_position_embeddings") or raw.get("original_max_position_embeddings")
    if original is None:
        raise CheckpointError("longrope needs original_max_position_embeddings", where)
    original = reader.positive_int("original_max_position_embeddings", value=original)
    if original < 2:  # the attention factor divides by log(original)
        raise CheckpointError(f"original_max_position_embeddings must be at least 2, got {original}", where)
    return LongRope(
        short_factor=short,
        long_factor=long,
        original_max_position_embeddings=original,
        attention_factor=_attention_factor(rope, max_pos, original, reader),
    )


def _attention_factor(rope: dict[str, Any], max_pos: int, original: int, reader: _Fields) -> float:
    """The magnitude scaling LongRoPE implies, computed exactly as transformers does."""
    if rope.get("attention_factor") is not None:
        return reader.number("attention_factor", rope["attention_factor"], default=1.0)
    factor = reader.number("factor", rope.get("factor"), default=0.0) if rope.get("factor") else max_pos / original
    if factor <= 1.0:
        return 1.0
    return math.sqrt(1 + math.log(factor) / math.log(original))


def _short(value: object, limit: int = 60) -> str:
    """repr cut to one readable line: error messages quote values from untrusted files."""
    text = value if isinstance(value, str) and limit > 60 else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Fields:
    """Typed, bounded reads of config fields; every failure names the field and the file."""

    def __init__(self, raw: dict[str, Any], where: Path | str) -> None:
        self.raw, self.where = raw, where

    def _fail(self, message: str) -> CheckpointError:
        return CheckpointError(message, self.where)

    def positive_int(self, key: str, default: int | None = None, *, value: Any = None) -> int:
        value = self.raw.get(key, default) if value is None else value
        if value is None:
            raise self._fail(f"missing field {key!r}")
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise self._fail(f"{key} must be a positive integer, got {_short(value)}")
        if value > LIMITS.get(key, value):
            raise self._fail(f"{key} {value} is larger than any Phi-3 model (limit {LIMITS[key]}); corrupt config?")
        return value

    def number(self, key: str, value: Any, default: float) -> float:
        """A finite positive number (rope theta, eps, rotary fraction, scaling factors); None means default."""
        value = default if value is None else value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise self._fail(f"{key} must be a positive finite number, got {_short(value)}")
        return float(value)

    def flag(self, key: str) -> bool:
        value = self.raw.get(key, False)
        if value is not None and not isinstance(value, bool):  # "false" would be truthy
            raise self._fail(f"{key} must be true or false, got {_short(value)}")
        return bool(value)

    def token_id(self, key: str) -> int | None:
        value = self.raw.get(key)
        if value is not None and not _is_token_id(value):
            raise self._fail(f"{key} must be a token id (a non-negative integer) or null, got {_short(value)}")
        return value

    def token_ids(self, key: str) -> tuple[int, ...]:
        value = self.raw.get(key)
        ids = value if isinstance(value, list) else [] if value is None else [value]
        if not all(_is_token_id(i) for i in ids):
            raise self._fail(f"{key} must be a token id or a list of them, got {_short(value)}")
        return tuple(ids)

    def factors(self, key: str, value: Any, count: int) -> tuple[float, ...]:
        if not isinstance(value, list) or len(value) != count:
            raise self._fail(f"rope {key} must be a list of {count} numbers")
        return tuple(self.number(f"rope {key} entry", item, default=math.nan) for item in value)


def _is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < LIMITS["vocab_size"]

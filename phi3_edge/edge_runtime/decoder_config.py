"""What the runtime needs to know about an artifact's decoder, read from the folder's two config files.

    genai_config.json   shapes, context length, vocabulary and eos ids (the file onnxruntime-genai reads too)
    manifest.json       rope_switch_length, the one field genai_config.json has no room for

Every missing or malformed field is one ArtifactError naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phi3_edge.artifact_contract import GENAI_CONFIG_FILE, MODEL_FILE
from phi3_edge.errors import ArtifactError
from phi3_edge.manifest import read_rope_switch_length


@dataclass(frozen=True)
class DecoderConfig:
    """What the generation loop needs from genai_config.json (and manifest.json's rope_switch_length)."""

    model_file: str
    num_layers: int
    kv_heads: int
    head_dim: int
    context_length: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    # LongRoPE: the length past which the long factors apply (None for plain RoPE). From manifest.json,
    # since genai_config.json has no field for it and onnxruntime-genai rejects unknown keys.
    rope_switch_length: int | None = None


def read_decoder_config(folder: Path) -> DecoderConfig:
    """genai_config.json's decoder fields plus manifest.json's rope_switch_length."""
    folder = Path(folder)
    decoder, model, path = _decoder_section(folder)
    return DecoderConfig(
        model_file=str(decoder.get("filename", MODEL_FILE)),
        num_layers=_positive(decoder, "num_hidden_layers", path),
        kv_heads=_positive(decoder, "num_key_value_heads", path),
        head_dim=_positive(decoder, "head_size", path),
        context_length=_positive(model, "context_length", path),
        vocab_size=_positive(model, "vocab_size", path),
        eos_token_ids=_eos_ids(model.get("eos_token_id"), path),
        rope_switch_length=read_rope_switch_length(folder),
    )


def _decoder_section(folder: Path) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """(model.decoder, model, the file) of genai_config.json."""
    path = folder / GENAI_CONFIG_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{GENAI_CONFIG_FILE} not found (not an exported artifact folder?)", folder) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"not valid JSON ({exc})", path) from None
    model = raw.get("model") if isinstance(raw, dict) else None
    decoder = model.get("decoder") if isinstance(model, dict) else None
    if not isinstance(model, dict) or not isinstance(decoder, dict):
        raise ArtifactError("missing the model.decoder section", path)
    return decoder, model, path


def _positive(section: dict[str, Any], key: str, path: Path) -> int:
    value = section.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ArtifactError(f"{key} must be a positive integer, got {value!r}", path)
    return value


def _eos_ids(value: Any, path: Path) -> tuple[int, ...]:
    # onnxruntime-genai accepts a single id or a list of them.
    ids = value if isinstance(value, list) else [value]
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ArtifactError(f"model.eos_token_id must be an integer or a list of integers, got {value!r}", path)
    return tuple(ids)

"""genai_config.json and the tokenizer files: what onnxruntime-genai (og.Model, og.Tokenizer) reads.

The layout follows what the onnxruntime-genai model builder writes (builders/base.py make_genai_config,
0.18): onnxruntime-genai rejects unknown keys and nulls, so nothing here is decorative. Two deliberate
differences from the builder's phi3 output:
  - no position_ids input: our graph derives positions from attention_mask;
  - no logits_to_keep input named: onnxruntime-genai feeds none, and the graph's optional input
    (io_spec.optional_inputs) then keeps every position's logits, the layout og reads;
  - no decoder.sliding_window block even when config.json has sliding_window: that block describes the
    builder's bounded per-layer KV cache ("windowed_kv_cache", and only for layers typed sliding_attention,
    which Phi-3 configs do not declare). Our GroupQueryAttention node applies the window itself
    (local_window_size) over a full-length shared cache, so the runtime must not slide anything.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from phi3_edge import io_spec
from phi3_edge.artifact_contract import (
    GENAI_CONFIG_FILE,
    MODEL_FILE,
    STOP_TOKENS,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
)
from phi3_edge.errors import CheckpointError
from phi3_edge.exporter.config import Phi3Spec
from phi3_edge.targets.table import Target

GENAI_CONFIG_NAME = GENAI_CONFIG_FILE
MODEL_FILENAME = MODEL_FILE
MODEL_TYPE = "phi3"  # onnxruntime-genai's name for the whole family (mini, medium, 3.5-mini, 4-mini)
EOS_TOKENS = STOP_TOKENS  # config.json often names only <|endoftext|>; see artifact_contract
TOKENIZER_CONFIG = TOKENIZER_CONFIG_FILE
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


def genai_config(
    spec: Phi3Spec,
    target: Target,
    *,
    eos_token_ids: Sequence[int] = (),
    bos_token_id: int | None = None,
    pad_token_id: int | None = None,
    provider_options: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The genai_config.json dictionary for one target.

    eos_token_ids are added to config.json's own (deduplicated, config first): pass what
    `collect_eos_token_ids` finds in the tokenizer files. bos/pad override config.json's values.
    provider_options are the EP's options (e.g. DirectML's enable_graph_capture); CPU takes none.
    """
    eos = _unique([*spec.eos_token_ids, *eos_token_ids])
    if not eos:
        raise CheckpointError("no eos_token_id in config.json, generation_config.json or tokenizer.json", "config.json")
    model: dict[str, Any] = {
        "context_length": spec.max_position_embeddings,
        "decoder": _decoder(spec, target, provider_options),
        "eos_token_id": eos if len(eos) > 1 else eos[0],
        # onnxruntime-genai pads batches with this id; it rejects null, and the first EOS is the usual stand-in.
        "pad_token_id": _first(pad_token_id, spec.pad_token_id, eos[0]),
        "type": MODEL_TYPE,
        "vocab_size": spec.vocab_size,
    }
    bos = _first(bos_token_id, spec.bos_token_id)
    if bos is not None:  # null is rejected; an absent key is fine
        model["bos_token_id"] = bos
    return {"model": dict(sorted(model.items())), "search": _search(spec.max_position_embeddings)}


def _decoder(spec: Phi3Spec, target: Target, provider_options: dict[str, str] | None) -> dict[str, Any]:
    return {
        "session_options": {"log_id": "onnxruntime-genai", "provider_options": _providers(target, provider_options)},
        "filename": MODEL_FILENAME,
        "head_size": spec.head_dim,
        "hidden_size": spec.hidden_size,
        "inputs": {
            "input_ids": io_spec.INPUT_IDS,
            "attention_mask": io_spec.ATTENTION_MASK,
            "past_key_names": io_spec.PAST_KEY_TEMPLATE,
            "past_value_names": io_spec.PAST_VALUE_TEMPLATE,
        },
        "outputs": {
            "logits": io_spec.LOGITS,
            "present_key_names": io_spec.PRESENT_KEY_TEMPLATE,
            "present_value_names": io_spec.PRESENT_VALUE_TEMPLATE,
        },
        "num_attention_heads": spec.num_heads,
        "num_hidden_layers": spec.num_layers,
        "num_key_value_heads": spec.num_kv_heads,
    }


def _providers(target: Target, options: dict[str, str] | None) -> list[dict[str, dict[str, str]]]:
    # The target table says whether genai_config lists the provider (not for its default, CPU); options come
    # from the caller.
    if not target.genai_lists_provider and not options:
        return []
    return [{target.execution_provider: dict(options or {})}]


def _search(context_length: int) -> dict[str, Any]:
    return {
        "diversity_penalty": 0.0,
        "do_sample": False,
        "early_stopping": True,
        "length_penalty": 1.0,
        "max_length": context_length,
        "min_length": 0,
        "no_repeat_ngram_size": 0,
        "num_beams": 1,
        "num_return_sequences": 1,
        # Our attention is GroupQueryAttention, which updates the KV cache in place in a max_length buffer.
        "past_present_share_buffer": True,
        "repetition_penalty": 1.0,
        "temperature": 1.0,
        "top_k": 50,
        "top_p": 1.0,
    }


def write_genai_config(
    folder: Path,
    spec: Phi3Spec,
    target: Target,
    *,
    tokenizer_folder: Path | None = None,
    provider_options: dict[str, str] | None = None,
) -> Path:
    """Write genai_config.json into `folder`, reading EOS/BOS/PAD ids from `tokenizer_folder` (default: folder)."""
    tokens = Path(tokenizer_folder) if tokenizer_folder is not None else Path(folder)
    ids = special_token_ids(tokens)
    config = genai_config(
        spec,
        target,
        eos_token_ids=collect_eos_token_ids(tokens),
        bos_token_id=ids.get("bos"),
        pad_token_id=ids.get("pad"),
        provider_options=provider_options,
    )
    path = Path(folder) / GENAI_CONFIG_NAME
    path.write_text(json.dumps(config, indent=4) + "\n", encoding="utf-8")
    return path


def collect_eos_token_ids(folder: Path) -> list[int]:
    """generation_config.json's eos ids, then those of <|endoftext|> / <|end|> in tokenizer.json."""
    generation = _read_json(Path(folder) / "generation_config.json") or {}
    eos = generation.get("eos_token_id")
    from_generation = eos if isinstance(eos, list) else [eos] if isinstance(eos, int) else []
    return _unique([i for i in from_generation if isinstance(i, int)] + eos_token_ids_from_tokenizer(folder))


def eos_token_ids_from_tokenizer(folder: Path) -> list[int]:
    """Ids of <|endoftext|> and <|end|> among tokenizer.json's added tokens (empty if absent)."""
    added = _added_tokens(_read_json(Path(folder) / TOKENIZER_FILE) or {})
    return [added[token] for token in EOS_TOKENS if token in added]


def special_token_ids(folder: Path) -> dict[str, int]:
    """{"bos": id, "pad": id} for the tokens tokenizer_config.json names, looked up in tokenizer.json."""
    config = _read_json(Path(folder) / TOKENIZER_CONFIG) or {}
    tokenizer = _read_json(Path(folder) / TOKENIZER_FILE) or {}
    vocab = {**_model_vocab(tokenizer), **_added_tokens(tokenizer)}
    ids: dict[str, int] = {}
    for role in ("bos", "pad"):
        token = config.get(f"{role}_token")
        token = token.get("content") if isinstance(token, dict) else token  # AddedToken serialised as a dict
        if isinstance(token, str) and token in vocab:
            ids[role] = vocab[token]
    return ids


def copy_tokenizer_files(checkpoint_files: Iterable[Path], dest: Path) -> list[Path]:
    """Copy tokenizer files into `dest`, folding a separate chat template into tokenizer_config.json.

    Newer checkpoints keep the chat template in chat_template.jinja/.json, but onnxruntime-genai and older
    tokenizer loaders read only tokenizer_config.json's `chat_template`: one place, so it cannot diverge.
    """
    dest = Path(dest)
    written: list[Path] = []
    template: str | None = None
    for source in checkpoint_files:
        source = Path(source)
        if source.name in CHAT_TEMPLATE_FILES:
            template = _read_template(source)
            continue
        shutil.copyfile(source, dest / source.name)  # copyfile follows HF-cache symlinks into real files
        written.append(dest / source.name)
    if template is not None:
        written.append(_fold_template(dest / TOKENIZER_CONFIG, template, written))
    return written


def _read_template(path: Path) -> str:
    if path.suffix == ".jinja":
        return path.read_text(encoding="utf-8")
    data = _read_json(path)
    template = data.get("chat_template") if isinstance(data, dict) else None
    if not isinstance(template, str):
        raise CheckpointError("expected an object with a 'chat_template' string", path)
    return template


def _fold_template(config_path: Path, template: str, written: list[Path]) -> Path:
    config = (_read_json(config_path) or {}) if config_path.is_file() else {}
    config["chat_template"] = template  # the separate file wins, as it does when transformers loads both
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if config_path in written:
        written.remove(config_path)
    return config_path


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"not valid JSON ({exc})", path) from None


def _added_tokens(tokenizer: dict[str, Any]) -> dict[str, int]:
    tokens = tokenizer.get("added_tokens") if isinstance(tokenizer, dict) else None
    return {t["content"]: t["id"] for t in tokens or [] if isinstance(t, dict) and "content" in t and "id" in t}


def _model_vocab(tokenizer: dict[str, Any]) -> dict[str, int]:
    vocab = (tokenizer.get("model") or {}).get("vocab") if isinstance(tokenizer, dict) else None
    return dict(vocab) if isinstance(vocab, dict) else {}  # BPE/WordPiece: {token: id}; Unigram is a list


def _unique(ids: Iterable[int]) -> list[int]:
    return list(dict.fromkeys(int(i) for i in ids))


def _first(*values: int | None) -> int | None:
    return next((v for v in values if v is not None), None)

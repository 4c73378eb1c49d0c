"""`ollama:<name>[:<tag>]` -> the GGUF blob of a model Ollama has pulled.

Ollama's store (${OLLAMA_MODELS:-~/.ollama/models}):
    manifests/registry.ollama.ai/library/<name>/<tag>     JSON: layers[] with mediaType and digest
    blobs/sha256-<hex>                                    content-addressed files; the model layer is a GGUF
A name with a slash (`user/model`) sits under manifests/registry.ollama.ai/<user>/<model>/<tag>.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from phi3_edge.errors import CheckpointError

PREFIX = "ollama:"
MODEL_LAYER = "application/vnd.ollama.image.model"
REGISTRY = "registry.ollama.ai"
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def store_root() -> Path:
    return Path(os.environ.get("OLLAMA_MODELS") or Path.home() / ".ollama" / "models")


def resolve_ollama(model: str) -> Path:
    """The model blob for `ollama:name[:tag]` (tag defaults to latest), checked to exist."""
    name, _, tag = model.removeprefix(PREFIX).partition(":")
    tag = tag or "latest"
    namespace, _, short = name.rpartition("/")
    parts = [namespace or "library", short, tag]
    if not all(_PART.match(p) for p in parts):
        raise CheckpointError("not an Ollama model name (expected ollama:<name>[:<tag>])", model)
    root = store_root()
    manifest = root / "manifests" / REGISTRY / parts[0] / parts[1] / parts[2]
    if not manifest.is_file():
        raise CheckpointError(f"not pulled in the Ollama store {root} (no {manifest.relative_to(root)}); run "
                              f"`ollama pull {name}:{tag}` or set OLLAMA_MODELS", model)
    digest = _model_digest(manifest, model)
    blob = root / "blobs" / digest.replace(":", "-")
    if not blob.is_file():
        raise CheckpointError(f"the manifest names blob {digest}, which is missing from {root / 'blobs'}; run "
                              f"`ollama pull {name}:{tag}` again", model)
    return blob


def _model_digest(manifest: Path, model: str) -> str:
    try:
        layers = json.loads(manifest.read_text(encoding="utf-8"))["layers"]
        digests = [layer["digest"] for layer in layers if layer.get("mediaType") == MODEL_LAYER]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise CheckpointError(f"cannot read the Ollama manifest {manifest}", model) from None
    if len(digests) != 1 or not isinstance(digests[0], str) or not re.match(r"^sha256:[0-9a-f]{64}$", digests[0]):
        raise CheckpointError(f"the Ollama manifest {manifest} has no single model layer", model)
    return digests[0]

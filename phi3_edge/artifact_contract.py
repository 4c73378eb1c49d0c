"""The on-disk contract of an artifact folder: what the exporter writes and the runtime reads, spelled once.

    model.onnx, model.onnx.data        decoder graph and its external weights (MODEL_FILE, DATA_FILE)
    model.ort, required_operators.config   mobile targets only (ORT_FILE, REQUIRED_OPERATORS_FILE)
    genai_config.json                  onnxruntime-genai's config; the runtime reads shapes and eos ids from it
    tokenizer.json, tokenizer_config.json, ...   tokenizer files; the chat template lives in tokenizer_config.json
    manifest.json                      provenance, hashes of every file, and ROPE_SWITCH_KEY (below)

The tensor-level half of the contract (graph input/output names and shapes) is phi3_edge.io_spec; this
module is the folder-level half. Both are stdlib-only: the exporter, the runtime and the tests import them.

LongRoPE switch. A LongRoPE graph rotates with the long factors once the sequence outgrows the checkpoint's
original_max_position_embeddings, and the runtime must then re-run the whole sequence (transformers does).
genai_config.json has no field for that length and onnxruntime-genai rejects unknown keys, so manifest.json
carries it as the top-level `rope_switch_length`: an int for a LongRoPE model, null for plain RoPE. A folder
without our manifest runs with plain RoPE behaviour, as onnxruntime-genai does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from phi3_edge.errors import ArtifactError

MODEL_FILE = "model.onnx"
DATA_FILE = MODEL_FILE + ".data"  # ONNX external data: one file beside the graph
ORT_FILE = "model.ort"
REQUIRED_OPERATORS_FILE = "required_operators.config"
GENAI_CONFIG_FILE = "genai_config.json"
MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"

# Tokens that end the text or a turn in the Phi-3 family. config.json often names only <|endoftext|>; a chat
# model ends its turn with <|end|>. Order matters to the exporter (genai_config's eos list), not the runtime.
STOP_TOKENS = ("<|endoftext|>", "<|end|>")

# manifest.json's first-class runtime field (see the module docstring).
ROPE_SWITCH_KEY = "rope_switch_length"

# Graph I/O element types: io_spec's dtype names, numpy's, and the strings ORT's NodeArg.type reports.
IO_DTYPES = ("float32", "float16")  # activations, logits and KV cache of every target
NUMPY_DTYPES: dict[str, type[np.floating[Any]]] = {"float32": np.float32, "float16": np.float16}
ORT_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)"}
ORT_FLOAT_TYPES: dict[str, type[np.floating[Any]]] = {ORT_TYPES[name]: NUMPY_DTYPES[name] for name in IO_DTYPES}


def rope_switch_length(manifest: dict[str, Any], path: Path) -> int | None:
    """The manifest's rope_switch_length: a positive int (LongRoPE) or None (plain RoPE).

    Missing or malformed is an ArtifactError naming `path`: silently falling back to plain RoPE would run a
    LongRoPE model wrongly past the switch.
    """
    if ROPE_SWITCH_KEY not in manifest:
        raise ArtifactError(f"no {ROPE_SWITCH_KEY} field (exported by an older phi3-edge? export it again)", path)
    value = manifest[ROPE_SWITCH_KEY]
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 2:
        raise ArtifactError(f"{ROPE_SWITCH_KEY} must be null or an integer of at least 2, got {value!r}", path)
    return value

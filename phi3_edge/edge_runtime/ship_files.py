"""What an app must bundle to run an artifact: per graph format, the files and their sizes (`inspect`).

A mobile artifact holds its weights twice: model.onnx + model.onnx.data, and model.ort (ORT format, every
initializer inline). An app ships one of the two, never both:

    ort    model.ort                  decoder graph + weights, ORT format (a minimal/reduced onnxruntime)
           required_operators.config  input to the reduced onnxruntime build, not loaded at run time
    onnx   model.onnx, model.onnx.data
    both   genai_config.json          shapes and eos ids (onnxruntime-genai and phi3-edge read it)
           tokenizer.json, tokenizer_config.json   tokenizer and chat template
           manifest.json              only for phi3-edge's load()/verify, which also want every file it lists

The other tokenizer files an export copies (special_tokens_map.json, tokenizer.model, generation_config.json,
...) are read by neither runtime. Built from the files present, so it needs no target table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phi3_edge.artifact_contract import (
    DATA_FILE,
    GENAI_CONFIG_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    ORT_FILE,
    REQUIRED_OPERATORS_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
)
from phi3_edge.errors import ArtifactError

ORT_VARIANT = "ort"
ONNX_VARIANT = "onnx"
VARIANTS = (ORT_VARIANT, ONNX_VARIANT)

# (file, role, required): the files every variant shares.
_COMMON = (
    (GENAI_CONFIG_FILE, "runtime config: shapes, eos ids", True),
    (TOKENIZER_FILE, "tokenizer", True),
    (TOKENIZER_CONFIG_FILE, "chat template, special tokens", True),
    (MANIFEST_FILE, "phi3-edge load/verify only; onnxruntime-genai apps leave it out", False),
)
_GRAPH = {
    ORT_VARIANT: ((ORT_FILE, "decoder graph + weights, ORT format", True),
                  (REQUIRED_OPERATORS_FILE, "reduced onnxruntime build input, not loaded at run time", False)),
    ONNX_VARIANT: ((MODEL_FILE, "decoder graph", True), (DATA_FILE, "weights (external data)", True)),
}


@dataclass(frozen=True)
class ShipFile:
    name: str
    size_bytes: int
    role: str
    required: bool  # False: needed for a build step or by phi3-edge only


@dataclass(frozen=True)
class ShipList:
    variant: str  # "ort" | "onnx"
    files: tuple[ShipFile, ...]

    @property
    def required_bytes(self) -> int:
        return sum(f.size_bytes for f in self.files if f.required)

    def to_json(self) -> dict[str, Any]:
        return {"variant": self.variant, "required_bytes": self.required_bytes,
                "files": [{"name": f.name, "bytes": f.size_bytes, "role": f.role, "required": f.required}
                          for f in self.files]}


def ship_lists(folder: str | Path) -> list[ShipList]:
    """One list per graph format the folder holds (ORT format first: it is the smaller mobile runtime)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError("artifact folder not found", folder)
    lists = []
    for variant in VARIANTS:
        graph = _GRAPH[variant]
        if not all((folder / name).is_file() for name, _, required in graph if required):
            continue  # this format is not in the folder (not a mobile target, or ORT format was skipped)
        rows = [*graph, *_COMMON]
        files = tuple(ShipFile(name, (folder / name).stat().st_size, role, required)
                      for name, role, required in rows if (folder / name).is_file())
        lists.append(ShipList(variant, files))
    if not lists:
        raise ArtifactError(f"holds neither {MODEL_FILE} nor {ORT_FILE}", folder)
    return lists

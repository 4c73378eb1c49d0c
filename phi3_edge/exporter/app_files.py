"""`export --mobile-files ort|onnx`: a mobile artifact that holds only the graph format the app ships.

A mobile export writes the weights twice: model.onnx + model.onnx.data (every runtime) and model.ort (ORT
format, every initializer inline, for a minimal onnxruntime build). An app ships one of the two:

    ort    keep model.ort + required_operators.config; genai_config.json then names model.ort
    onnx   keep model.onnx + model.onnx.data; drop model.ort and required_operators.config

Trimming runs in the staging folder after the accuracy gate (which measures model.onnx) and before
manifest.json, so the manifest lists exactly what stays and the folder verifies as any other.
"""

from __future__ import annotations

import json
from pathlib import Path

from phi3_edge.artifact_contract import DATA_FILE, GENAI_CONFIG_FILE, MODEL_FILE, ORT_FILE, REQUIRED_OPERATORS_FILE
from phi3_edge.errors import Phi3EdgeError

ORT_ONLY = "ort"
ONNX_ONLY = "onnx"
MOBILE_FILES = (ORT_ONLY, ONNX_ONLY)
_DROPPED = {ORT_ONLY: (MODEL_FILE, DATA_FILE), ONNX_ONLY: (ORT_FILE, REQUIRED_OPERATORS_FILE)}


def check_mobile_files(choice: str | None, writes_ort_format: bool) -> None:
    """Refuse --mobile-files before any weight is read when the target writes no ORT format."""
    if choice is None:
        return
    if choice not in MOBILE_FILES:
        raise Phi3EdgeError(f"--mobile-files must be one of {', '.join(MOBILE_FILES)}, got {choice!r}")
    if not writes_ort_format:
        raise Phi3EdgeError("--mobile-files applies to mobile targets (the only ones with a second graph format)")


def keep_only(folder: Path, choice: str) -> list[str]:
    """Delete the other format's files from the staging folder; returns what was removed."""
    if choice == ORT_ONLY and not (folder / ORT_FILE).is_file():
        raise Phi3EdgeError(f"--mobile-files {ORT_ONLY}: {ORT_FILE} was not written (over ORT format's 2 GiB "
                            f"limit); ship {MODEL_FILE} + {DATA_FILE} (--mobile-files {ONNX_ONLY})", folder)
    removed = [name for name in _DROPPED[choice] if (folder / name).is_file()]
    for name in removed:
        (folder / name).unlink()
    if choice == ORT_ONLY:
        _name_decoder(folder / GENAI_CONFIG_FILE, ORT_FILE)
    return removed


def _name_decoder(config_path: Path, filename: str) -> None:
    """genai_config.json's model.decoder.filename: what onnxruntime-genai and our runtime open."""
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["model"]["decoder"]["filename"] = filename
    config_path.write_text(json.dumps(config, indent=4) + "\n", encoding="utf-8")

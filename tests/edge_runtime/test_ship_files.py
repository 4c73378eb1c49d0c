"""What an app must bundle: one list per graph format in the folder, with the real file sizes."""

from __future__ import annotations

from pathlib import Path

import pytest

from phi3_edge.api import export
from phi3_edge.edge_runtime.ship_files import ship_lists
from phi3_edge.errors import ArtifactError


def _names(ship, required: bool = True) -> list[str]:
    return [f.name for f in ship.files if f.required == required]


def test_mobile_ships_model_ort_or_the_onnx_pair_never_both(tiny_checkpoint, tmp_path: Path) -> None:
    folder = tmp_path / "mobile"
    export(str(tiny_checkpoint("gqa")), "mobile-int4", folder, progress=False, fidelity=False)
    ort_list, onnx_list = ship_lists(folder)
    common = ["genai_config.json", "tokenizer.json", "tokenizer_config.json"]
    assert ort_list.variant == "ort" and _names(ort_list) == ["model.ort", *common]
    assert _names(ort_list, required=False) == ["required_operators.config", "manifest.json"]
    assert onnx_list.variant == "onnx" and _names(onnx_list) == ["model.onnx", "model.onnx.data", *common]
    for ship in (ort_list, onnx_list):
        assert all(f.size_bytes == (folder / f.name).stat().st_size for f in ship.files)
        assert ship.required_bytes == sum((folder / name).stat().st_size for name in _names(ship))
    assert ort_list.to_json()["files"][0] == {"name": "model.ort", "bytes": (folder / "model.ort").stat().st_size,
                                              "role": "decoder graph + weights, ORT format", "required": True}


def test_other_targets_ship_the_onnx_pair(tiny_artifact) -> None:
    [only] = ship_lists(tiny_artifact("gqa"))
    assert only.variant == "onnx" and "model.ort" not in _names(only)


def test_a_folder_without_a_graph(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="holds neither model.onnx nor model.ort"):
        ship_lists(tmp_path)
    with pytest.raises(ArtifactError, match="artifact folder not found"):
        ship_lists(tmp_path / "missing")

"""`--mobile-files`: a mobile artifact with only the graph format the app ships, still verified and runnable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from phi3_edge import api
from phi3_edge.errors import Phi3EdgeError
from phi3_edge.integrity import check_artifact


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("mobile") / "both"
    api.export("demo", "mobile-int4", folder, progress=False, fidelity=False)
    return folder


def _names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_ort_only_drops_the_onnx_pair_and_still_runs(full: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ort"
    api.export("demo", "mobile-int4", folder, progress=False, fidelity=False, mobile_files="ort")
    assert _names(full) - _names(folder) == {"model.onnx", "model.onnx.data"}
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    assert set(manifest["files"]) == _names(folder) - {"manifest.json"}
    assert manifest["recipe"]["mobile_files"] == "ort"
    config = json.loads((folder / "genai_config.json").read_text(encoding="utf-8"))
    assert config["model"]["decoder"]["filename"] == "model.ort"
    assert check_artifact(folder).ok
    expected = api.load(full).generate("def fibonacci(n):", 12)
    assert api.load(folder).generate("def fibonacci(n):", 12).token_ids == expected.token_ids
    assert api.load(folder, backend="genai").generate("def fibonacci(n):", 12).token_ids == expected.token_ids
    report = api.bench(api.BenchRequest(folder, prompt_len=4, gen_len=2, bandwidth_mb=1))  # no census: still runs
    assert report.decode_tps > 0 and report.streamed_weight_bytes == report.weight_bytes
    [ship] = api.ship_lists(folder)
    assert ship.variant == "ort"
    info = api.inspect(folder)  # no protobuf to census: the I/O comes from the manifest
    assert {t.name for t in info.graph.inputs} >= {"input_ids", "attention_mask"}
    assert "logits" in {t.name for t in info.graph.outputs}


def test_onnx_only_drops_the_ort_format(full: Path, tmp_path: Path) -> None:
    folder = tmp_path / "onnx"
    api.export("demo", "mobile-int4", folder, progress=False, fidelity=False, mobile_files="onnx")
    assert _names(full) - _names(folder) == {"model.ort", "required_operators.config"}
    assert check_artifact(folder).ok and [s.variant for s in api.ship_lists(folder)] == ["onnx"]


def test_only_mobile_targets_take_it(tmp_path: Path) -> None:
    with pytest.raises(Phi3EdgeError, match="--mobile-files applies to mobile targets"):
        api.export("demo", "cpu-int4", tmp_path / "x", progress=False, mobile_files="ort")
    assert not (tmp_path / "x").exists()

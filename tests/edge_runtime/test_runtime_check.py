"""load() refuses an onnxruntime older than manifest.json's min_runtime with one line, before any session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from phi3_edge import api
from phi3_edge.edge_runtime import runtime_check
from phi3_edge.errors import ArtifactError


@pytest.fixture(scope="module")
def int8_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("runtime-check") / "demo-int8"
    api.export("demo", "cpu-int8", folder, progress=False, fidelity=False)
    return folder


def test_manifest_records_the_8bit_minimum(int8_artifact: Path) -> None:
    record = json.loads((int8_artifact / "manifest.json").read_text(encoding="utf-8"))["min_runtime"]
    assert record["onnxruntime"] == "1.22.0" and record["onnxruntime-genai"] == "0.8.0"
    assert record["reasons"] == ["com.microsoft.MatMulNBits with 8-bit weights"]


def test_older_onnxruntime_is_refused_in_one_line(int8_artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime_check, "installed_versions",
                        lambda uses_genai: {"onnxruntime": "1.21.1", "onnxruntime-genai": None})
    with pytest.raises(ArtifactError) as caught:
        api.load(int8_artifact)
    assert str(caught.value) == (f"{int8_artifact}: needs onnxruntime >= 1.22.0, installed 1.21.1 "
                                 "(com.microsoft.MatMulNBits with 8-bit weights): pip install -U "
                                 "'onnxruntime>=1.22.0'")


def test_installed_runtime_loads(int8_artifact: Path) -> None:
    assert api.load(int8_artifact).generate("def f(x):", max_new_tokens=2).token_ids


def test_folder_without_the_record_is_not_checked(tmp_path: Path) -> None:
    assert runtime_check.min_runtime_record(tmp_path) is None
    runtime_check.check_runtime(tmp_path, uses_genai=False)

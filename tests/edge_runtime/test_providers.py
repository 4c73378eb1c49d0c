"""Device honesty: the provider an artifact was built for, refusal without it, and what a session runs on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnxruntime as ort
import pytest

from phi3_edge.edge_runtime.providers import (
    artifact_provider_key,
    choose_providers,
    cpu_provider,
    ort_provider_name,
    session_provider,
)
from phi3_edge.errors import ArtifactError
from phi3_edge.targets.table import TARGETS, ort_provider

CPU = "CPUExecutionProvider"


def test_the_runtime_names_every_target_provider_as_the_table_does() -> None:
    # The runtime cannot import the target table; its naming rule must agree with it.
    for target in TARGETS.values():
        assert ort_provider_name(target.execution_provider) == ort_provider(target)
    assert cpu_provider() == CPU and ort_provider_name("qnn") == "QNNExecutionProvider"
    assert ort_provider_name("npu9000") == "npu9000ExecutionProvider"  # unknown: still named in messages


def test_a_cpu_artifact_runs_on_the_cpu(tiny_artifact) -> None:
    folder = tiny_artifact("gqa")
    assert artifact_provider_key(folder) == ("cpu", "cpu-fp32")
    choice = choose_providers(folder)
    assert choice.providers == (CPU,) and not choice.on_cpu_instead and choice.notice is None


def test_a_cuda_artifact_is_refused_without_cuda_unless_allow_cpu(tiny_artifact) -> None:
    folder = tiny_artifact("gqa", "cuda-fp16")
    assert artifact_provider_key(folder) == ("cuda", "cuda-fp16")
    with pytest.raises(ArtifactError, match=r"a cuda-fp16 artifact is built for CUDAExecutionProvider, which this "
                                            r"onnxruntime does not offer \(it has CPUExecutionProvider\).*--allow-cpu"):
        choose_providers(folder, available=[CPU])
    choice = choose_providers(folder, allow_cpu=True, available=[CPU])
    assert choice.providers == (CPU,) and choice.on_cpu_instead
    assert choice.notice == ("warning: cuda-fp16 artifact built for CUDAExecutionProvider, running on "
                             "CPUExecutionProvider (--allow-cpu): slow")
    on_gpu = choose_providers(folder, available=["CUDAExecutionProvider", CPU])
    assert on_gpu.providers == ("CUDAExecutionProvider", CPU) and on_gpu.notice is None


def test_a_folder_without_our_manifest_is_read_from_genai_config(tiny_artifact, tmp_path: Path) -> None:
    folder = tmp_path / "foreign"
    shutil.copytree(tiny_artifact("gqa"), folder)
    (folder / "manifest.json").unlink()
    assert artifact_provider_key(folder) == ("cpu", None)  # an empty provider list: onnxruntime-genai's CPU
    config = json.loads((folder / "genai_config.json").read_text(encoding="utf-8"))
    config["model"]["decoder"]["session_options"]["provider_options"] = [{"dml": {}}]
    (folder / "genai_config.json").write_text(json.dumps(config), encoding="utf-8")
    assert artifact_provider_key(folder) == ("dml", None)
    with pytest.raises(ArtifactError, match="this artifact is built for DmlExecutionProvider"):
        choose_providers(folder, available=[CPU])


def test_session_provider_is_what_onnxruntime_reports(tiny_artifact) -> None:
    folder = tiny_artifact("gqa")
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=[CPU])
    assert session_provider(session) == CPU == session.get_providers()[0]

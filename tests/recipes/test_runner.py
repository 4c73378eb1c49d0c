"""run_build with a stand-in export function: a failing target fails alone, gates come from the manifest, the
reports are written, and the accuracy gate's message is recognised by its prefix."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from phi3_edge.errors import Phi3EdgeError
from phi3_edge.evaluate.gate import enforce_max_kl
from phi3_edge.manifest import build_manifest, write_manifest
from phi3_edge.recipes import TargetSpec, parse_recipe_text
from phi3_edge.recipes.logs import BuildLog
from phi3_edge.recipes.runner import ACCURACY_GATE_PREFIX, Selection, failed_line, run_build, write_reports

RECIPE = """
output = "out"
[[models]]
source = "demo"
[defaults]
max_kl = 0.05
[[targets]]
name = "cpu-fp32"
group = "cpu"
[[targets]]
name = "cpu-int4"
group = "cpu"
[[targets]]
name = "cpu-int8"
group = "cpu"
[[targets]]
name = "mobile-int4"
group = "mobile"
[publish]
repo_id = "org/{model}-{target}"
"""


def _fake_export(calls: list[tuple[str, str, Path]]):  # type: ignore[no-untyped-def]
    def export(source: str, target: TargetSpec, folder: Path) -> None:
        calls.append((source, target.name, folder))
        if target.name == "cpu-int8":
            enforce_max_kl({"kl": 0.09, "top1": 0.8}, target.options.max_kl)  # the real gate's message
        if target.name == "mobile-int4":
            raise Phi3EdgeError("disk full", folder)
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(b"g" * 100)
        manifest = build_manifest(source={"source": source}, spec_json={}, target={"name": target.target},
                                  recipe={}, io_signature=[], artifact_dir=folder, rope_switch_length=None)
        manifest["fidelity"] = None if target.name == "cpu-fp32" else {"kl": 0.004, "top1": 0.95}
        manifest["min_runtime"] = {"onnxruntime": "1.18.0"}
        write_manifest(folder, manifest)
    return export


def test_a_failing_target_fails_alone_and_the_reports_say_which(tmp_path: Path) -> None:
    recipe = parse_recipe_text(RECIPE, tmp_path / "build.toml")
    calls: list[tuple[str, str, Path]] = []
    stream = io.StringIO()
    pushed: list[tuple[Path, str]] = []

    def push(folder: Path, repo: str) -> str:
        pushed.append((folder, repo))
        return f"https://hub/{repo}/commit/1"

    report = run_build(recipe, _fake_export(calls), log=BuildLog(stream, {}), push=push, concurrent=False)
    assert [name for _, name, _ in calls] == ["cpu-fp32", "cpu-int4", "cpu-int8", "mobile-int4"]
    assert calls[1][2] == tmp_path / "out" / "demo" / "cpu-int4"
    assert [(t.name, t.status) for t in report.targets] == [("cpu-fp32", "passed"), ("cpu-int4", "passed"),
                                                            ("cpu-int8", "failed"), ("mobile-int4", "error")]
    assert report.exit_code == 3 and report.read_passes == 4
    fp32, int4, int8, mobile = report.targets
    assert [g.status for g in fp32.gates] == ["passed", "skipped", "passed"]  # float: accuracy not measured
    assert (int4.gates[1].status, int4.gates[1].value, int4.gates[1].limit) == ("passed", 0.004, 0.05)
    manifest_bytes = (tmp_path / "out" / "demo" / "cpu-int4" / "manifest.json").stat().st_size
    assert int4.size_bytes == 100 + manifest_bytes and int4.files == {"model.onnx": 100}
    assert int4.min_runtime == {"onnxruntime": "1.18.0"}
    assert len(int4.manifest_sha256 or "") == 64
    assert int8.gates[1].status == "failed" and int8.message.startswith(ACCURACY_GATE_PREFIX)
    assert (int8.gates[1].value, int8.gates[1].limit) == (0.09, 0.05)
    assert mobile.message.endswith("disk full")
    assert [repo for _, repo in pushed] == ["org/demo-cpu-fp32", "org/demo-cpu-int4"]  # only passing targets
    assert failed_line(report).startswith("failed: demo/cpu-int8 (accuracy gate: KL 0.09 > --max-kl 0.05")
    log = stream.getvalue()
    assert "demo/cpu-int4: passed in" in log and "FAILED demo/mobile-int4:" in log and "\x1b" not in log

    written = write_reports(report, tmp_path / "reports")
    assert [p.name for p in written] == ["report.json", "junit.xml", "summary.md"]
    assert json.loads(written[0].read_text(encoding="utf-8"))["failed"] == ["demo/cpu-int8", "demo/mobile-int4"]
    root = ET.parse(written[1]).getroot()
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("9", "1", "1")


def test_concurrent_targets_report_in_recipe_order_and_count_one_pass(tmp_path: Path) -> None:
    recipe = parse_recipe_text(RECIPE, tmp_path / "build.toml")
    calls: list[tuple[str, str, Path]] = []
    report = run_build(recipe, _fake_export(calls), log=BuildLog(io.StringIO(), {}))
    assert sorted(name for _, name, _ in calls) == ["cpu-fp32", "cpu-int4", "cpu-int8", "mobile-int4"]
    assert [(t.name, t.status) for t in report.targets] == [("cpu-fp32", "passed"), ("cpu-int4", "passed"),
                                                            ("cpu-int8", "failed"), ("mobile-int4", "error")]
    assert report.read_passes == 1 and report.exit_code == 3


def test_selection_runs_one_matrix_cell(tmp_path: Path) -> None:
    recipe = parse_recipe_text(RECIPE, tmp_path / "build.toml")
    calls: list[tuple[str, str, Path]] = []
    report = run_build(recipe, _fake_export(calls), selection=Selection(group="mobile"), log=BuildLog(io.StringIO()))
    assert [name for _, name, _ in calls] == ["mobile-int4"] and report.exit_code == 3


def test_the_gate_message_starts_with_the_prefix_the_runner_reads() -> None:
    with pytest.raises(Phi3EdgeError) as caught:
        enforce_max_kl({"kl": 1.0, "top1": 0.5}, 0.1)
    assert str(caught.value).startswith(ACCURACY_GATE_PREFIX)

"""Report writers: JSON round-trips, JUnit XML that xml.etree reads back with the right counts, a Markdown table,
$GITHUB_STEP_SUMMARY appended, and logs without colour off a terminal."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from phi3_edge.recipes import BuildReport, GateResult, TargetResult
from phi3_edge.recipes.junit import junit_xml, write_junit
from phi3_edge.recipes.logs import BuildLog, use_colour
from phi3_edge.recipes.markdown import append_step_summary, markdown_summary
from phi3_edge.recipes.report import EXIT_TARGETS_FAILED, read_report, target_status, write_json


def _report() -> BuildReport:
    ok = TargetResult("demo", "cpu-int4", "cpu-int4", "cpu", "/out/demo/cpu-int4", "passed", 12.5,
                      (GateResult("export", "passed"),
                       GateResult("accuracy", "passed", "KL 0.004 <= 0.05", 0.004, 0.05)),
                      7_000_000, {"model.onnx": 20_000, "model.onnx.data": 6_980_000},
                      {"kl": 0.004, "top1": 0.937, "prompts": 4, "positions": 300}, "ab" * 32,
                      {"onnxruntime": "1.18.0", "onnxruntime-genai": "0.4.0", "reasons": ["ONNX IR version 10"]})
    bad = TargetResult("demo", "cpu-int8|x", "cpu-int8", "cpu", "/out/demo/cpu-int8", "failed", 3.0,
                       (GateResult("export", "passed"),
                        GateResult("accuracy", "failed", "KL 0.09 > --max-kl 0.05 <&>", 0.09, 0.05)),
                       message="accuracy gate: KL 0.09 > --max-kl 0.05")
    skipped = TargetResult("mini", "cpu-fp32", "cpu-fp32", "default", "/out/mini/cpu-fp32", "passed", 1.0,
                           (GateResult("export", "passed"), GateResult("accuracy", "skipped", "float weights")))
    broken = TargetResult("mini", "cpu-int4", "cpu-int4", "default", "/out/mini/cpu-int4", "error", 0.5,
                          (GateResult("export", "error", "disk full"),), message="disk full")
    return BuildReport("build.toml", "2026-12-02T01:00:00+00:00", 20.0, (ok, bad, skipped, broken), read_passes=2,
                       tools={"phi3-edge": "0.1.0"})


def test_status_and_exit_code() -> None:
    report = _report()
    assert [t.name for t in report.failed] == ["cpu-int8|x", "cpu-int4"]
    assert report.exit_code == EXIT_TARGETS_FAILED
    assert BuildReport("r", "t", 1.0, (report.targets[0],)).exit_code == 0
    assert target_status((GateResult("a", "passed"), GateResult("b", "skipped"))) == "passed"
    assert target_status((GateResult("a", "failed"), GateResult("b", "error"))) == "error"
    assert target_status((GateResult("a", "passed"), GateResult("b", "failed"))) == "failed"


def test_json_summary_round_trips(tmp_path: Path) -> None:
    report = _report()
    path = write_json(report, tmp_path / "reports" / "report.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["format"] == "phi3-edge-build-report/1"
    assert data["passed"] == 2 and data["failed"] == ["demo/cpu-int8|x", "mini/cpu-int4"]
    first = data["targets"][0]
    assert first["size_bytes"] == 7_000_000 and first["manifest_sha256"] == "ab" * 32
    assert first["fidelity"]["kl"] == 0.004 and first["min_runtime"]["onnxruntime"] == "1.18.0"
    assert read_report(path) == report
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]  # no temporary file left


def test_junit_is_valid_xml_with_one_testcase_per_target_and_gate(tmp_path: Path) -> None:
    root = ET.fromstring(junit_xml(_report()))
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors"), root.get("skipped")) == ("7", "1", "1", "1")
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["demo", "mini"]
    assert [s.get("tests") for s in suites] == ["4", "3"]
    cases = [(c.get("classname"), c.get("name")) for c in root.iter("testcase")]
    assert cases == [("demo.cpu-int4", "export"), ("demo.cpu-int4", "accuracy"), ("demo.cpu-int8|x", "export"),
                     ("demo.cpu-int8|x", "accuracy"), ("mini.cpu-fp32", "export"), ("mini.cpu-fp32", "accuracy"),
                     ("mini.cpu-int4", "export")]
    failure = root.find(".//testcase[@classname='demo.cpu-int8|x'][@name='accuracy']/failure")
    assert failure is not None and failure.get("message") == "KL 0.09 > --max-kl 0.05 <&>"  # escaped, read back
    assert "measured 0.09, limit 0.05" in (failure.text or "")
    assert root.find(".//testcase[@classname='mini.cpu-int4']/error") is not None
    assert root.find(".//testcase[@classname='mini.cpu-fp32'][@name='accuracy']/skipped") is not None
    assert float(root.find(".//testcase[@classname='demo.cpu-int4'][@name='export']").get("time")) == 12.5
    path = write_junit(_report(), tmp_path / "junit.xml")
    assert ET.parse(path).getroot().get("tests") == "7"


def test_markdown_summary_table() -> None:
    text = markdown_summary(_report())
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| model |"))
    rows = lines[header + 2: header + 6]
    assert len(rows) == 4 and all(row.count(" | ") == 7 for row in rows)  # 8 cells each, pipes escaped
    assert "| demo | cpu-int4 | ✅ passed | 6.7 MiB | 0.004 | 93.7% | 1.18.0 | 12.5 s |" in rows[0]
    assert "cpu-int8\\|x (cpu-int8)" in rows[1] and "❌ failed" in rows[1]
    assert "2/4 targets passed" in text and "checkpoint read 2x" in text
    assert "- **demo/cpu-int8|x**: accuracy gate: KL 0.09 > --max-kl 0.05" in text
    assert "- **mini/cpu-int4**: disk full" in text


def test_step_summary_is_appended_only_when_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    assert append_step_summary("x") is None
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n", encoding="utf-8")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert append_step_summary(markdown_summary(_report())) == summary
    text = summary.read_text(encoding="utf-8")
    assert text.startswith("earlier step\n## phi3-edge build")


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal_without_no_color() -> None:
    assert use_colour(io.StringIO(), {}) is False  # a pipe or file: never
    assert use_colour(_Tty(), {}) is True
    assert use_colour(_Tty(), {"NO_COLOR": "1"}) is False
    assert use_colour(_Tty(), {"TERM": "dumb"}) is False
    assert use_colour(io.StringIO(), {"FORCE_COLOR": "1"}) is True
    assert use_colour(_Tty(), {"NO_COLOR": "1", "FORCE_COLOR": "1"}) is False


def test_log_lines_are_plain_off_a_terminal_and_annotate_under_github_actions() -> None:
    stream = io.StringIO()
    log = BuildLog(stream, {"GITHUB_ACTIONS": "true"})
    log.line("demo/cpu-int4: exported in 12.5 s", "ok")
    log.failure("demo/cpu-int8", "accuracy gate: KL 9% > 5%\nsecond line")
    lines = stream.getvalue().splitlines()
    assert lines[0] == "demo/cpu-int4: exported in 12.5 s"
    assert "\x1b" not in stream.getvalue() and "\r" not in stream.getvalue()
    assert lines[1] == "FAILED demo/cpu-int8: accuracy gate: KL 9% > 5%"
    assert lines[-1] == "::error title=demo/cpu-int8::accuracy gate: KL 9%25 > 5%25%0Asecond line"
    coloured = _Tty()
    BuildLog(coloured, {}).line("ok", "ok")
    assert coloured.getvalue() == "\x1b[32mok\x1b[0m\n"

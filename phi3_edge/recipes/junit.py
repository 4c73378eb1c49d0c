"""A BuildReport as JUnit XML: one <testsuite> per model, one <testcase> per artifact and gate.

    <testsuites name="phi3-edge build" tests=.. failures=.. errors=.. skipped=.. time=..>
      <testsuite name="phi3-mini" ...>
        <testcase classname="phi3-mini.cpu-int4" name="export" time="12.3"/>
        <testcase classname="phi3-mini.cpu-int4" name="accuracy"><failure message="KL 0.09 > 0.05"/></testcase>

The element and attribute names are the ones every CI JUnit reader (GitHub test reporters, GitLab, Jenkins)
understands; xml.etree writes them, so text is always escaped.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from phi3_edge.recipes.report import ERROR, FAILED, SKIPPED, BuildReport, GateResult, TargetResult, write_text_atomic


def junit_xml(report: BuildReport) -> str:
    root = ET.Element("testsuites", name="phi3-edge build", time=f"{report.seconds:.3f}")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for model in dict.fromkeys(t.model for t in report.targets):
        suite = ET.SubElement(root, "testsuite", name=model, timestamp=report.started[:19])
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        seconds = 0.0
        for target in (t for t in report.targets if t.model == model):
            seconds += target.seconds
            for gate in target.gates:
                _testcase(suite, target, gate, counts)
        suite.attrib.update({key: str(value) for key, value in counts.items()})
        suite.set("time", f"{seconds:.3f}")
        for key in totals:
            totals[key] += counts[key]
    root.attrib.update({key: str(value) for key, value in totals.items()})
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(report: BuildReport, path: Path) -> Path:
    return write_text_atomic(path, junit_xml(report))


def _testcase(suite: ET.Element, target: TargetResult, gate: GateResult, counts: dict[str, int]) -> None:
    # The export gate carries the target's time: the other gates are measured inside it.
    seconds = target.seconds if gate.name == "export" else 0.0
    case = ET.SubElement(suite, "testcase", classname=f"{target.model}.{target.name}", name=gate.name,
                         time=f"{seconds:.3f}")
    counts["tests"] += 1
    if gate.status == FAILED:
        ET.SubElement(case, "failure", message=gate.message or "failed", type=gate.name).text = _detail(target, gate)
        counts["failures"] += 1
    elif gate.status == ERROR:
        ET.SubElement(case, "error", message=gate.message or "error", type=gate.name).text = _detail(target, gate)
        counts["errors"] += 1
    elif gate.status == SKIPPED:
        ET.SubElement(case, "skipped", message=gate.message or "skipped")
        counts["skipped"] += 1
    elif gate.message:
        ET.SubElement(case, "system-out").text = gate.message


def _detail(target: TargetResult, gate: GateResult) -> str:
    lines = [f"target {target.target} -> {target.output}", gate.message]
    if gate.value is not None:
        lines.append(f"measured {gate.value:.6g}" + (f", limit {gate.limit:.6g}" if gate.limit is not None else ""))
    return "\n".join(line for line in lines if line)

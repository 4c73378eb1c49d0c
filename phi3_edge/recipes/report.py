"""What a build did, as data: one TargetResult per artifact (with its gates), and the JSON summary writer.

junit.py and markdown.py render the same BuildReport for CI systems; the JSON is the complete record
(targets, sizes, fidelity, timings, manifest hashes, the oldest runtime that runs each artifact).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PASSED, FAILED, SKIPPED, ERROR = "passed", "failed", "skipped", "error"
REPORT_FORMAT = "phi3-edge-build-report/1"
# Exit codes of `phi3-edge build`: 0 every target passed; 1 nothing was built (bad recipe, missing checkpoint);
# 2 bad command line; 3 the build ran and at least one target failed (the last stderr line and the reports name
# them).
EXIT_TARGETS_FAILED = 3


@dataclass(frozen=True)
class GateResult:
    """One check of one artifact: "export" (it was built), "accuracy" (KL within max_kl), ..."""

    name: str
    status: str  # PASSED | FAILED | SKIPPED | ERROR
    message: str = ""
    value: float | None = None  # the measured figure (KL for the accuracy gate)
    limit: float | None = None  # the threshold it was held to


@dataclass(frozen=True)
class TargetResult:
    model: str
    name: str  # the artifact (recipe target) name
    target: str  # the target table row
    group: str
    output: str  # the artifact folder
    status: str  # PASSED when every gate passed or was skipped, FAILED when a gate failed, ERROR otherwise
    seconds: float
    gates: tuple[GateResult, ...] = ()
    size_bytes: int | None = None
    files: dict[str, int] = field(default_factory=dict)  # name -> bytes
    fidelity: dict[str, Any] | None = None  # manifest.json's fidelity record
    manifest_sha256: str | None = None
    min_runtime: dict[str, Any] | None = None
    message: str = ""  # why it failed, one line

    @property
    def passed(self) -> bool:
        return self.status == PASSED


@dataclass(frozen=True)
class BuildReport:
    recipe: str
    started: str  # ISO 8601, UTC
    seconds: float
    targets: tuple[TargetResult, ...]
    read_passes: int = 0  # how many times checkpoint weights were read (one per model x group when one-pass)
    tools: dict[str, str | None] = field(default_factory=dict)

    @property
    def failed(self) -> tuple[TargetResult, ...]:
        return tuple(t for t in self.targets if not t.passed)

    @property
    def exit_code(self) -> int:
        return EXIT_TARGETS_FAILED if self.failed else 0

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["passed"] = len(self.targets) - len(self.failed)
        body["failed"] = [f"{t.model}/{t.name}" for t in self.failed]
        return {"format": REPORT_FORMAT, **body}


def target_status(gates: tuple[GateResult, ...]) -> str:
    """A target's status from its gates: an error wins, then a failure; passed and skipped gates pass."""
    statuses = {gate.status for gate in gates}
    if ERROR in statuses:
        return ERROR
    return FAILED if FAILED in statuses else PASSED


def write_json(report: BuildReport, path: Path) -> Path:
    """The JSON summary, written beside `path` and renamed over it (a reader never sees half a file)."""
    return write_text_atomic(path, json.dumps(report.to_json(), indent=2) + "\n")


def write_text_atomic(path: Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def read_report(path: Path) -> BuildReport:
    """Load a JSON summary written by write_json (used to merge matrix jobs' reports and by tests)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    targets = tuple(TargetResult(**{**t, "gates": tuple(GateResult(**g) for g in t["gates"])})
                    for t in data["targets"])
    return BuildReport(data["recipe"], data["started"], data["seconds"], targets, data.get("read_passes", 0),
                       data.get("tools", {}))

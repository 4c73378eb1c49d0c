"""A BuildReport as a Markdown summary: what a CI system shows on the run's page ($GITHUB_STEP_SUMMARY)."""

from __future__ import annotations

import os
from pathlib import Path

from phi3_edge.recipes.report import PASSED, BuildReport, TargetResult, write_text_atomic

STEP_SUMMARY_ENV = "GITHUB_STEP_SUMMARY"  # GitHub Actions: a file whose Markdown is shown on the run's page
_ICONS = {"passed": "✅ passed", "failed": "❌ failed", "error": "💥 error", "skipped": "⏭ skipped"}


def markdown_summary(report: BuildReport) -> str:
    passed = len(report.targets) - len(report.failed)
    lines = [
        "## phi3-edge build",
        "",
        f"`{report.recipe}`: {passed}/{len(report.targets)} targets passed in {report.seconds:.1f} s"
        + (f", checkpoint read {report.read_passes}x" if report.read_passes else "") + ".",
        "",
        "| model | target | status | size | KL vs fp32 | top-1 | oldest onnxruntime | time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [_row(target) for target in report.targets]
    failures = [t for t in report.targets if t.status != PASSED]
    if failures:
        lines += ["", "### Failures", ""]
        lines += [f"- **{t.model}/{t.name}**: {_escape(t.message or _first_failed_gate(t))}" for t in failures]
    return "\n".join(lines) + "\n"


def write_markdown(report: BuildReport, path: Path) -> Path:
    return write_text_atomic(path, markdown_summary(report))


def append_step_summary(markdown: str) -> Path | None:
    """Append to $GITHUB_STEP_SUMMARY when set (several steps may write it, so append, never replace)."""
    target = os.environ.get(STEP_SUMMARY_ENV)
    if not target:
        return None
    with open(target, "a", encoding="utf-8") as out:
        out.write(markdown)
    return Path(target)


def _row(t: TargetResult) -> str:
    fidelity = t.fidelity or {}
    kl = f"{fidelity['kl']:.4g}" if isinstance(fidelity.get("kl"), (int, float)) else "-"
    top1 = f"{fidelity['top1']:.1%}" if isinstance(fidelity.get("top1"), (int, float)) else "-"
    size = f"{t.size_bytes / 2**20:.1f} MiB" if t.size_bytes is not None else "-"
    ort = (t.min_runtime or {}).get("onnxruntime") or "-"
    cells = (t.model, f"{t.name}" + (f" ({t.target})" if t.target != t.name else ""), _ICONS.get(t.status, t.status),
             size, kl, top1, str(ort), f"{t.seconds:.1f} s")
    return "| " + " | ".join(_escape(cell) for cell in cells) + " |"


def _first_failed_gate(t: TargetResult) -> str:
    return next((f"{g.name}: {g.message}" for g in t.gates if g.status != PASSED and g.status != "skipped"), t.status)


def _escape(text: str) -> str:
    """Table cells: a pipe would end the cell, a newline the row."""
    return " ".join(text.split()).replace("|", "\\|")

"""Run a recipe: every selected model x target exported (through an injected export function), gated, reported.

    for (model, targets) in select(recipe, ...):        one matrix cell, or everything
        side by side, one thread per target:           a failing target fails alone; the build goes on
            export(model.source, target, folder) ─► gates: export, accuracy (max_kl) [, push]
    ─► BuildReport ─► report.json, junit.xml, summary.md (+ $GITHUB_STEP_SUMMARY)

The export function is api's (this package sits below api and must not import it); it raises Phi3EdgeError
for a failed export, and the accuracy gate's message starts with ACCURACY_GATE_PREFIX (evaluate/gate.py), which
is how a gate failure is told from a broken export.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from phi3_edge.errors import Phi3EdgeError
from phi3_edge.manifest import read_manifest, sha256_file, tool_versions
from phi3_edge.recipes.junit import write_junit
from phi3_edge.recipes.logs import BuildLog
from phi3_edge.recipes.markdown import append_step_summary, markdown_summary, write_markdown
from phi3_edge.recipes.matrix import select
from phi3_edge.recipes.recipe import ModelSpec, Recipe, TargetSpec
from phi3_edge.recipes.report import (
    ERROR,
    FAILED,
    PASSED,
    SKIPPED,
    BuildReport,
    GateResult,
    TargetResult,
    target_status,
    write_json,
)

ACCURACY_GATE_PREFIX = "accuracy gate:"
_MEASURED_KL = re.compile(r"KL ([-+0-9.eE]+|nan|inf)")  # the figure the gate's message reports
REPORT_FILES = ("report.json", "junit.xml", "summary.md")
# export(source, target spec, artifact folder) -> None; raises Phi3EdgeError when the target fails.
ExportFunction = Callable[[str, TargetSpec, Path], None]
# push(artifact folder, repo id) -> the commit URL; raises Phi3EdgeError.
PushFunction = Callable[[Path, str], str]


@dataclass(frozen=True)
class Selection:
    model: str | None = None
    group: str | None = None
    targets: tuple[str, ...] = ()


def run_build(recipe: Recipe, export: ExportFunction, *, selection: Selection = Selection(),
              log: BuildLog | None = None, push: PushFunction | None = None, concurrent: bool = True) -> BuildReport:
    """concurrent: a model's selected targets are exported side by side (one thread each), so they walk the
    checkpoint together and each page of it is read from disk about once, the page cache serving the others;
    memory is then the sum of the exports' (each layer-streamed). False: one after another (least memory; every
    export reads the checkpoint again unless the page cache holds all of it)."""
    log = log or BuildLog()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    started = time.perf_counter()
    results: list[TargetResult] = []
    passes = 0
    for model, targets in select(recipe, model=selection.model, group=selection.group, targets=selection.targets):
        for target in targets:
            log.line(f"{model.name}/{target.name}: exporting {model.source} to {target.target}")

        def one(target: TargetSpec, model: ModelSpec = model) -> TargetResult:
            result = _build_one(recipe, model, target, export, push)
            if result.passed:
                log.line(f"{model.name}/{target.name}: passed in {result.seconds:.1f} s", "ok")
            else:
                log.failure(f"{model.name}/{target.name}", result.message)
            return result

        if concurrent and len(targets) > 1:
            with ThreadPoolExecutor(max_workers=len(targets), thread_name_prefix="phi3-edge-build") as pool:
                results += list(pool.map(one, targets))  # in recipe order, whatever finishes first
            passes += 1
        else:
            results += [one(target) for target in targets]
            passes += len(targets)
    return BuildReport(str(recipe.path), started_at, time.perf_counter() - started, tuple(results),
                       read_passes=passes, tools=tool_versions())


def write_reports(report: BuildReport, folder: Path) -> tuple[Path, ...]:
    """report.json, junit.xml and summary.md in `folder`, and the summary appended to $GITHUB_STEP_SUMMARY."""
    markdown = markdown_summary(report)
    written = (write_json(report, folder / REPORT_FILES[0]), write_junit(report, folder / REPORT_FILES[1]),
               write_markdown(report, folder / REPORT_FILES[2]))
    append_step_summary(markdown)
    return written


def failed_line(report: BuildReport) -> str:
    """The last line a failed build prints: which targets failed."""
    return "failed: " + ", ".join(f"{t.model}/{t.name} ({t.message})" for t in report.failed)


def _build_one(recipe: Recipe, model: ModelSpec, target: TargetSpec, export: ExportFunction,
               push: PushFunction | None) -> TargetResult:
    folder = recipe.artifact_dir(model, target)
    started = time.perf_counter()
    try:
        export(model.source, target, folder)
    except Phi3EdgeError as exc:
        message = " ".join(str(exc).split())
        gates: tuple[GateResult, ...]
        if message.startswith(ACCURACY_GATE_PREFIX):
            measured = _MEASURED_KL.search(message)
            gates = (GateResult("export", PASSED, "exported, then refused by its accuracy gate"),
                     GateResult("accuracy", FAILED, message, float(measured.group(1)) if measured else None,
                                target.options.max_kl))
        else:
            gates = (GateResult("export", ERROR, message),)
        return TargetResult(model.name, target.name, target.target, target.group, str(folder), target_status(gates),
                            time.perf_counter() - started, gates, message=message)
    seconds = time.perf_counter() - started
    manifest = read_manifest(folder)
    gates = (GateResult("export", PASSED, f"{len(manifest['files'])} files"), _accuracy_gate(manifest, target))
    repo = recipe.publish_repo_for(model, target)
    if push is not None and repo is not None and target_status(gates) == PASSED:
        gates += (_push_gate(push, folder, repo),)
    status = target_status(gates)
    failed = next((f"{g.name}: {g.message}" for g in gates if g.status in (FAILED, ERROR)), "")
    files = {name: int(entry.get("bytes", 0)) for name, entry in manifest["files"].items()}
    return TargetResult(model.name, target.name, target.target, target.group, str(folder), status, seconds, gates,
                        size_bytes=_disk_bytes(folder), files=files, fidelity=manifest.get("fidelity"),
                        manifest_sha256=sha256_file(folder / "manifest.json"),
                        min_runtime=manifest.get("min_runtime"), message=failed)


def _disk_bytes(folder: Path) -> int:
    """Bytes on disk, each file once: the Optimum layout's weights are a hard link to model.onnx.data."""
    seen: dict[tuple[int, int], int] = {}
    for path in folder.rglob("*"):
        if path.is_file():
            stat = path.stat()
            seen[(stat.st_dev, stat.st_ino)] = stat.st_size
    return sum(seen.values())


def _accuracy_gate(manifest: dict[str, Any], target: TargetSpec) -> GateResult:
    limit = target.options.max_kl
    fidelity = manifest.get("fidelity")
    if not isinstance(fidelity, dict) or not isinstance(fidelity.get("kl"), (int, float)):
        reason = "not measured (float weights, or fidelity = false)"
        return GateResult("accuracy", SKIPPED, reason, limit=limit)
    kl = float(fidelity["kl"])
    if limit is None:
        return GateResult("accuracy", SKIPPED, f"KL {kl:.4g} measured, no max_kl set", kl)
    # The export already refused a KL above the limit; this records the figure the gate passed on.
    return GateResult("accuracy", PASSED, f"KL {kl:.4g} <= max_kl {limit:g}", kl, limit)


def _push_gate(push: PushFunction, folder: Path, repo: str) -> GateResult:
    try:
        url = push(folder, repo)
    except Phi3EdgeError as exc:
        return GateResult("push", ERROR, " ".join(str(exc).split()))
    return GateResult("push", PASSED, url)

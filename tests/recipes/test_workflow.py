"""The GitHub Actions pieces: actionlint passes on the reusable workflow and on a caller of the composite action,
and the YAML agrees with the code (matrix keys are MatrixJob's fields, every input used is declared)."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import fields
from pathlib import Path

import pytest

from phi3_edge.recipes.matrix import MatrixJob

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "phi3-edge-build.yml"
ACTION = ROOT / ".github" / "actions" / "phi3-edge-build" / "action.yml"
yaml = pytest.importorskip("yaml")
needs_actionlint = pytest.mark.skipif(shutil.which("actionlint") is None, reason="actionlint not installed")


def _actionlint(cwd: Path, *paths: str) -> None:
    done = subprocess.run(["actionlint", "-no-color", *paths], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_actionlint
def test_actionlint_passes_on_the_workflows() -> None:
    _actionlint(ROOT, *(str(p.relative_to(ROOT)) for p in sorted((ROOT / ".github" / "workflows").glob("*.yml"))))


@needs_actionlint
def test_actionlint_checks_a_caller_of_the_composite_action(tmp_path: Path) -> None:
    """actionlint reads a local action's metadata where a workflow uses it: inputs and their names get checked."""
    (tmp_path / ".github" / "actions").mkdir(parents=True)
    shutil.copytree(ACTION.parent, tmp_path / ".github" / "actions" / "phi3-edge-build")
    (tmp_path / ".github" / "workflows").mkdir()
    caller = {"name": "caller", "on": "push", "jobs": {"build": {"runs-on": "ubuntu-latest", "steps": [
        {"uses": "actions/checkout@v5"},
        {"uses": "./.github/actions/phi3-edge-build",
         "with": {"recipe": "build.toml", "model": "demo", "group": "cpu"}}]}}}
    (tmp_path / ".github" / "workflows" / "caller.yml").write_text(yaml.safe_dump(caller), encoding="utf-8")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    _actionlint(tmp_path, ".github/workflows/caller.yml")
    caller["jobs"]["build"]["steps"][1]["with"]["modle"] = "typo"  # type: ignore[index]
    (tmp_path / ".github" / "workflows" / "caller.yml").write_text(yaml.safe_dump(caller), encoding="utf-8")
    done = subprocess.run(["actionlint", "-no-color", ".github/workflows/caller.yml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0 and "modle" in done.stdout


def test_matrix_keys_the_workflow_reads_are_matrix_job_fields() -> None:
    text = WORKFLOW.read_text(encoding="utf-8")
    used = set(re.findall(r"matrix\.([a-z_]+)", text))
    assert used and used <= {f.name for f in fields(MatrixJob)}


def test_every_action_input_used_is_declared_and_required_ones_are_passed() -> None:
    action = yaml.safe_load(ACTION.read_text(encoding="utf-8"))
    declared = set(action["inputs"])
    used = set(re.findall(r"inputs\.([a-z0-9-]+)", ACTION.read_text(encoding="utf-8")))
    assert used <= declared, used - declared
    required = {name for name, spec in action["inputs"].items() if spec.get("required")}
    workflow = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    step = next(s for s in workflow["jobs"]["build"]["steps"] if "phi3-edge-build" in s.get("uses", ""))
    assert required <= set(step["with"])
    assert action["runs"]["using"] == "composite"
    assert all(s.get("shell") == "bash" for s in action["runs"]["steps"] if "run" in s)


def test_every_build_flag_the_yaml_uses_exists() -> None:
    """The action and the workflow call `phi3-edge build` with flags: each must be one of the command's options."""
    from phi3_edge.cli import build

    known = {opt for param in build.params for opt in getattr(param, "opts", [])}
    text = ACTION.read_text(encoding="utf-8") + WORKFLOW.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if "phi3-edge build" in line or "extra+=" in line]
    used = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", "\n".join(lines)))
    assert used and used <= known, used - known

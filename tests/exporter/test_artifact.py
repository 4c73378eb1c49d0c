"""Atomic artifact folders: nothing that looks finished unless the export finished."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from phi3_edge import manifest as mf
from phi3_edge.errors import ArtifactError
from phi3_edge.exporter import artifact
from phi3_edge.exporter.artifact import staged_artifact, sweep_stale
from phi3_edge.integrity import check_artifact


def fill(folder: Path, payload: str = "new") -> None:
    (folder / "model.onnx").write_text(payload)
    manifest = mf.build_manifest(
        source={}, spec_json={}, target={}, recipe={}, io_signature=[], artifact_dir=folder, rope_switch_length=None
    )
    mf.write_manifest(folder, manifest)


def siblings(output: Path) -> list[str]:
    return sorted(p.name for p in output.parent.iterdir() if p.name.startswith(f".{output.name}."))


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_fresh_export_is_renamed_into_place(tmp_path):
    output = tmp_path / "build" / "cpu-fp32"  # parent does not exist yet
    with staged_artifact(output, force=False) as staging:
        assert staging.parent == output.parent
        assert staging.name.startswith(f".cpu-fp32.partial-{os.getpid()}-")
        assert list(staging.iterdir()) == []
        assert not output.exists()  # nothing visible until the end
        fill(staging)
    assert (output / "model.onnx").read_text() == "new"
    assert [f.problem for f in check_artifact(output, remember=False).files if f.problem] == []
    assert siblings(output) == []


@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
def test_failure_leaves_nothing(tmp_path, exc_type):
    output = tmp_path / "out"
    with pytest.raises(exc_type):
        with staged_artifact(output, force=False) as staging:
            fill(staging)
            raise exc_type("boom")
    assert not output.exists()
    assert siblings(output) == []


def test_disk_full_becomes_one_line_artifact_error(tmp_path):
    output = tmp_path / "out"
    with pytest.raises(ArtifactError, match="disk full while writing model.onnx.data") as info:
        with staged_artifact(output, force=False) as staging:
            raise OSError(errno.ENOSPC, "No space left on device", str(staging / "model.onnx.data"))
    assert "\n" not in str(info.value) and str(output) in str(info.value)
    assert siblings(output) == [] and not output.exists()


def test_other_os_errors_propagate_unchanged(tmp_path):
    with pytest.raises(PermissionError):
        with staged_artifact(tmp_path / "out", force=False):
            raise PermissionError(errno.EACCES, "denied")
    assert siblings(tmp_path / "out") == []


def test_foreign_folder_is_never_overwritten(tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "thesis.tex").write_text("precious")
    for force in (False, True):
        with pytest.raises(ArtifactError, match="exists and is not a phi3-edge artifact; refusing to overwrite"):
            with staged_artifact(output, force=force):
                pytest.fail("must not start")
    assert (output / "thesis.tex").read_text() == "precious"


def test_a_file_in_the_way_is_refused(tmp_path):
    output = tmp_path / "out"
    output.write_text("x")
    with pytest.raises(ArtifactError, match="not a phi3-edge artifact"):
        with staged_artifact(output, force=True):
            pass


def test_empty_folder_is_used(tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    with staged_artifact(output, force=False) as staging:
        fill(staging)
    assert (output / "model.onnx").read_text() == "new"


def test_our_artifact_needs_force_and_is_then_replaced(tmp_path):
    output = tmp_path / "out"
    with staged_artifact(output, force=False) as staging:
        fill(staging, "old")
    with pytest.raises(ArtifactError, match="already exists; pass --force to replace it"):
        with staged_artifact(output, force=False):
            pytest.fail("must not start")
    with staged_artifact(output, force=True) as staging:
        fill(staging, "new")
    assert (output / "model.onnx").read_text() == "new"
    assert [f.problem for f in check_artifact(output, remember=False).files if f.problem] == []
    assert siblings(output) == []  # no partial, no trash


def test_failed_replace_keeps_the_old_artifact(tmp_path, monkeypatch):
    output = tmp_path / "out"
    with staged_artifact(output, force=False) as staging:
        fill(staging, "old")
    real_rename = os.rename

    def flaky_rename(src, dst):
        if ".partial-" in str(src):
            raise OSError(errno.EIO, "I/O error")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", flaky_rename)
    monkeypatch.setattr(artifact, "_exchange", lambda a, b: False)  # the two-rename fallback (non-Linux)
    with pytest.raises(OSError):
        with staged_artifact(output, force=True) as staging:
            fill(staging, "new")
    assert (output / "model.onnx").read_text() == "old"
    assert siblings(output) == []


def test_folder_that_appears_during_export_is_not_clobbered(tmp_path):
    output = tmp_path / "out"
    with pytest.raises(ArtifactError, match="not a phi3-edge artifact"):
        with staged_artifact(output, force=True) as staging:
            fill(staging)
            output.mkdir()
            (output / "other.txt").write_text("someone else's")
    assert (output / "other.txt").exists() and siblings(output) == []


def test_stale_partials_of_dead_processes_are_swept(tmp_path):
    output = tmp_path / "out"
    dead = tmp_path / f".out.partial-{dead_pid()}-deadbeef"
    dead_trash = tmp_path / f".out.trash-{dead_pid()}-deadbeef"
    alive = tmp_path / f".out.partial-{os.getppid()}-cafe"
    odd = tmp_path / ".out.partial-notapid"
    other = tmp_path / f".other.partial-{dead_pid()}-beef"
    for folder in (dead, dead_trash, alive, odd, other):
        folder.mkdir()
    with staged_artifact(output, force=False) as staging:
        fill(staging)
    assert not dead.exists() and not dead_trash.exists()
    assert alive.exists() and odd.exists() and other.exists()
    assert sweep_stale(output) == []


def test_pid_parsing():
    assert artifact._pid_of(Path(".a.b.partial-123-ff"), "partial") == 123
    assert artifact._pid_of(Path(".a.partial-x-ff"), "partial") is None
    assert artifact._pid_of(Path(".a.partial-123"), "partial") is None

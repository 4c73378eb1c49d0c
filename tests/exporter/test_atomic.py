"""Atomic exports, proven on real `phi3-edge export` processes killed at named points.

paused_export.py runs the CLI with an `on_stage` callback (exporter/artifact.py's STAGES) that sleeps at one
stage and announces it through a marker file; we then SIGKILL or SIGINT it there and check
that nothing at --output looks complete (or that the artifact --force was replacing is untouched), and that
the same command run again succeeds. A full disk is simulated with RLIMIT_FSIZE.
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from phi3_edge.errors import ArtifactError
from phi3_edge.exporter import artifact
from phi3_edge.exporter.artifact import STAGES, staged_artifact
from phi3_edge.integrity import check_artifact
from phi3_edge.manifest import build_manifest, read_manifest, write_manifest

PAUSE_TIMEOUT = 60.0  # seconds to reach a stage; an export of the tiny checkpoint takes about one
FRESH_STAGES = ("staged", "headers", "weights", "complete")
PAUSED_EXPORT = Path(__file__).with_name("paused_export.py")


def cli() -> list[str]:
    """The installed console script when it sits next to this interpreter, else the same entry point via -m."""
    script = Path(sys.executable).with_name("phi3-edge")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "phi3_edge.cli"]


def export_args(checkpoint: Path, output: Path, *extra: str) -> list[str]:
    return [*cli(), "export", "--model", str(checkpoint), "--target", "cpu-fp32", "--output", str(output), "--quiet",
            *extra]


def default_sigint() -> None:
    # A runner started in the background may pass SIGINT ignored; Python only turns it into KeyboardInterrupt
    # when it starts with the default disposition.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_paused(args: list[str], stage: str, marker: Path) -> subprocess.Popen[str]:
    """`args` (a CLI command line, see export_args) run by paused_export.py, which stops at `stage`."""
    paused = [sys.executable, str(PAUSED_EXPORT), stage, str(marker), *args[len(cli()):]]
    child = subprocess.Popen(paused, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=default_sigint)
    deadline = time.monotonic() + PAUSE_TIMEOUT
    while not marker.exists():
        if child.poll() is not None:
            pytest.fail(f"export ended (rc {child.returncode}) before stage {stage!r}: {child.stderr.read()}")
        if time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"export never reached stage {stage!r}")
        time.sleep(0.02)
    return child


def interrupt(child: subprocess.Popen[str], sig: signal.Signals) -> tuple[int, str]:
    child.send_signal(sig)
    _, stderr = child.communicate(timeout=PAUSE_TIMEOUT)
    return child.returncode, stderr


def siblings(output: Path) -> list[str]:
    return sorted(p.name for p in output.parent.iterdir() if p.name.startswith(f".{output.name}."))


def run_ok(args: list[str]) -> None:
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).is_dir()


def assert_interrupted(sig: signal.Signals, rc: int, stderr: str) -> None:
    if sig == signal.SIGINT:
        assert rc == 130 and stderr.strip() == "interrupted", (rc, stderr)
        assert "Traceback" not in stderr
    else:
        assert rc == -signal.SIGKILL


def snapshot(folder: Path) -> tuple[int, dict]:
    """(inode, manifest file table): equal snapshots mean the very same artifact folder, byte for byte."""
    return folder.stat().st_ino, read_manifest(folder)["files"]


@pytest.fixture(scope="module")
def old_artifact(tiny_checkpoint, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("old") / "artifact"
    run_ok(export_args(tiny_checkpoint("gqa"), folder))
    return folder


# SIGKILL at every stage; SIGINT's cleanup is one code path, so two stages show it.
FRESH_CASES = [(stage, signal.SIGKILL) for stage in FRESH_STAGES] + \
    [(stage, signal.SIGINT) for stage in ("weights", "complete")]


@pytest.mark.parametrize(("stage", "sig"), FRESH_CASES, ids=[f"{s}-{g.name}" for s, g in FRESH_CASES])
def test_killed_fresh_export_leaves_no_output_and_reruns(tiny_checkpoint, tmp_path, stage, sig) -> None:
    output = tmp_path / "out"
    args = export_args(tiny_checkpoint("gqa"), output)
    rc, stderr = interrupt(start_paused(args, stage, tmp_path / "paused"), sig)
    assert_interrupted(sig, rc, stderr)
    assert not output.exists(), "a killed export must leave nothing at --output"
    if sig == signal.SIGINT:
        assert siblings(output) == [], "Ctrl-C removes its partial folder on the way out"
    else:
        assert [name.split("-")[0] for name in siblings(output)] == [".out.partial"]  # hidden, swept next time
    run_ok(args)  # the same command again: sweeps the dead process's partial folder and succeeds
    assert check_artifact(output, remember=False).ok
    assert siblings(output) == []


@pytest.mark.parametrize("stage", ["weights", "complete", "swapped"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_killed_force_replace_keeps_a_complete_artifact(tiny_checkpoint, old_artifact, tmp_path, stage, sig) -> None:
    output = tmp_path / "out"
    shutil.copytree(old_artifact, output)
    before = snapshot(output)
    args = export_args(tiny_checkpoint("gqa"), output, "--force")
    rc, stderr = interrupt(start_paused(args, stage, tmp_path / "paused"), sig)
    assert_interrupted(sig, rc, stderr)
    assert check_artifact(output, remember=False).ok, "--output is always a complete artifact"
    if stage == "swapped":  # killed after the atomic swap: the new artifact is in place, complete
        assert snapshot(output)[0] != before[0]
    else:
        assert snapshot(output) == before, "the artifact being replaced must be untouched"
    run_ok(args)  # (no inode comparison here: the swept old folder's inode may be reused)
    assert check_artifact(output, remember=False).ok and siblings(output) == []


def limit_file_size(limit: int):
    def apply() -> None:
        default_sigint()
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so an oversized write fails with EFBIG, not a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.parametrize("force", [False, True], ids=["fresh", "replacing"])
def test_full_disk_is_one_line_and_leaves_nothing(tiny_checkpoint, old_artifact, tmp_path, force) -> None:
    output = tmp_path / "out"
    if force:
        shutil.copytree(old_artifact, output)
        before = snapshot(output)
    args = export_args(tiny_checkpoint("gqa"), output, *(["--force"] if force else []))
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, preexec_fn=limit_file_size(64 * 1024))
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "file too large while writing model.onnx.data" in lines[0] and "partial export was removed" in lines[0]
    assert siblings(output) == []
    if force:
        assert snapshot(output) == before
    else:
        assert not output.exists()
    run_ok(args)  # with room again, the same command succeeds


def test_stages_are_reported_in_order_to_the_injected_callback(tmp_path) -> None:
    seen: list[str] = []
    output = tmp_path / "out"
    with staged_artifact(output, force=False, on_stage=seen.append) as staging:
        assert seen == ["staged"]
        fill_minimal(staging)
    assert seen == ["staged", "complete"]
    seen.clear()
    with staged_artifact(output, force=True, on_stage=seen.append) as staging:
        fill_minimal(staging)
    # One atomic exchange where the OS offers it, else two renames: either way, one replace stage last.
    assert seen[:2] == ["staged", "complete"] and seen[2:] in (["swapped"], ["between-renames"])
    assert set(seen) <= set(STAGES)
    with staged_artifact(tmp_path / "quiet", force=False) as staging:  # no callback: nothing to call
        fill_minimal(staging)


def fill_minimal(folder: Path) -> None:
    (folder / "model.onnx").write_text("graph")
    write_manifest(folder, build_manifest(source={}, spec_json={}, target={}, recipe={}, io_signature=[],
                                          artifact_dir=folder, rope_switch_length=None))


def test_no_room_errors_are_found_behind_a_writer_s_own_error(tmp_path) -> None:
    """TensorWriter turns OSError into ArtifactError `from None`; the context still says why."""
    output = tmp_path / "out"
    with pytest.raises(ArtifactError, match=r"^.*out: disk quota exceeded while writing model.onnx.data") as info:
        with staged_artifact(output, force=False) as staging:
            try:
                raise OSError(errno.EDQUOT, "Disk quota exceeded")
            except OSError:
                raise ArtifactError("cannot write", staging / "model.onnx.data") from None
    assert "\n" not in str(info.value) and not output.exists() and siblings(output) == []


def test_a_replace_killed_between_renames_is_undone_by_the_next_export(tmp_path, monkeypatch) -> None:
    """Without renameat2 a replace renames twice; a process killed in between leaves the old artifact in a
    trash sibling and no --output. The next export to the same place puts it back first."""
    output = tmp_path / "out"
    with staged_artifact(output, force=False) as staging:
        (staging / "model.onnx").write_text("old")
        write_manifest(staging, build_manifest(source={}, spec_json={}, target={}, recipe={}, io_signature=[],
                                               artifact_dir=staging, rope_switch_length=None))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    os.rename(output, tmp_path / f".out.trash-{dead.pid}-0123abcd")  # what the dying process left
    with pytest.raises(ArtifactError, match="already exists; pass --force"):
        with staged_artifact(output, force=False):
            pytest.fail("must not start")
    assert (output / "model.onnx").read_text() == "old" and siblings(output) == []
    monkeypatch.setattr(artifact, "_exchange", lambda first, second: False)
    with staged_artifact(output, force=True) as staging:
        (staging / "model.onnx").write_text("new")
    assert (output / "model.onnx").read_text() == "new" and siblings(output) == []

"""Publishing --output: the check and the swap are atomic together (a lock), --force replaces only folders
whose every file the manifest lists and never the checkpoint, and SIGTERM cleans up like Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from phi3_edge.errors import ArtifactError
from phi3_edge.exporter.artifact import staged_artifact
from phi3_edge.manifest import FORMAT, MANIFEST_NAME


def fake_artifact(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_text(name)
    files = {name: {"sha256": "0" * 64, "bytes": len(name)} for name in names}
    (folder / MANIFEST_NAME).write_text(json.dumps({"format": FORMAT, "files": files}))
    return folder


def test_two_exports_to_one_output_one_fails_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    output = tmp_path / "out"
    with staged_artifact(output, force=False) as first:
        (first / "a").write_text("first")
        with pytest.raises(ArtifactError, match="another export to this folder is running"):
            with staged_artifact(output, force=False):
                pass
    assert (output / "a").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "out"]  # no lock file or staging folder beside it


def test_force_keeps_a_folder_with_files_its_manifest_does_not_list(tmp_path: Path) -> None:
    output = fake_artifact(tmp_path / "out", "model.onnx")
    (output / "my-notes.txt").write_text("precious")
    with pytest.raises(ArtifactError, match="my-notes.txt"):
        with staged_artifact(output, force=True):
            pass
    assert (output / "my-notes.txt").read_text() == "precious"


def test_force_replaces_a_fully_listed_artifact(tmp_path: Path) -> None:
    output = fake_artifact(tmp_path / "out", "model.onnx")
    with staged_artifact(output, force=True) as folder:
        (folder / "new").write_text("new")
    assert sorted(p.name for p in output.iterdir()) == ["new"]


def test_force_never_replaces_the_checkpoint(tmp_path: Path) -> None:
    checkpoint = fake_artifact(tmp_path / "ckpt", "config.json")  # a checkpoint that also holds a manifest
    with pytest.raises(ArtifactError, match="checkpoint"):
        with staged_artifact(checkpoint, force=True, protected=(checkpoint,)):
            pass
    assert (checkpoint / "config.json").is_file()


def test_sigterm_leaves_no_partial_folder(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    code = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from phi3_edge.exporter.artifact import staged_artifact
        with staged_artifact(Path({str(tmp_path / 'out')!r}), force=False) as folder:
            (folder / "model.onnx").write_text("half")
            Path({str(ready)!r}).write_text("ok")
            time.sleep(60)
    """)
    process = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 60
    while not ready.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert ready.exists()
    os.kill(process.pid, signal.SIGTERM)
    assert process.wait(timeout=30) == 128 + signal.SIGTERM
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ready"]  # no .partial-*, no lock, no output


def test_export_onto_its_own_checkpoint_is_refused(tmp_path: Path) -> None:
    """`--model X -o X --force` with a manifest in X: the pipeline passes the checkpoint as protected."""
    import shutil

    from phi3_edge import api
    from phi3_edge.exporter.checkpoint import DEMO_DIR

    checkpoint = tmp_path / "ckpt"
    shutil.copytree(DEMO_DIR, checkpoint)
    names = sorted(p.name for p in checkpoint.iterdir())
    files = {name: {"sha256": "0" * 64, "bytes": (checkpoint / name).stat().st_size} for name in names}
    (checkpoint / MANIFEST_NAME).write_text(json.dumps({"format": FORMAT, "files": files}))
    with pytest.raises(ArtifactError, match="checkpoint"):
        api.export(str(checkpoint), target="cpu-fp32", output=checkpoint, force=True, progress=False)
    assert sorted(p.name for p in checkpoint.iterdir()) == sorted([*names, MANIFEST_NAME])

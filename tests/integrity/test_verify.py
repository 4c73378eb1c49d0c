"""`phi3-edge verify` and `verify_artifact`: damaged artifacts are refused with one line naming the file;
external data may not leave the folder; the per-user stamp makes later loads cheap without writing into the
artifact."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from phi3_edge import integrity
from phi3_edge.api import export
from phi3_edge.errors import ArtifactError
from phi3_edge.integrity import check_artifact, stamp_path, verify_artifact
from phi3_edge.manifest import MANIFEST_NAME, sha256_file

DATA = "model.onnx.data"


@pytest.fixture(scope="module")
def pristine(tiny_checkpoint, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("verify") / "cpu-fp32"
    export(str(tiny_checkpoint("gqa")), target="cpu-fp32", output=output, progress=False)
    return output


@pytest.fixture()
def artifact(pristine: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # stamps go here, never into the artifact
    return Path(shutil.copytree(pristine, tmp_path / "artifact"))


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("phi3-edge")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "phi3_edge.cli"]
    env = {**os.environ, "COLUMNS": "200"}  # a wide table: rows stay on one line
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=120, env=env)


def refused(folder: Path) -> str:
    with pytest.raises(ArtifactError) as caught:
        verify_artifact(folder, use_stamp=False)
    message = str(caught.value)
    assert "\n" not in message
    return message


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def reseal(folder: Path, name: str) -> None:
    """Re-record one file in the manifest: a crafted artifact whose hashes are all consistent."""
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["files"][name] = {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))


def relocate(folder: Path, location: str) -> None:
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, str(folder / "model.onnx"))
    reseal(folder, "model.onnx")


# -- the CLI -----------------------------------------------------------------------------------------------

def test_verify_prints_a_table_and_exits_0(artifact: Path) -> None:
    done = run_cli("verify", str(artifact))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    rows = {cells[1]: cells[4] for line in done.stdout.splitlines()
            if len(cells := [cell.strip() for cell in line.split("│")]) == 6}
    for name in ("model.onnx", DATA, "tokenizer.json", "genai_config.json", "tokenizer_config.json"):
        assert rows.get(name) == "ok", done.stdout
    assert "inputs/outputs match manifest.json" in done.stdout and "model.onnx.data (inside the folder" in done.stdout


def test_verify_damaged_is_one_line_and_exit_1(artifact: Path) -> None:
    path = artifact / DATA
    path.write_bytes(path.read_bytes()[:-1000])
    done = run_cli("verify", str(artifact))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: artifact is damaged: size "), done.stderr
    assert "recorded in manifest.json (truncated download" in lines[0]
    assert "Traceback" not in done.stderr and "truncated download" in done.stdout  # the table shows it too
    debug = run_cli("--debug", "verify", str(artifact))
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_verify_on_a_folder_that_is_not_an_artifact(tmp_path: Path) -> None:
    for folder, expected in ((tmp_path, "manifest.json not found"), (tmp_path / "nope", "artifact folder not found")):
        done = run_cli("verify", str(folder))
        assert done.returncode == 1 and done.stderr.count("\n") == 1 and expected in done.stderr, done.stderr


# -- what counts as damage ----------------------------------------------------------------------------------

def test_intact_artifact_passes(artifact: Path) -> None:
    verify_artifact(artifact)
    report = check_artifact(artifact)
    # 2 layers: input_ids, attention_mask, 4 past, logits_to_keep (optional input) in; logits, 4 present out
    assert report.ok and report.io_count == 12 and report.locations == (DATA,)


def test_flipped_byte(artifact: Path) -> None:
    flip_byte(artifact / DATA, 5000)
    message = refused(artifact)
    assert message.startswith(f"{artifact / DATA}: artifact is damaged: sha256 differs from manifest.json")


def test_truncated_data(artifact: Path) -> None:
    size = (artifact / DATA).stat().st_size
    os.truncate(artifact / DATA, 1234)
    message = refused(artifact)
    assert f"{DATA}: artifact is damaged: size 1234 != {size} recorded in manifest.json (truncated download" in message
    assert "(and 1 more problem;" in message  # the graph's tensors now end past the end of the data file
    assert f"tensors need {size} bytes of {DATA}, which has 1234" in str(check_artifact(artifact).problems)


def test_missing_and_extra_files(artifact: Path) -> None:
    (artifact / "tokenizer.json").unlink()
    assert "tokenizer.json: artifact is damaged: listed in manifest.json but missing" in refused(artifact)
    (artifact / "tokenizer.json").write_text("{}")
    reseal(artifact, "tokenizer.json")
    (artifact / "notes.txt").write_text("hello")
    assert "notes.txt: artifact is damaged: not listed in manifest.json" in refused(artifact)


def test_io_signature_must_match_the_graph(artifact: Path) -> None:
    manifest = json.loads((artifact / MANIFEST_NAME).read_text())
    manifest["io_signature"][0]["dtype"] = "int32"
    (artifact / MANIFEST_NAME).write_text(json.dumps(manifest))
    message = refused(artifact)
    assert "model.onnx: artifact is damaged: graph I/O 'input_ids' is int64 [batch_size, sequence_length], " \
           "manifest.json records int32" in message
    manifest["io_signature"] = manifest["io_signature"][1:]
    (artifact / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert "unexpected: input_ids" in refused(artifact)


def test_a_graph_that_is_not_onnx(artifact: Path) -> None:
    (artifact / "model.onnx").write_bytes(b"\x0a\xff\xff\xff\x0f")  # a field claiming 4 GB
    reseal(artifact, "model.onnx")
    assert "model.onnx: artifact is damaged: not a readable ONNX model (truncated field)" in refused(artifact)


@pytest.mark.parametrize("location", ["../outside.data", "/etc/passwd", "sub/../../x.data", "C:\\evil.data"])
def test_external_data_outside_the_folder_is_refused(artifact: Path, location: str) -> None:
    relocate(artifact, location)
    message = refused(artifact)
    assert message.startswith(f"{artifact / 'model.onnx'}: external data location {location!r} points outside "
                              "the artifact folder; refusing to load it"), message


def test_external_data_through_a_link_out_of_the_folder_is_refused(artifact: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.data"
    shutil.copy(artifact / DATA, outside)
    (artifact / DATA).unlink()
    (artifact / DATA).symlink_to(outside)  # same bytes, so the hash alone would pass
    assert f"{DATA}: artifact is damaged: a link pointing outside the artifact folder" in refused(artifact)
    assert f"external data file '{DATA}' is a link pointing outside" in str(check_artifact(artifact).problems)


def test_manifest_names_outside_the_folder_are_refused(artifact: Path) -> None:
    manifest = json.loads((artifact / MANIFEST_NAME).read_text())
    manifest["files"]["../secret"] = {"sha256": "0" * 64, "bytes": 1}
    (artifact / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert "manifest.json names a file outside the artifact folder" in refused(artifact)


# -- the stamp ----------------------------------------------------------------------------------------------

def count_hashes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    hashed: list[str] = []
    real = integrity.sha256_file

    def counting(path: Path) -> str:
        hashed.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(integrity, "sha256_file", counting)
    return hashed


def test_the_stamp_skips_hashing_until_a_file_changes(artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = sorted(p.name for p in artifact.rglob("*"))
    hashed = count_hashes(monkeypatch)
    verify_artifact(artifact)
    assert DATA in hashed  # first load: full hash
    stamp = stamp_path(artifact)
    assert stamp is not None and stamp.is_file() and Path(os.environ["XDG_CACHE_HOME"]) in stamp.parents
    assert sorted(p.name for p in artifact.rglob("*")) == before, "nothing is written into the artifact"
    hashed.clear()
    verify_artifact(artifact)
    assert hashed == []  # second load: (size, mtime_ns) match the stamp
    verify_artifact(artifact, use_stamp=False)
    assert DATA in hashed
    os.truncate(artifact / DATA, 100)
    with pytest.raises(ArtifactError, match="artifact is damaged: size 100"):
        verify_artifact(artifact)  # stamp no longer matches: checked again, and refused


def test_a_same_size_edit_is_caught_through_the_mtime(artifact: Path) -> None:
    verify_artifact(artifact)
    flip_byte(artifact / DATA, 100)
    stat = (artifact / DATA).stat()
    os.utime(artifact / DATA, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    with pytest.raises(ArtifactError, match="sha256 differs"):
        verify_artifact(artifact)


def test_a_damaged_artifact_is_never_stamped(artifact: Path) -> None:
    flip_byte(artifact / DATA, 100)
    for _ in range(2):
        with pytest.raises(ArtifactError):
            verify_artifact(artifact)
    assert not stamp_path(artifact).exists()


def test_an_unwritable_cache_only_costs_time(artifact: Path, tmp_path: Path, monkeypatch) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    verify_artifact(artifact)
    verify_artifact(artifact)
    (artifact / "stamp-garbage").write_text("x")
    with pytest.raises(ArtifactError, match="not listed"):
        verify_artifact(artifact)


def test_a_corrupt_stamp_is_ignored(artifact: Path) -> None:
    verify_artifact(artifact)
    stamp_path(artifact).write_text("{garbage")
    verify_artifact(artifact)
    assert json.loads(stamp_path(artifact).read_text())["version"] == integrity.STAMP_VERSION


def test_runtime_modules_do_not_import_onnx() -> None:
    code = ("import sys, phi3_edge.integrity, phi3_edge.onnx_wire; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('onnx', 'torch', 'transformers') "
            "or m.startswith('phi3_edge.exporter') or m.startswith('phi3_edge.edge_runtime')]; "
            "assert not bad, bad")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_load_refuses_a_damaged_artifact_by_default(tiny_checkpoint, tmp_path) -> None:
    """load() verifies: a flipped byte in model.onnx.data is refused, verify=False skips the check."""
    from phi3_edge.api import export, load
    from phi3_edge.errors import ArtifactError

    export(str(tiny_checkpoint("gqa")), target="cpu-fp32", output=tmp_path / "a", progress=False)
    assert load(tmp_path / "a").generate_ids([1, 2, 3], max_new_tokens=2).token_ids
    data = tmp_path / "a" / "model.onnx.data"
    blob = bytearray(data.read_bytes())
    blob[100] ^= 0xFF
    data.write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="damaged"):
        load(tmp_path / "a")
    assert load(tmp_path / "a", verify=False).generate_ids([1, 2, 3], max_new_tokens=2).token_ids

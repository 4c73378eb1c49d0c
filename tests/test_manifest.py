"""Artifact manifest: hashing, building, reading back and verifying a folder against it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from phi3_edge import manifest as mf
from phi3_edge.errors import ArtifactError


def make_artifact(folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(b"graph")
    (folder / "model.onnx.data").write_bytes(b"\1" * 1000)
    (folder / "sub").mkdir()
    (folder / "sub" / "x.txt").write_text("x")
    manifest = mf.build_manifest(
        source=mf.source_record("org/model", "abc", folder, []),
        spec_json={"hidden_size": 32},
        target={"name": "cpu-fp32"},
        recipe={"weights": "fp32"},
        io_signature=[{"name": "input_ids", "dtype": "int64", "shape": ["batch_size", "sequence_length"]}],
        artifact_dir=folder,
    )
    mf.write_manifest(folder, manifest)
    return manifest


def test_sha256_file_streams_large_files(tmp_path):
    path = tmp_path / "big"
    data = bytes(range(256)) * (5 * 4096 + 7)  # > 1 MiB, not a multiple of the chunk
    path.write_bytes(data)
    assert mf.sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_build_manifest_lists_every_file_but_itself(tmp_path):
    manifest = make_artifact(tmp_path / "a")
    assert manifest["format"] == mf.FORMAT == "phi3-edge-artifact/1"
    assert set(manifest["files"]) == {"model.onnx", "model.onnx.data", "sub/x.txt"}
    assert manifest["files"]["model.onnx"] == {"sha256": hashlib.sha256(b"graph").hexdigest(), "bytes": 5}
    assert set(manifest["tools"]) >= {"phi3-edge", "onnx", "onnxruntime", "numpy", "python"}
    assert manifest["tools"]["python"].count(".") == 2
    assert manifest["target"] == {"name": "cpu-fp32"} and manifest["recipe"] == {"weights": "fp32"}
    assert manifest["io_signature"][0]["name"] == "input_ids"
    # Rebuilding after the manifest exists must not list the manifest itself.
    assert mf.MANIFEST_NAME not in mf.artifact_files(tmp_path / "a")


def test_source_record_hashes_with_relative_names(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"w")
    record = mf.source_record("phi3:mini", "rev", tmp_path, [tmp_path / "config.json", tmp_path / "model.safetensors"])
    assert record["source"] == "phi3:mini" and record["revision"] == "rev"
    assert record["files"]["model.safetensors"] == {"sha256": hashlib.sha256(b"w").hexdigest(), "bytes": 1}
    assert list(record["files"]) == ["config.json", "model.safetensors"]


def test_roundtrip_and_verify_clean(tmp_path):
    manifest = make_artifact(tmp_path / "a")
    assert mf.read_manifest(tmp_path / "a") == json.loads(json.dumps(manifest))
    assert mf.is_artifact(tmp_path / "a")
    assert mf.verify_files(tmp_path / "a") == []


def test_verify_reports_each_problem(tmp_path):
    folder = tmp_path / "a"
    make_artifact(folder)
    (folder / "model.onnx").write_bytes(b"GRAPH")  # same size, different content
    (folder / "model.onnx.data").write_bytes(b"short")
    (folder / "sub" / "x.txt").unlink()
    (folder / "extra.bin").write_bytes(b"")
    problems = mf.verify_files(folder)
    assert any(p.startswith("model.onnx: sha256 mismatch") for p in problems)
    assert any(p.startswith("model.onnx.data: size 5 bytes, manifest says 1000") for p in problems)
    assert "sub/x.txt: missing" in problems
    assert "extra.bin: not listed in the manifest" in problems
    assert len(problems) == 4


def test_verify_refuses_names_outside_the_folder(tmp_path):
    folder = tmp_path / "a"
    manifest = make_artifact(folder)
    manifest["files"]["../secret"] = {"sha256": "0", "bytes": 0}
    manifest["files"]["bad"] = "nope"
    mf.write_manifest(folder, manifest)
    problems = mf.verify_files(folder)
    assert "../secret: refusing a file name outside the artifact folder" in problems
    assert "bad: malformed manifest entry" in problems


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "manifest.json not found"),
        ("{oops", "not valid JSON"),
        (json.dumps({"format": "something-else/1", "files": {}}), "not a phi3-edge manifest"),
        (json.dumps([1, 2]), "not a phi3-edge manifest"),
        (json.dumps({"format": mf.FORMAT}), "no 'files' table"),
    ],
)
def test_read_manifest_errors(tmp_path, content, message):
    if content is not None:
        (tmp_path / mf.MANIFEST_NAME).write_text(content)
    with pytest.raises(ArtifactError, match=message) as info:
        mf.read_manifest(tmp_path)
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)
    assert not mf.is_artifact(tmp_path)


def test_manifest_module_stays_light():
    # The runtime imports manifest.py: it must not pull in the exporter, onnx or torch.
    source = Path(mf.__file__).read_text()
    for forbidden in ("import onnx", "import torch", "transformers", "phi3_edge.exporter"):
        assert forbidden not in source

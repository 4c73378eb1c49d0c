"""Artifact manifest: hashing, building, reading back and verifying a folder against it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from phi3_edge import manifest as mf
from phi3_edge.artifact_contract import ROPE_SWITCH_KEY
from phi3_edge.errors import ArtifactError
from phi3_edge.integrity import check_artifact


def make_artifact(folder: Path, rope_switch_length: int | None = None) -> dict:
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
        rope_switch_length=rope_switch_length,
    )
    mf.write_manifest(folder, manifest)
    return manifest


def file_problems(folder: Path) -> dict[str, str]:
    """{name: problem} from the one real verifier's file checks (these folders hold no real graph)."""
    return {f.name: f.problem for f in check_artifact(folder, remember=False).files if f.problem}


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
    assert file_problems(tmp_path / "a") == {}


def test_verify_reports_each_problem(tmp_path):
    folder = tmp_path / "a"
    make_artifact(folder)
    (folder / "model.onnx").write_bytes(b"GRAPH")  # same size, different content
    (folder / "model.onnx.data").write_bytes(b"short")
    (folder / "sub" / "x.txt").unlink()
    (folder / "extra.bin").write_bytes(b"")
    problems = file_problems(folder)
    assert "sha256 differs" in problems["model.onnx"]
    assert "size 5 != 1000 recorded" in problems["model.onnx.data"]
    assert "listed in manifest.json but missing" in problems["sub/x.txt"]
    assert "not listed in manifest.json" in problems["extra.bin"]
    assert len(problems) == 4


def test_verify_refuses_names_outside_the_folder(tmp_path):
    folder = tmp_path / "a"
    manifest = make_artifact(folder)
    manifest["files"]["../secret"] = {"sha256": "0", "bytes": 0}
    manifest["files"]["bad"] = "nope"
    mf.write_manifest(folder, manifest)
    problems = file_problems(folder)
    assert "names a file outside the artifact folder" in problems["../secret"]
    assert "malformed entry" in problems["bad"]


@pytest.mark.parametrize("value", [4096, None])
def test_rope_switch_length_roundtrips(tmp_path, value):
    manifest = make_artifact(tmp_path / "a", rope_switch_length=value)
    assert manifest[ROPE_SWITCH_KEY] == value
    assert mf.read_rope_switch_length(tmp_path / "a") == value


def test_rope_switch_length_without_our_manifest_is_plain_rope(tmp_path):
    assert mf.read_rope_switch_length(tmp_path) is None  # no manifest.json: what onnxruntime-genai does
    (tmp_path / mf.MANIFEST_NAME).write_text(json.dumps({"format": "someone-else/1", ROPE_SWITCH_KEY: "x"}))
    assert mf.read_rope_switch_length(tmp_path) is None


@pytest.mark.parametrize("value", ["4096", 1, 0, -5, True, 4096.0, [4096]])
def test_malformed_rope_switch_length_is_one_line_error(tmp_path, value):
    folder = tmp_path / "a"
    manifest = make_artifact(folder)
    manifest[ROPE_SWITCH_KEY] = value
    mf.write_manifest(folder, manifest)
    with pytest.raises(ArtifactError, match=f"{ROPE_SWITCH_KEY} must be null or an integer") as info:
        mf.read_rope_switch_length(folder)
    assert str(folder / mf.MANIFEST_NAME) in str(info.value) and "\n" not in str(info.value)


def test_missing_rope_switch_length_is_an_error_not_plain_rope(tmp_path):
    folder = tmp_path / "a"
    manifest = make_artifact(folder)
    del manifest[ROPE_SWITCH_KEY]
    mf.write_manifest(folder, manifest)
    with pytest.raises(ArtifactError, match=f"no {ROPE_SWITCH_KEY} field"):
        mf.read_rope_switch_length(folder)
    (folder / mf.MANIFEST_NAME).write_text("{oops")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        mf.read_rope_switch_length(folder)


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

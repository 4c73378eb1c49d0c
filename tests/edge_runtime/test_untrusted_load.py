"""An artifact is untrusted input: load() (and verify, eval, inspect) refuse paths out of the folder, special
files, code-loading genai options, absurdly nested JSON and files swapped during loading — with one line, and
with or without verify."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from phi3_edge.api import load
from phi3_edge.edge_runtime import session as session_module
from phi3_edge.edge_runtime.artifact_info import inspect_artifact
from phi3_edge.edge_runtime.model import EdgeModel
from phi3_edge.errors import ArtifactError
from phi3_edge.evaluate.forward import ArtifactModel
from phi3_edge.integrity import check_artifact, stamp_path, verify_artifact
from phi3_edge.manifest import MANIFEST_NAME, sha256_file


@pytest.fixture()
def artifact(tiny_artifact, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return Path(shutil.copytree(tiny_artifact("gqa"), tmp_path / "artifact"))


def reseal(folder: Path, name: str) -> None:
    """The attacker re-hashes what he changed: the manifest is not signed."""
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["files"][name] = {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))


def edit_genai(folder: Path, change) -> None:  # type: ignore[no-untyped-def]
    path = folder / "genai_config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))
    reseal(folder, "genai_config.json")


def refused_everywhere(folder: Path, needle: str) -> None:
    """One line from load() with and without verify, and from verify's report."""
    for verify in (True, False):
        with pytest.raises(ArtifactError) as caught:
            load(folder, verify=verify)
        assert needle in str(caught.value) and "\n" not in str(caught.value), str(caught.value)
    report = check_artifact(folder, remember=False)
    assert not report.ok and any(needle in problem for _, problem in report.problems), report.problems


@pytest.mark.parametrize("where", ["../outside/model.onnx", "ABSOLUTE"])
def test_a_decoder_filename_outside_the_folder_is_refused(artifact: Path, where: str) -> None:
    outside = artifact.parent / "outside"
    outside.mkdir()
    shutil.copy(artifact / "model.onnx", outside / "model.onnx")
    name = str(outside / "model.onnx") if where == "ABSOLUTE" else where
    edit_genai(artifact, lambda c: c["model"]["decoder"].update(filename=name))
    refused_everywhere(artifact, "points outside the artifact folder")
    with pytest.raises(ArtifactError, match="outside the artifact folder"):
        inspect_artifact(artifact)
    with pytest.raises(ArtifactError, match="outside the artifact folder"):
        ArtifactModel(artifact)  # eval


def test_a_tokenizer_linked_out_of_the_folder_is_refused(artifact: Path) -> None:
    outside = artifact.parent / "tokenizer.json"
    shutil.move(artifact / "tokenizer.json", outside)
    (artifact / "tokenizer.json").symlink_to(outside)
    with pytest.raises(ArtifactError, match="link pointing outside"):
        load(artifact, verify=False)


def test_a_fifo_is_refused_without_blocking(artifact: Path) -> None:
    (artifact / "tokenizer.json").unlink()
    os.mkfifo(artifact / "tokenizer.json")  # open() would wait for a writer forever
    with pytest.raises(ArtifactError, match="not a regular file"):
        load(artifact, verify=False)


@pytest.mark.parametrize("option", [{"custom_ops_library": "libevil.so"}, {"enable_profiling": "/tmp/profile_"},
                                    {"ep_context_file_path": "/tmp/x.onnx"},
                                    {"provider_options": [{"qnn": {"backend_path": "libQnnHtp.so"}}]}])
def test_code_loading_or_file_writing_genai_options_need_a_flag(artifact: Path, option: dict) -> None:
    edit_genai(artifact, lambda c: c["model"]["decoder"]["session_options"].update(option))
    refused_everywhere(artifact, "loads code or writes files")
    assert check_artifact(artifact, remember=False, allow_unsafe_config=True).ok
    EdgeModel.load(artifact, allow_unsafe_config=True)  # the ort backend never reads session_options: it loads


@pytest.mark.parametrize("name", ["tokenizer_config.json", "genai_config.json", "generation_config.json"])
def test_a_100k_deep_json_is_one_line(artifact: Path, name: str) -> None:
    (artifact / name).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ArtifactError) as caught:
        load(artifact, verify=False)
    assert name in str(caught.value) and "\n" not in str(caught.value)


def test_an_unreadable_config_is_one_line(artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = Path.read_bytes

    def denied(self: Path) -> bytes:  # tests run as root, where chmod 000 still reads: simulate EACCES
        if self.name == "tokenizer_config.json":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(ArtifactError, match="permission denied"):
        load(artifact, verify=False)


def test_an_external_data_file_changed_while_loading_is_refused(artifact: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    data = artifact / "model.onnx.data"
    original = session_module.DecoderSession.__init__

    def swap_during_load(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        stat = data.stat()
        replacement = data.with_name("swap")
        shutil.copy(data, replacement)
        os.replace(replacement, data)  # same bytes, same size, mtime set back: only inode/ctime differ
        os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        original(self, *args, **kwargs)

    monkeypatch.setattr(session_module.DecoderSession, "__init__", swap_during_load)
    for verify in (True, False):
        with pytest.raises(ArtifactError, match="changed while it was being loaded"):
            load(artifact, verify=verify)


def test_a_same_size_same_mtime_swap_is_hashed_again(artifact: Path) -> None:
    verify_artifact(artifact)  # stamps the folder
    data = artifact / "model.onnx.data"
    stat = data.stat()
    damaged = bytearray(data.read_bytes())
    damaged[-1] ^= 0xFF
    data.write_bytes(bytes(damaged))
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # size and mtime as stamped
    with pytest.raises(ArtifactError, match="sha256 differs"):
        verify_artifact(artifact)


def test_a_forged_stamp_does_not_skip_a_hash(artifact: Path) -> None:
    verify_artifact(artifact)
    path = stamp_path(artifact)
    assert path is not None
    data = artifact / "model.onnx.data"
    damaged = bytearray(data.read_bytes())
    damaged[-1] ^= 0xFF
    data.write_bytes(bytes(damaged))
    stamp = json.loads(path.read_text())
    st = data.stat()
    # The forger copies the file's new stat into the stamp, but cannot know a sha256 the manifest agrees with.
    stamp["files"]["model.onnx.data"] = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns,
                                         sha256_file(data)]
    path.write_text(json.dumps(stamp))
    with pytest.raises(ArtifactError, match="sha256 differs"):
        verify_artifact(artifact)


@pytest.mark.parametrize("key,value", [("head_size", 7), ("num_key_value_heads", 3), ("num_hidden_layers", 9)])
def test_a_genai_config_that_disagrees_with_the_graph_is_one_line(artifact: Path, key: str, value: int) -> None:
    edit_genai(artifact, lambda c: c["model"]["decoder"].update({key: value}))
    refused_everywhere(artifact, f"model.decoder {key} is {value}")


def test_a_node_of_an_unknown_domain_is_one_line(artifact: Path) -> None:
    import onnx

    model = onnx.load(str(artifact / "model.onnx"), load_external_data=False)
    node = model.graph.node[0]
    node.domain = "evil.custom"  # would need a custom-ops library, which genai_config may not name
    model.opset_import.append(onnx.helper.make_opsetid("evil.custom", 1))
    onnx.save(model, str(artifact / "model.onnx"))
    with pytest.raises(ArtifactError) as caught:
        load(artifact, verify=False)
    assert "onnxruntime cannot load it" in str(caught.value) and "\n" not in str(caught.value)


def test_the_cli_refuses_a_code_loading_option_unless_allowed(artifact: Path) -> None:
    """`run` names the problem in one line; `--allow-unsafe-config` is the explicit way through (ort backend)."""
    from click.testing import CliRunner

    from phi3_edge.cli import main

    edit_genai(artifact, lambda c: c["model"]["decoder"]["session_options"].update({"enable_profiling": "/tmp/p_"}))
    refused = CliRunner().invoke(main, ["run", str(artifact), "hello", "--max-new-tokens", "2"])
    assert refused.exit_code == 1 and "loads code or writes files" in refused.output
    allowed = CliRunner().invoke(main, ["run", str(artifact), "hello", "--max-new-tokens", "2",
                                        "--allow-unsafe-config"])
    assert allowed.exit_code == 0, allowed.output
    assert "2 tokens" in allowed.output

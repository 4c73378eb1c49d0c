"""`push`: one commit with every artifact file and the model card, against a local stand-in for the hub's HTTP
API (huggingface_hub accepts any endpoint); offline or unreachable, one clear line."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from phi3_edge.errors import ArtifactError
from phi3_edge.manifest import build_manifest, write_manifest
from phi3_edge.recipes.push import PushError, push_artifact


def _artifact(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"graph")
    (folder / "model.onnx.data").write_bytes(b"\x00" * 1024)
    (folder / "genai_config.json").write_text("{}", encoding="utf-8")
    manifest = build_manifest(source={"source": "microsoft/Phi-3-mini-4k-instruct", "revision": "abc123",
                                      "files": {}},
                              spec_json={}, target={"name": "cpu-int4", "execution_provider": "cpu",
                                                    "weight_format": "int4", "io_dtype": "float32",
                                                    "notes": "the default edge target"},
                              recipe={"weights": "int4", "quant_algo": "rtn"}, io_signature=[],
                              artifact_dir=folder, rope_switch_length=None)
    manifest["fidelity"] = {"kl": 0.0047, "top1": 0.937, "prompts": 4, "positions": 321, "max_kl": 0.05,
                            "reference": "cpu-fp32 graph of the same checkpoint"}
    manifest["min_runtime"] = {"onnxruntime": "1.18.0", "onnxruntime-genai": "0.4.0", "reasons": ["ONNX IR 10"]}
    write_manifest(folder, manifest)
    return folder


class _Hub(BaseHTTPRequestHandler):
    """The four endpoints create_repo + create_commit call, every file uploaded inline ("regular")."""

    commits: list[list[dict[str, Any]]] = []
    created: list[dict[str, Any]] = []

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, body: dict[str, Any], status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 (the http.server hook's name)
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        if self.path == "/api/repos/create":
            self.created.append(json.loads(body))
            self._send({"url": f"{base}/org/demo-cpu-int4"})
        elif self.path == "/api/validate-yaml":
            self._send({"errors": [], "warnings": []})
        elif "/preupload/" in self.path:
            files = json.loads(body)["files"]
            self._send({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                  for f in files]})
        elif "/commit/" in self.path:
            self.commits.append([json.loads(line) for line in body.splitlines() if line.strip()])
            self._send({"commitUrl": f"{base}/org/demo-cpu-int4/commit/1", "commitOid": "1" * 40})
        else:
            self._send({"error": "not found"}, 404)


@pytest.fixture()
def hub() -> Iterator[str]:
    _Hub.commits, _Hub.created = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_push_is_one_commit_with_every_file_and_the_card(tmp_path: Path, hub: str) -> None:
    folder = _artifact(tmp_path / "cpu-int4")
    command = "phi3-edge export --model phi3:mini --target cpu-int4 --output build/cpu-int4"
    result = push_artifact(folder, "org/demo-cpu-int4", token="hf_test", endpoint=hub, command=command,
                           recipe_text='[model]\nsource = "phi3:mini"\n')
    assert result.url.endswith("/org/demo-cpu-int4/commit/1") and result.files == 5
    created = [(c["organization"], c["name"], c.get("visibility")) for c in _Hub.created]
    assert created == [("org", "demo-cpu-int4", "private")]
    (commit,) = _Hub.commits
    files = {entry["value"]["path"]: base64.b64decode(entry["value"]["content"]) for entry in commit
             if entry["key"] == "file"}
    assert sorted(files) == ["README.md", "genai_config.json", "manifest.json", "model.onnx", "model.onnx.data"]
    assert files["model.onnx.data"] == b"\x00" * 1024
    card = files["README.md"].decode("utf-8")
    assert card.startswith("---\nlibrary_name: onnxruntime\n")
    assert "base_model: microsoft/Phi-3-mini-4k-instruct" in card
    assert "`cpu-int4` ONNX Runtime artifact of **microsoft/Phi-3-mini-4k-instruct** (revision `abc123`)" in card
    assert "| 0.0047 | 93.7% | 4 | 321 |" in card and "(gate: max KL 0.05)" in card
    assert "Oldest onnxruntime that runs it: **1.18.0**" in card
    assert command in card and 'source = "phi3:mini"' in card
    assert "| `model.onnx.data` |" in card
    assert not (folder / "README.md").exists()  # the artifact folder itself is untouched


def test_unreachable_endpoint_is_one_line(tmp_path: Path) -> None:
    folder = _artifact(tmp_path / "a")
    with pytest.raises(PushError) as caught:
        push_artifact(folder, "org/x", token="hf_test", endpoint="http://127.0.0.1:9")
    message = str(caught.value)
    assert message.startswith("cannot reach the Hugging Face Hub at http://127.0.0.1:9 (") and "\n" not in message


def test_offline_mode_is_one_line(tmp_path: Path) -> None:
    """HF_HUB_OFFLINE is read when huggingface_hub is imported, so this runs in a fresh interpreter."""
    folder = _artifact(tmp_path / "a")
    code = ("from phi3_edge.recipes.push import push_artifact, PushError\n"
            f"try:\n    push_artifact(r'{folder}', 'org/x', token='hf_test')\n"
            "except PushError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=True)
    assert done.stdout == "cannot push to https://huggingface.co: offline mode (HF_HUB_OFFLINE) is set\n"


def test_not_an_artifact_fails_before_any_network(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="manifest.json not found"):
        push_artifact(tmp_path, "org/x", endpoint="http://127.0.0.1:9")

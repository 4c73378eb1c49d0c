"""`run MODEL` / `chat MODEL` / `list` / `rm`: a model name is exported once into the cache, then reused;
stdin prompts, ignored options, the execution provider, CUDA artifacts on a CPU-only machine."""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort
import pytest
from click.testing import CliRunner, Result

from phi3_edge import api
from phi3_edge.cli import main
from phi3_edge.model_cache import CACHE_ENV

CPU = "CPUExecutionProvider"
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def _invoke(*args: str, stdin: str | bytes | None = None, code: int = 0) -> Result:
    result = CliRunner().invoke(main, list(args), input=stdin)
    assert result.exit_code == code, result.output + repr(result.exception)
    return result


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli_models") / "demo-int4"
    api.export("demo", "cpu-int4", folder, progress=False, fidelity=False)
    return folder


def test_run_a_model_name_exports_once_then_reuses_it(cache: Path) -> None:
    first = _invoke("run", "demo", "def fibonacci(n):", "--max-new-tokens", "8")
    assert "demo: first use, exporting for cpu-int4 into " in first.stderr
    [entry] = api.cached_models()
    expected = api.load(entry.folder).generate("def fibonacci(n):", 8)
    assert first.stdout == expected.text + "\n"
    assert first.stderr.rstrip().endswith(f"stop: {expected.stop_reason}, {CPU}")  # the provider that ran
    again = _invoke("run", "demo", "def fibonacci(n):", "--max-new-tokens", "8")
    assert "exporting" not in again.stderr and again.stdout == first.stdout

    listed = _invoke("list")
    assert entry.key in listed.stdout and "cpu-int4" in listed.stdout
    assert json.loads(_invoke("list", "--json").stdout)["artifacts"][0]["key"] == entry.key
    assert _invoke("rm", "demo").stdout.startswith(f"removed {entry.key} (demo, cpu-int4, ")
    assert "no cached artifacts" in _invoke("list").stdout
    assert "no cached artifact matches 'demo'" in _invoke("rm", "demo", code=1).stderr
    assert "pass --all alone" in _invoke("rm", code=2).stderr


def test_prompt_from_stdin(demo_folder: Path, cache: Path) -> None:
    expected = api.load(demo_folder).generate("import os\n", 6).text + "\n"
    assert _invoke("run", str(demo_folder), "-", "--max-new-tokens", "6", stdin="import os\n\n").stdout == expected
    assert _invoke("run", str(demo_folder), "--max-new-tokens", "6", stdin="import os\n\n").stdout == expected
    bad = _invoke("run", str(demo_folder), "-", stdin=b"caf\xe9", code=1)
    assert bad.stderr == "error: <stdin>: the prompt on stdin is not UTF-8 text\n"
    assert not cache.exists()  # an artifact folder never touches the cache


def test_ignored_options_are_errors_or_warnings(demo_folder: Path) -> None:
    system = _invoke("run", str(demo_folder), "Hi", "--system", "Be brief.", code=2)
    assert system.stderr.startswith("error: --system needs --chat") and len(system.stderr.splitlines()) == 1
    greedy = _invoke("run", str(demo_folder), "Hi", "--top-k", "5", "--seed", "3", "--max-new-tokens", "2")
    assert ("warning: --top-k, --seed only apply when sampling (--temperature > 0); greedy decoding ignores them"
            in greedy.stderr)
    target = _invoke("run", str(demo_folder), "Hi", "--target", "cpu-int8", code=2)
    assert "--target applies to a model name" in target.stderr


def test_chat_commands_stay_out_of_the_conversation(demo_folder: Path) -> None:
    result = _invoke("chat", str(demo_folder), "--max-new-tokens", "4", stdin="/help\nHi\n/bye\nnever sent\n")
    reply = api.load(demo_folder).generate([{"role": "user", "content": "Hi"}], 4).text
    assert result.stdout == reply + "\n"
    assert "/save FILE" in result.stderr


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA: the artifact would run where it was built to")
def test_a_cuda_artifact_is_refused_on_a_cpu_only_machine_unless_allow_cpu(tiny_checkpoint, tmp_path: Path) -> None:
    folder = tmp_path / "cuda"
    api.export(str(tiny_checkpoint("gqa")), "cuda-fp16", folder, progress=False)
    refused = _invoke("run", str(folder), "Hi", "--max-new-tokens", "2", code=1)
    assert "built for CUDAExecutionProvider, which this onnxruntime does not offer" in refused.stderr
    assert "--allow-cpu" in refused.stderr and refused.stdout == ""
    allowed = _invoke("run", str(folder), "Hi", "--max-new-tokens", "2", "--allow-cpu")
    assert "warning: cuda-fp16 artifact built for CUDAExecutionProvider, running on CPUExecutionProvider" \
        in allowed.stderr
    assert allowed.stderr.rstrip().endswith(CPU)
    bench = json.loads(_invoke("bench", str(folder), "--prompt-len", "4", "--gen-len", "2", "--bandwidth-mb", "1",
                               "--allow-cpu", "--json").stdout)
    assert bench["provider"] == CPU
    inspect = json.loads(_invoke("inspect", str(folder), "--json").stdout)
    assert inspect["execution_provider"] == "CUDAExecutionProvider" and inspect["provider_available"] is False

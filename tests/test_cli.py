"""The CLI's outside: commands, one-line errors, exit codes. Export and generation are tested through the API."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from tokenizers import Tokenizer, models

from phi3_edge import api
from phi3_edge.cli import main
from phi3_edge.errors import Phi3EdgeError


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_targets_lists_cpu_fp32() -> None:
    result = _invoke("targets")
    assert result.exit_code == 0, result.output
    assert "cpu-fp32" in result.stdout


def test_unknown_target_is_a_one_line_error_listing_the_valid_ones() -> None:
    result = _invoke("export", "--model", "some/model", "--target", "tpu-int3", "--output", "out")
    assert result.exit_code == 2
    line = _one_line(result.stderr)
    assert line.startswith("error: ")
    assert "tpu-int3" in line and "cpu-fp32" in line
    assert result.stdout == ""


def test_run_on_a_missing_folder_is_a_one_line_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-artifact"
    result = _invoke("run", str(missing), "hello")
    assert result.exit_code == 1
    line = _one_line(result.stderr)
    assert line.startswith("error: ") and str(missing) in line
    assert "Traceback" not in result.output


GENAI_CONFIG = (
    '{"model": {"context_length": 8, "vocab_size": 4, "eos_token_id": 0, "decoder": '
    '{"num_hidden_layers": 1, "num_key_value_heads": 1, "head_size": 2}}}'
)


@pytest.mark.parametrize(
    ("files", "named"),
    [
        ({}, "genai_config.json"),
        ({"genai_config.json": "{not json"}, "genai_config.json"),
        ({"genai_config.json": GENAI_CONFIG}, "tokenizer.json"),
        ({"genai_config.json": GENAI_CONFIG, "tokenizer.json": None}, "model.onnx"),
    ],
)
def test_run_on_an_incomplete_folder_names_what_is_wrong(tmp_path: Path, files: dict, named: str) -> None:
    for name, text in files.items():
        if text is None:  # a real (empty) tokenizer, so loading gets as far as the graph
            Tokenizer(models.BPE()).save(str(tmp_path / name))
        else:
            (tmp_path / name).write_text(text, encoding="utf-8")
    result = _invoke("run", str(tmp_path), "hello", "--no-verify")  # no manifest: test the loader's own checks
    assert result.exit_code == 1
    line = _one_line(result.stderr)
    assert line.startswith("error: ") and named in line


def test_run_refuses_a_folder_without_manifest(tmp_path: Path) -> None:
    """Verification is on by default: a folder that is not a complete artifact of ours is refused up front."""
    (tmp_path / "genai_config.json").write_text(GENAI_CONFIG, encoding="utf-8")
    result = _invoke("run", str(tmp_path), "hello")
    assert result.exit_code == 1
    assert "manifest.json" in _one_line(result.stderr)


def test_debug_shows_the_exception(tmp_path: Path) -> None:
    result = _invoke("--debug", "run", str(tmp_path / "missing"), "hello")
    assert result.exit_code != 0
    assert isinstance(result.exception, Phi3EdgeError)


def test_ctrl_c_exits_130(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "load", interrupted)
    result = _invoke("run", str(tmp_path), "hello")  # a folder, not a model name: nothing to export first
    assert result.exit_code == 130
    assert _one_line(result.stderr) == "interrupted"


def test_export_help_shows_the_short_names() -> None:
    result = _invoke("export", "--help")
    assert result.exit_code == 0
    assert "phi3:mini" in result.stdout and "microsoft/Phi-3-mini-4k-instruct" in result.stdout


def test_unknown_command_is_one_line() -> None:
    result = _invoke("frobnicate")
    assert result.exit_code == 2
    assert _one_line(result.stderr).startswith("error: ")


def test_hqq_on_cpu_int8_is_one_line(tmp_path: Path) -> None:
    """An impossible recipe is refused before the checkpoint is even looked up: one line, exit 1, nothing written."""
    out = tmp_path / "out"
    result = _invoke("export", "--model", "demo", "--target", "cpu-int8", "--quant-algo", "hqq", "--output", str(out))
    assert result.exit_code == 1, result.output
    line = _one_line(result.stderr)
    assert line.startswith("error: ") and "hqq" in line and "8 bits" in line
    assert "Traceback" not in result.output and not out.exists()


def test_misspelt_api_export_option_is_one_line() -> None:
    with pytest.raises(Phi3EdgeError, match="unknown export option 'quant_algos'.*quant_algo"):
        api.export("demo", output="unused", quant_algos="hqq")  # type: ignore[call-arg]


def test_export_request_is_frozen_and_carries_the_quant_options() -> None:
    request = api.export_request("demo", "cpu-int4", "out", quant_algo="hqq", mixed_precision=True, force=True)
    assert request.quant == api.QuantOptions(algo="hqq", mixed_precision=True)
    assert request.force and request.output == Path("out")
    with pytest.raises(AttributeError):
        request.force = False  # type: ignore[misc]


def test_export_and_bench_build_one_frozen_request_for_api(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command line only translates options: what api receives is the request the flags describe."""
    seen: list[object] = []

    def stop(request: object, **kwargs: object) -> None:
        seen.append(request)
        raise Phi3EdgeError("stopped here")

    monkeypatch.setattr(api, "run_export", stop)
    monkeypatch.setattr(api, "bench", stop)
    result = _invoke("export", "-m", "demo", "-t", "cpu-int4", "-o", "out", "--quant-algo", "hqq",
                     "--mixed-precision", "--lm-head", "int8", "--max-kl", "0.5", "--no-tokenizer", "--quiet")
    assert result.exit_code == 1 and _one_line(result.stderr) == "error: stopped here"
    assert seen[-1] == api.ExportRequest(
        "demo", "cpu-int4", Path("out"), require_tokenizer=False, progress=False, max_kl=0.5,
        quant=api.QuantOptions(algo="hqq", mixed_precision=True, lm_head="int8"))
    result = _invoke("bench", "somewhere", "--prompt-len", "7", "--threads", "3", "--no-verify")
    assert result.exit_code == 1
    assert seen[-1] == api.BenchRequest(Path("somewhere"), prompt_len=7, threads=3, verify=False)


def test_api_export_defaults_to_the_cli_target(monkeypatch: pytest.MonkeyPatch) -> None:
    """A library caller and the command line given no target export the same thing: DEFAULT_TARGET."""
    seen: list[api.ExportRequest] = []

    def stop(request: api.ExportRequest, **kwargs: object) -> None:
        seen.append(request)
        raise Phi3EdgeError("stopped here")

    monkeypatch.setattr(api, "run_export", stop)
    result = _invoke("export", "-m", "demo", "-o", "out", "--quiet")
    assert result.exit_code == 1 and _one_line(result.stderr) == "error: stopped here"
    with pytest.raises(Phi3EdgeError, match="stopped here"):
        api.export("demo", output="out")
    assert [request.target for request in seen] == [api.DEFAULT_TARGET, api.DEFAULT_TARGET]
    assert api.export_request("demo").target == api.DEFAULT_TARGET != api.REFERENCE_TARGET


def test_no_arguments_prints_the_help_as_it_is() -> None:
    result = _invoke()
    assert result.exit_code == 0 and result.stderr == ""
    assert result.stdout.startswith("Usage: ") and "Commands:" in result.stdout and len(result.stdout.splitlines()) > 10


def test_version() -> None:
    from importlib.metadata import version

    result = _invoke("--version")
    assert result.exit_code == 0 and result.stdout == f"phi3-edge {version('phi3-edge')}\n"


def test_targets_survive_an_ascii_stdout() -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONIOENCODING": "ascii", "LC_ALL": "C"}
    result = subprocess.run([sys.executable, "-m", "phi3_edge.cli", "targets"], capture_output=True, env=env,
                            timeout=120)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert b"cpu-int4 *" in result.stdout  # the default edge target, marked


def test_targets_json_marks_the_default_and_what_runs_here() -> None:
    import json

    rows = json.loads(_invoke("targets", "--json").stdout)
    assert [r["name"] for r in rows if r["default"]] == [api.DEFAULT_TARGET]
    assert {r["name"]: r["available_here"] for r in rows}["cpu-fp32"] is True


def test_export_defaults_to_the_edge_target_requires_output_and_warns_about_ignored_options(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[api.ExportRequest] = []

    def stop(request: api.ExportRequest, **kwargs: object) -> None:
        seen.append(request)
        raise Phi3EdgeError("stopped here")

    monkeypatch.setattr(api, "run_export", stop)
    assert _invoke("export", "-m", "demo", "-o", "out").exit_code == 1
    assert seen[-1].target == api.DEFAULT_TARGET == "cpu-int4"
    missing = _invoke("export", "-m", "demo")
    assert missing.exit_code == 2 and "Missing option '--output'" in _one_line(missing.stderr)
    assert "[required]" in _invoke("export", "--help").stdout
    result = _invoke("export", "-m", "demo", "-o", "out", "-t", "cpu-fp32", "--mixed-precision", "--quant-algo", "hqq")
    assert result.stderr.splitlines()[:2] == [
        "warning: --mixed-precision applies to int4 targets; cpu-fp32 has fp32 weights, so it changes nothing",
        "warning: --quant-algo hqq changes nothing: cpu-fp32 has fp32 weights and nothing else is quantized"]
    quiet = _invoke("export", "-m", "demo", "-o", "out", "-t", "cpu-int4", "--mixed-precision")
    assert "warning" not in quiet.stderr  # int4: --mixed-precision does something


def test_inspect_and_verify_json(tmp_path: Path) -> None:
    import json

    folder = tmp_path / "demo"
    api.export("demo", "mobile-int4", folder, progress=False, fidelity=False)
    report = json.loads(_invoke("inspect", str(folder), "--json").stdout)
    assert report["execution_provider"] == "CPUExecutionProvider" and report["provider_available"] is True
    assert [ship["variant"] for ship in report["ship"]] == ["ort", "onnx"]
    assert report["ship"][0]["files"][0]["name"] == "model.ort"
    assert report["artifact"]["graph"]["ops"]["com.microsoft.GroupQueryAttention"] == 4
    table = _invoke("inspect", str(folder)).stdout
    assert "an app ships (ort)" in table and "an app ships (onnx)" in table
    checked = json.loads(_invoke("verify", str(folder), "--json").stdout)
    assert checked["ok"] is True and checked["problems"] == []
    (folder / "tokenizer.json").write_text("{}", encoding="utf-8")
    damaged = _invoke("verify", str(folder), "--json")
    assert damaged.exit_code == 1 and json.loads(damaged.stdout)["ok"] is False

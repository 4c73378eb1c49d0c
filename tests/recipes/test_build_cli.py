"""`phi3-edge build`, `push` and `export --targets` end to end on the bundled demo checkpoint."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from phi3_edge import api
from phi3_edge.cli import main
from phi3_edge.graph_features import read_graph_features
from phi3_edge.quantize.recipe import OPTION_ALGOS
from phi3_edge.runtime_compat import min_runtime, parse_version

RECIPE = """
output = "out"
[model]
source = "demo"
[[targets]]
name = "cpu-fp32"
group = "cpu"
[[targets]]
name = "cpu-int4"
group = "cpu"
max_kl = 0.05
[[targets]]
name = "cpu-int8-strict"
target = "cpu-int8"
group = "strict"
max_kl = 1e-9
[layout]
optimum = true
"""


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Result, Path]:
    root = tmp_path_factory.mktemp("build")
    recipe = root / "build.toml"
    recipe.write_text(RECIPE, encoding="utf-8")
    summary = root / "step-summary.md"
    os.environ["GITHUB_STEP_SUMMARY"] = str(summary)
    try:
        result = _invoke("build", str(recipe), "--report-dir", str(root / "reports"))
    finally:
        del os.environ["GITHUB_STEP_SUMMARY"]
    return root, result, summary


def test_build_passes_two_targets_fails_one_and_says_which(built: tuple[Path, Result, Path]) -> None:
    root, result, _ = built
    assert result.exit_code == 3, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("failed: demo/cpu-int8-strict (accuracy gate: KL ")
    assert "\x1b" not in result.stderr  # not a terminal: no colour
    out = root / "out" / "demo"
    assert sorted(p.name for p in out.iterdir()) == ["cpu-fp32", "cpu-int4"]  # the failed one left nothing
    for name, onnx_file in (("cpu-fp32", "model.onnx"), ("cpu-int4", "model_q4.onnx")):
        folder = out / name
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        assert f"onnx/{onnx_file}" in manifest["files"] and manifest["layout"] == "optimum"
        # The record is what the graph uses (runtime_compat's table): cpu-fp32 only IR 10 / opset 21 (1.18.0);
        # cpu-int4's defaults, an int8 lm_head (MatMulNBits bits=8, 1.22.0) and the demo's untied table as
        # GatherBlockQuantized in that format (its `bits` attribute, 1.23.0), raise it.
        assert manifest["min_runtime"] == min_runtime(read_graph_features(folder / "onnx" / onnx_file)).to_json()
        quantization, record = manifest["recipe"]["quantization"], manifest["min_runtime"]
        head, table = quantization["lm_head"], quantization["embeddings"]
        if head is None and table is None:
            assert record["onnxruntime"] == "1.18.0"
        if table is not None and table["bits"] == 8:
            assert any("GatherBlockQuantized with the `bits` attribute" in why for why in record["reasons"])
        if head is not None and head["bits"] == 8:
            assert parse_version(record["onnxruntime"]) >= parse_version("1.22.0")
        assert all(status.problem is None for status in api.verify(folder).files)


def test_build_reports(built: tuple[Path, Result, Path]) -> None:
    root, _, summary = built
    report = json.loads((root / "reports" / "report.json").read_text(encoding="utf-8"))
    assert [(t["name"], t["status"]) for t in report["targets"]] == [
        ("cpu-fp32", "passed"), ("cpu-int4", "passed"), ("cpu-int8-strict", "failed")]
    int4 = report["targets"][1]
    assert int4["fidelity"]["kl"] < 0.05 and len(int4["manifest_sha256"]) == 64 and int4["size_bytes"] > 0
    junit = ET.parse(root / "reports" / "junit.xml").getroot()
    assert (junit.get("tests"), junit.get("failures"), junit.get("errors")) == ("6", "1", "0")
    assert "| demo | cpu-int4 | ✅ passed |" in summary.read_text(encoding="utf-8")


def test_matrix_and_output(tmp_path: Path) -> None:
    recipe = tmp_path / "build.toml"
    recipe.write_text(RECIPE, encoding="utf-8")
    result = _invoke("build", str(recipe), "--matrix")
    assert result.exit_code == 0
    line = result.stdout.strip()
    assert line.startswith("matrix=") and "\n" not in line
    jobs = json.loads(line.removeprefix("matrix="))["include"]
    assert [(j["name"], j["targets"]) for j in jobs] == [("demo-cpu", "cpu-fp32,cpu-int4"),
                                                         ("demo-strict", "cpu-int8-strict")]
    assert _invoke("build", str(recipe), "--print-output").stdout.strip() == str(tmp_path / "out")


def test_bad_recipe_is_one_line_and_exit_1(tmp_path: Path) -> None:
    recipe = tmp_path / "build.toml"
    recipe.write_text("[model]\nsource = 'demo'\n[[targets]]\nname = 'cpu-int4'\nquant_algo = 'awq2'\n",
                      encoding="utf-8")
    result = _invoke("build", str(recipe))
    assert result.exit_code == 1
    assert result.stderr.strip() == (f"error: {recipe}: targets[0].quant_algo: 'awq2' is not one of "
                                     f"{', '.join(OPTION_ALGOS)}")
    push = _invoke("build", str(recipe).replace("build.toml", "missing.toml"), "--push")
    assert push.exit_code == 1 and "recipe file not found" in push.stderr


def test_build_gptq_target_calibrates_on_the_recipes_text(tiny_checkpoint, tmp_path: Path) -> None:
    """A recipe's `calibration` reaches the export: the manifest records that file (by name and sha256)."""
    (tmp_path / "texts").mkdir()
    text = tmp_path / "texts" / "mine.txt"
    text.write_text("def add(a, b):\n    return a + b\n\nThe quick brown fox jumps over the lazy dog. " * 12,
                    encoding="utf-8")
    recipe = tmp_path / "build.toml"
    recipe.write_text(f"output = 'out'\n[model]\nsource = '{tiny_checkpoint('gqa')}'\nname = 'tiny'\n"
                      "[[targets]]\nname = 'gptq'\ntarget = 'cpu-int4'\nquant_algo = 'gptq'\nfidelity = false\n"
                      "calibration = 'texts/mine.txt'\n", encoding="utf-8")
    report = api.build(recipe, concurrent=False)
    assert report.exit_code == 0, report
    recipe_record = json.loads((tmp_path / "out" / "tiny" / "gptq" / "manifest.json").read_text("utf-8"))["recipe"]
    assert recipe_record["quant_algo"] == "gptq"
    assert recipe_record["calibration"]["source"] == "mine.txt"
    assert recipe_record["calibration"]["sha256"] == hashlib.sha256(text.read_bytes()).hexdigest()


def test_export_targets_writes_one_folder_each(tmp_path: Path) -> None:
    result = _invoke("export", "-m", "demo", "--targets", "cpu-fp32,cpu-int8", "-o", str(tmp_path / "a"),
                     "--layout", "optimum", "--quiet")
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == [str(tmp_path / "a" / "cpu-fp32"), str(tmp_path / "a" / "cpu-int8")]
    assert (tmp_path / "a" / "cpu-int8" / "onnx" / "model_int8.onnx").is_file()
    bad = _invoke("export", "-m", "demo", "--targets", "cpu-int9", "-o", str(tmp_path / "b"), "--quiet")
    assert bad.exit_code == 1 and bad.stderr.startswith("error: unknown target 'cpu-int9'; valid targets:")


def test_push_offline_is_one_line(built: tuple[Path, Result, Path]) -> None:
    root, _, _ = built
    done = subprocess.run([sys.executable, "-c", "from phi3_edge.cli import main; main()", "push",
                           str(root / "out" / "demo" / "cpu-int4"), "org/demo-int4"], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120, check=False)
    assert done.returncode == 1
    assert done.stderr == "error: cannot push to https://huggingface.co: offline mode (HF_HUB_OFFLINE) is set\n"

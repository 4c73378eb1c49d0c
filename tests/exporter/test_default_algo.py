"""The default quantization algorithm through the export: no --quant-algo -> the target's calibrated algorithm
for a model of at most its parameter limit (counted from the checkpoint's tensor shapes), else rtn; the choice
printed in one line, the manifest recording the resolved algorithm."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file

from fixtures.llama_gguf import llama_model, write_gguf
from fixtures.tokenizer import write_tiny_tokenizer
from phi3_edge import api
from phi3_edge.cli import main
from phi3_edge.errors import Phi3EdgeError
from phi3_edge.exporter.checkpoint import resolve_checkpoint
from phi3_edge.exporter.config import load_spec
from phi3_edge.exporter.pipeline import export_artifact, parameter_count
from phi3_edge.targets.table import TARGETS


def manifest_recipe(folder: Path) -> dict[str, Any]:
    recipe: dict[str, Any] = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["recipe"]
    return recipe


def choice_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("quantization: ")]


def test_parameter_count_is_the_stored_tensors_elements(tiny_checkpoint) -> None:
    for variant in ("gqa", "partial_tied"):  # untied and tied (the table stored once)
        checkpoint = resolve_checkpoint(str(tiny_checkpoint(variant)))
        stored = sum(int(np.prod(array.shape)) for path in checkpoint.weight_files
                     for array in load_file(path).values())
        assert parameter_count(checkpoint.weight_files) == stored > 0


def test_parameter_count_reads_gguf_shapes(tmp_path: Path) -> None:
    """A quantized GGUF file counts elements, not bytes: the same model as Q4_0 and F32 has one count."""
    tokenizer = tmp_path / "tok"
    tokenizer.mkdir()
    write_tiny_tokenizer(tokenizer)
    counts = {qtype: parameter_count((write_gguf(tmp_path / f"{qtype}.gguf", llama_model("gqa"), "llama", qtype,
                                                 tokenizer_folder=tokenizer),))
              for qtype in ("F32", "Q4_0")}
    assert counts["F32"] == counts["Q4_0"] > 0


def test_default_export_of_a_small_model_calibrates_and_says_so(tiny_checkpoint, tmp_path, capsys) -> None:
    folder = tiny_checkpoint("gqa")
    params = parameter_count(resolve_checkpoint(str(folder)).weight_files)
    assert params <= TARGETS["cpu-int4"].calibrate_up_to_params
    api.export(str(folder), "cpu-int4", tmp_path / "default", fidelity=False)  # progress None: not a terminal
    assert choice_lines(capsys.readouterr().err) == [
        f"quantization: awq + measured int8 within x1.08 of the bytes (cpu-int4's default up to 1B parameters, "
        f"this model has {params / 1e3:.3g}K parameters; --quant-algo rtn is the fast path, --quant-algo awq "
        "skips the int8 widening)"]
    recipe = manifest_recipe(tmp_path / "default")
    # The default widens its measured most-sensitive tensors to int8 within the target's budget.
    assert recipe["quant_algo"] == "awq+int8-mixed" and recipe["quantization"]["body"]["algo"] == "awq"
    assert recipe["quantization"]["size_budget"] == TARGETS["cpu-int4"].calibrated_size_budget == 1.08
    assert recipe["calibration"]["algo"] == "awq" and recipe["calibration"]["source"] == "built-in"
    api.export(str(folder), "cpu-int4", tmp_path / "rtn", quant_algo="rtn", fidelity=False)
    assert choice_lines(capsys.readouterr().err) == ["quantization: rtn (--quant-algo rtn)"]
    recipe = manifest_recipe(tmp_path / "rtn")
    assert recipe["quant_algo"] == "rtn" and recipe["calibration"] is None


def test_over_the_limit_the_default_is_rtn(tiny_checkpoint, tmp_path, capsys) -> None:
    """The same checkpoint against a cpu-int4 whose limit is below its parameter count: rtn, no calibration
    pass asked for (export_artifact gets none and needs none)."""
    folder = tiny_checkpoint("gqa")
    params = parameter_count(resolve_checkpoint(str(folder)).weight_files)
    target = replace(TARGETS["cpu-int4"], calibrate_up_to_params=params - 1)
    request = api.export_request(str(folder), "cpu-int4", tmp_path / "big", fidelity=False)
    export_artifact(request, target, lambda *_: {}, calibrate=None)
    [line] = choice_lines(capsys.readouterr().err)
    assert line.startswith("quantization: rtn + int8 down projections in llama.cpp's use_more_bits layers "
                           "(cpu-int4's default above ") and "--quant-algo awq" in line
    recipe = manifest_recipe(tmp_path / "big")
    assert recipe["quant_algo"] == "rtn+int8-mixed" and recipe["quantization"]["body"]["algo"] == "rtn"
    layers = load_spec(folder / "config.json").num_layers
    eighth = layers // 8  # llama.cpp's use_more_bits: first/last eighth and every third layer between
    rule = {i for i in range(layers) if i < eighth or i >= 7 * layers // 8 or (i - eighth) % 3 == 2}
    wide = {n for n, r in recipe["quantization"]["overrides"].items() if r["bits"] == 8}
    assert rule and wide == {f"model.layers.{i}.mlp.down_proj.weight" for i in rule}
    # --quant-algo rtn is the plain int4 body
    plain = api.export_request(str(folder), "cpu-int4", tmp_path / "plain", fidelity=False, quant_algo="rtn")
    export_artifact(plain, target, lambda *_: {}, calibrate=None)
    assert manifest_recipe(tmp_path / "plain")["quant_algo"] == "rtn"


def test_non_cpu_int4_targets_default_to_rtn(tiny_checkpoint, tmp_path, capsys) -> None:
    api.export(str(tiny_checkpoint("gqa")), "cuda-int4", tmp_path / "cuda", fidelity=False)
    assert choice_lines(capsys.readouterr().err) == [
        "quantization: rtn (cuda-int4's default; it has no calibrated default)"]
    assert manifest_recipe(tmp_path / "cuda")["quant_algo"] == "rtn"


def test_float_targets_print_no_choice(tiny_checkpoint, tmp_path, capsys) -> None:
    api.export(str(tiny_checkpoint("gqa")), "cpu-fp32", tmp_path / "fp32")
    assert choice_lines(capsys.readouterr().err) == []


def test_quiet_exports_print_no_choice(tiny_checkpoint, tmp_path, capsys) -> None:
    api.export(str(tiny_checkpoint("gqa")), "cpu-int4", tmp_path / "quiet", progress=False, fidelity=False)
    assert choice_lines(capsys.readouterr().err) == []


def test_calibration_file_with_the_default(tiny_checkpoint, tmp_path, capsys) -> None:
    """--calibration without --quant-algo: the calibrated default reads the file; a target without one refuses
    it in one line before anything is written."""
    text = tmp_path / "cal.txt"
    text.write_text("def add(a, b):\n    return a + b\n" * 40, encoding="utf-8")
    folder = str(tiny_checkpoint("gqa"))
    api.export(folder, "cpu-int4", tmp_path / "own", calibration=text, fidelity=False)
    [line] = choice_lines(capsys.readouterr().err)
    assert line.startswith("quantization: awq + measured int8 within x1.08 of the bytes (cpu-int4's calibrated "
                           "default, asked for by --calibration")
    calibration = manifest_recipe(tmp_path / "own")["calibration"]
    assert calibration["source"] == "cal.txt" and calibration["algo"] == "awq"
    with pytest.raises(Phi3EdgeError, match="--calibration applies to .* not cuda-int4's default rtn$"):
        api.export(folder, "cuda-int4", tmp_path / "cuda", calibration=text, fidelity=False)
    assert not (tmp_path / "cuda").exists()


def test_cli_default_is_unset_and_its_help_says_the_rule(tiny_checkpoint, tmp_path) -> None:
    runner = CliRunner()
    help_text = "".join(runner.invoke(main, ["export", "--help"]).output.split())  # click wraps at hyphens too
    assert "Default:awqoncpu-int4,mobile-int4foramodelofatmost1Bparameters;elsertn" in help_text
    assert "[default:rtn]" not in help_text  # no fixed default: the rule decides
    result = runner.invoke(main, ["export", "-m", str(tiny_checkpoint("gqa")), "-o", str(tmp_path / "cli"),
                                  "--no-fidelity"])
    assert result.exit_code == 0, result.output
    assert manifest_recipe(tmp_path / "cli")["quant_algo"] == "awq+int8-mixed"
    assert api.default_algo_rule() == "awq on cpu-int4, mobile-int4 for a model of at most 1B parameters; else rtn"

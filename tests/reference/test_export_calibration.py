"""`--quant-algo gptq` end to end: api.export and the CLI calibrate, and MatMulNBits holds exactly those codes.

The expected codes come from running reference/calibrate.py's GPTQ by hand on the same token windows (the
checkpoint's tokenizer on the same text): the export must store them bit for bit, and they must differ from
RTN's (else the test could not tell the algorithms apart).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper
from tokenizers import Tokenizer

from phi3_edge import api
from phi3_edge.cli import main
from phi3_edge.errors import Phi3EdgeError
from phi3_edge.exporter.checkpoint import resolve_checkpoint
from phi3_edge.exporter.config import load_spec
from phi3_edge.quantize.blockwise import pack_weights, quantize_rtn
from phi3_edge.quantize.calibrated import CalibratedBlocks
from phi3_edge.reference import calibrate as cal
from phi3_edge.reference.checkpoint_side import CheckpointSide

TEXT = ("def add(a, b):\n    return a + b\n\nThe quick brown fox jumps over the lazy dog. " * 12)


def recorded_format(out: Path) -> Callable[[str], tuple[int, int]]:
    """Body Linear name -> (bits, block) as the export's manifest records it (cpu-int4: int4 block 32, gate_up
    block 64 where 64 divides the hidden size): GPTQ's later layers see the earlier ones' rounding, so the
    hand-run must quantize every Linear as the export did."""
    recipe = json.loads((out / "manifest.json").read_text(encoding="utf-8"))["recipe"]["quantization"]

    def format_of(name: str) -> tuple[int, int]:
        one = recipe["overrides"].get(name, recipe["body"])
        return one["bits"], one["block_size"]

    return format_of


def expected_blocks(folder: Path, text: str, out: Path) -> CalibratedBlocks:
    checkpoint = resolve_checkpoint(str(folder))
    spec = load_spec(checkpoint.config_path)
    ids = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(text).ids
    window = min(cal.SEQUENCE, spec.max_position_embeddings)  # the tiny fixtures' rotary tables are short
    blocks = CalibratedBlocks("gptq")
    with CheckpointSide(spec, checkpoint.weight_files) as side:
        cal.gptq_calibrate(side, cal.sequences_of(ids, window), recorded_format(out), blocks.add)
    return blocks


def stored_codes(folder: Path) -> dict[str, np.ndarray]:
    """Packed MatMulNBits weights of the body's o_proj and down_proj, by layer and Linear: {"0.down_proj": ...}."""
    model = onnx.load(str(folder / "model.onnx"))
    found = {}
    for tensor in model.graph.initializer:
        for stem in ("o_proj", "down_proj"):
            if stem in tensor.name and tensor.name.endswith("qweight") and "layers." in tensor.name:
                layer = tensor.name.split("layers.")[1].split(".")[0]
                found[f"{layer}.{stem}"] = numpy_helper.to_array(tensor)
    return found


def assert_holds(folder: Path, blocks: CalibratedBlocks, checkpoint: Path) -> None:
    num_layers = load_spec(checkpoint / "config.json").num_layers
    codes = stored_codes(folder)
    assert len(codes) == 2 * num_layers
    for key, packed in codes.items():
        layer, stem = key.split(".")
        name = f"model.layers.{layer}.{'self_attn' if stem == 'o_proj' else 'mlp'}.{stem}.weight"
        calibrated = blocks.blocks[name]
        np.testing.assert_array_equal(packed, pack_weights(calibrated.q, 4))
    down = blocks.blocks["model.layers.0.mlp.down_proj.weight"]
    rtn = quantize_rtn(_weight(checkpoint, "model.layers.0.mlp.down_proj.weight"), 4, 32, True)
    assert not np.array_equal(rtn.q, down.q)  # GPTQ moved codes: the export is not RTN by another name


def _weight(folder: Path, name: str) -> np.ndarray:
    from safetensors.numpy import load_file

    for path in sorted(folder.glob("*.safetensors")):
        tensors = load_file(str(path))
        if name in tensors:
            return tensors[name].astype(np.float32)
    raise KeyError(name)


def test_api_export_gptq_builtin_text(tiny_checkpoint, tmp_path) -> None:
    folder = tiny_checkpoint("gqa")
    out = tmp_path / "gptq"
    api.export(str(folder), "cpu-int4", out, quant_algo="gptq", progress=False, fidelity=False)
    blocks = expected_blocks(folder, cal.builtin_calibration_text(), out)
    assert_holds(out, blocks, folder)
    recipe = json.loads((out / "manifest.json").read_text(encoding="utf-8"))["recipe"]
    assert recipe["quant_algo"] == "gptq"
    assert recipe["quantization"]["body"]["algo"] == "gptq" and recipe["quantization"]["body"]["symmetric"]
    overrides = recipe["quantization"]["overrides"].values()
    assert overrides and all(r["algo"] == "gptq" and r["block_size"] == 64 for r in overrides)  # gate_up's block
    assert recipe["calibration"]["source"] == "built-in" and recipe["calibration"]["tokens"] > 0
    heads = [recipe["quantization"][key] for key in ("lm_head", "embeddings")]
    assert heads[0] is not None and all(r["algo"] == "rtn" for r in heads if r)  # calibration covers the layers only
    initializers = [t.name for t in onnx.load(str(out / "model.onnx"), load_external_data=False).graph.initializer]
    assert not any(name.endswith("zero_points") for name in initializers)  # symmetric: no extra bytes


def test_cli_export_gptq_with_calibration_file(tiny_checkpoint, tmp_path) -> None:
    folder = tiny_checkpoint("gqa")
    text_file = tmp_path / "mine.txt"
    text_file.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "cli"
    result = CliRunner().invoke(main, ["export", "-m", str(folder), "-t", "cpu-int4", "-o", str(out), "--quiet",
                                       "--no-fidelity", "--quant-algo", "gptq", "--calibration", str(text_file)])
    assert result.exit_code == 0, result.output
    assert_holds(out, expected_blocks(folder, TEXT, out), folder)
    calibration = json.loads((out / "manifest.json").read_text(encoding="utf-8"))["recipe"]["calibration"]
    assert calibration["source"] == "mine.txt"
    assert calibration["sha256"] == hashlib.sha256(text_file.read_bytes()).hexdigest()


@pytest.mark.parametrize("algo", ["gptq", "awq"])
@pytest.mark.parametrize("content, problem", [(None, "cannot read"), (b"\xff\xfe\x00bad" * 40, "cannot read"),
                                              (b"", "characters"), (b"short text", "characters")])
def test_bad_calibration_file_is_one_line_and_writes_nothing(tiny_checkpoint, tmp_path, content: bytes | None,
                                                             problem: str, algo: str) -> None:
    text_file = tmp_path / "calibration.txt"
    if content is not None:
        text_file.write_bytes(content)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["export", "-m", str(tiny_checkpoint("gqa")), "-t", "cpu-int4", "-o",
                                       str(out), "--quiet", "--quant-algo", algo, "--calibration", str(text_file)])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(text_file) in lines[0], result.output
    assert problem in lines[0]
    assert not out.exists()


def test_calibration_without_gptq_is_refused(tiny_checkpoint, tmp_path) -> None:
    text_file = tmp_path / "calibration.txt"
    text_file.write_text(TEXT, encoding="utf-8")
    # an explicit rtn (without --quant-algo, cpu-int4's calibrated default reads the file: test_default_algo.py)
    with pytest.raises(Phi3EdgeError, match="--calibration applies to --quant-algo gptq"):
        api.export(str(tiny_checkpoint("gqa")), "cpu-int4", tmp_path / "out", quant_algo="rtn", calibration=text_file,
                   progress=False)
    assert not (tmp_path / "out").exists()


def test_cli_export_awq_records_the_calibration_file(tiny_checkpoint, tmp_path) -> None:
    folder = tiny_checkpoint("gqa")
    text_file = tmp_path / "mine.txt"
    text_file.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "cli"
    result = CliRunner().invoke(main, ["export", "-m", str(folder), "-t", "cpu-int4", "-o", str(out), "--quiet",
                                       "--no-fidelity", "--quant-algo", "awq", "--calibration", str(text_file)])
    assert result.exit_code == 0, result.output
    recipe = json.loads((out / "manifest.json").read_text(encoding="utf-8"))["recipe"]
    assert recipe["quant_algo"] == "awq" and recipe["calibration"]["algo"] == "awq"
    assert recipe["calibration"]["source"] == "mine.txt"
    assert recipe["calibration"]["sha256"] == hashlib.sha256(text_file.read_bytes()).hexdigest()

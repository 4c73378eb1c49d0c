"""Lossless where GGUF and MatMulNBits meet: Q4_0 / Q4_1 / Q8_0 blocks carried into MatMulNBits as they are.

An int4 (int8) artifact built from such a file, at accuracy level 0 (fp32 arithmetic), equals a cpu-fp32
export of the same file's dequantized weights within 1e-4 over the prompt and 16 decode steps: no second
rounding happened.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from fixtures.llama_gguf import llama_model, write_gguf
from fixtures.reference import Reference, ort_incremental
from fixtures.tokenizer import write_tiny_tokenizer
from phi3_edge.api import export
from phi3_edge.exporter.build import export_graph, model_shape
from phi3_edge.exporter.config import load_spec
from phi3_edge.exporter.gguf.carry import to_blocks
from phi3_edge.quantize.recipe import QuantOptions, decide_recipe
from phi3_edge.targets.table import get_target

STEPS = 16
IDS = np.random.default_rng(11).integers(0, 352, size=12).tolist()


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tok")
    write_tiny_tokenizer(folder)
    return folder


def _run(folder: Path, path: Path) -> Reference:
    spec = load_spec(path)
    return ort_incremental(folder / "model.onnx", IDS, STEPS, spec.num_layers, spec.num_kv_heads, spec.head_dim)


def _quantized_export(path: Path, folder: Path, target: str, qtype: str) -> dict[str, str]:
    folder.mkdir()
    exact = dataclasses.replace(get_target(target), accuracy_level=0)  # fp32 arithmetic inside MatMulNBits
    # lm_head in the body's width, so its stored blocks are carried too (a target's int8 head re-rounds them).
    spec = load_spec(path)
    # A Q4_1 table stays float: GatherBlockQuantized takes no float zero points, so it could not be carried.
    options = QuantOptions(lm_head=f"int{exact.bits}", embeddings="float" if qtype == "Q4_1" else None)
    recipe = decide_recipe(exact, options, model_shape(spec, (path,)))
    stats = export_graph(spec, exact, (path,), folder, recipe=recipe)
    return stats.heads


@pytest.mark.parametrize(("qtype", "target"), [("Q4_0", "cpu-int4"), ("Q4_1", "cpu-int4"), ("Q8_0", "cpu-int8")])
def test_carried_blocks_equal_the_dequantized_fp32_export(tokenizer_dir: Path, tmp_path: Path, qtype: str,
                                                          target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from phi3_edge.exporter.gguf import carry

    monkeypatch.setattr(carry, "CARRY_FLOAT_ZERO_POINTS", True)  # Q4_1: off by default for kernel speed only
    path = write_gguf(tmp_path / f"{qtype}.gguf", llama_model("gqa"), "llama", qtype, tokenizer_folder=tokenizer_dir)
    export(str(path), target="cpu-fp32", output=tmp_path / "fp32", progress=False)
    heads = _quantized_export(path, tmp_path / "quant", target, qtype)
    assert heads["gguf_blocks"].endswith(f"{qtype} carried as they are"), heads  # every matrix carried
    reference, ours = _run(tmp_path / "fp32", path), _run(tmp_path / "quant", path)
    np.testing.assert_allclose(ours.prompt_logits, reference.prompt_logits, atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours.step_logits, reference.step_logits, atol=1e-4, rtol=0)
    assert ours.tokens == reference.tokens


def test_other_types_are_requantized_and_say_so(tokenizer_dir: Path, tmp_path: Path) -> None:
    """Q8_0 matrices into int4: dequantized, quantized by the recipe, and the manifest says so."""
    path = write_gguf(tmp_path / "q8.gguf", llama_model("gqa"), "llama", "Q8_0", tokenizer_folder=tokenizer_dir)
    result = export(str(path), target="cpu-int4", output=tmp_path / "int4", progress=False, fidelity=False)
    recipe = json.loads((result.output / "manifest.json").read_text())["recipe"]
    assert "Q8_0 dequantized and re-quantized" in recipe["gguf_blocks"]


def test_q4_1_is_requantized_by_default() -> None:
    from phi3_edge.exporter.gguf.carry import can_carry

    assert can_carry("Q4_0", 4, 32, "float32") and not can_carry("Q4_1", 4, 32, "float32")
    assert not can_carry("Q4_0", 4, 128, "float32") and not can_carry("Q8_0", 4, 32, "float32")


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0"])
def test_block_conversion_is_exact(qtype: str) -> None:
    import gguf

    w = np.random.default_rng(0).standard_normal((6, 96)).astype(np.float32)
    w[0, :32] = 0.25  # a constant block: Q4_1's scale is 0 there
    kind = gguf.GGMLQuantizationType[qtype]
    raw = gguf.quants.quantize(w, kind)
    blocks = to_blocks(raw, qtype, 96)
    ours = (blocks.q.astype(np.float32) - blocks.effective_zero_points()[..., None]) * blocks.scales[..., None]
    np.testing.assert_allclose(ours.reshape(6, 96), gguf.quants.dequantize(raw, kind), rtol=0, atol=1e-6)


def test_carry_wins_over_the_targets_per_tensor_formats(tokenizer_dir: Path, tmp_path: Path) -> None:
    """cpu-int4's gate_up block 64 and int8 head would dequantize Q4_0's int4 blocks of 32 and round them again:
    a Q4_0 source keeps its format for every decoder Linear and the head (all carried, exact), while a Q8_0 source
    (not carried into int4; its head is carried at int8) and safetensors keep the target's formats."""
    target = get_target("cpu-int4")
    assert target.block_overrides and target.lm_head_bits == 8, "the rule needs a target with both"
    q4 = write_gguf(tmp_path / "q4.gguf", llama_model("gqa"), "llama", "Q4_0", tokenizer_folder=tokenizer_dir)
    q8 = write_gguf(tmp_path / "q8.gguf", llama_model("gqa"), "llama", "Q8_0", tokenizer_folder=tokenizer_dir)
    spec = load_spec(q4)
    for files in ((), (q8,)):
        kept = decide_recipe(target, QuantOptions(), model_shape(spec, files))
        assert kept.overrides and kept.lm_head is not None and kept.lm_head.bits == 8, files
    carried = decide_recipe(target, QuantOptions(), model_shape(spec, (q4,)))
    assert carried.overrides == () and carried.lm_head == carried.body
    result = export(str(q4), target="cpu-int4", output=tmp_path / "int4", progress=False, fidelity=False)
    recipe = json.loads((result.output / "manifest.json").read_text())["recipe"]
    assert recipe["quantization"]["overrides"] == {}
    # 4 packed Linears a layer (qkv, o, gate_up, down), lm_head and the untied table: every one carried.
    assert recipe["gguf_blocks"] == f"{4 * spec.num_layers + 2} Q4_0 carried as they are", recipe["gguf_blocks"]

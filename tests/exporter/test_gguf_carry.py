"""Lossless where GGUF and MatMulNBits meet: Q4_0 / Q4_1 / Q8_0 blocks carried into MatMulNBits as they are.

An int4 (int8) artifact built from such a file, at accuracy level 0 (fp32 arithmetic), equals a cpu-fp32
export of the same file's dequantized weights within 1e-4 over the prompt and 16 decode steps: no second
rounding happened.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, replace
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
# The exports below ask for RTN: carrying stored blocks is an RTN body's (a calibrated body, cpu-int4's default
# on these tiny models, folds or re-solves every weight and carries nothing: tests/exporter/test_awq_export.py).
RTN = "rtn"
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
    result = export(str(path), target="cpu-int4", output=tmp_path / "int4", progress=False, fidelity=False,
                    quant_algo=RTN)
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
    result = export(str(q4), target="cpu-int4", output=tmp_path / "int4", progress=False, fidelity=False,
                    quant_algo=RTN)
    recipe = json.loads((result.output / "manifest.json").read_text())["recipe"]
    assert recipe["quantization"]["overrides"] == {}
    # 4 packed Linears a layer (qkv, o, gate_up, down), lm_head and the untied table: every one carried.
    assert recipe["gguf_blocks"] == f"{4 * spec.num_layers + 2} Q4_0 carried as they are", recipe["gguf_blocks"]


GATE_UP = "model.layers.{}.mlp.gate_up_proj.weight"


@pytest.mark.parametrize(("arch", "stored"), [("phi3", {"blk.1.ffn_up.weight": "Q4_1"}),
                                              ("llama", {"blk.1.ffn_gate.weight": "F16"})],
                         ids=["packed-Q4_1", "llama-parts-Q4_0+F16"])
def test_carry_is_decided_per_tensor_in_a_mixed_file(tokenizer_dir: Path, tmp_path: Path, arch: str,
                                                     stored: dict[str, str]) -> None:
    """A Q4_0 file whose layer-1 gate|up is stored otherwise (a phi3 file's packed ffn_up in Q4_1; a Llama
    file's ffn_gate in F16 beside a Q4_0 ffn_up: a packed view of mixed types). Layer 0's gate_up is carried
    into the body's int4 block 32 and keeps it; layer 1's cannot be carried (it is re-quantized anyway) and
    gets cpu-int4's block-64 override: one tensor stored otherwise no longer drops the override everywhere."""
    path = write_gguf(tmp_path / "mixed.gguf", llama_model("gqa"), arch, "Q4_0", tokenizer_folder=tokenizer_dir,
                      qtypes=stored)
    spec = load_spec(path)
    shape = model_shape(spec, (path,))
    carried = dict(shape.carry_formats)
    assert carried[GATE_UP.format(0)] == (4, 32) and GATE_UP.format(1) not in carried
    assert carried["model.layers.1.self_attn.qkv_proj.weight"] == (4, 32)  # the rest of layer 1 still carries
    target = get_target("cpu-int4")
    assert target.block_overrides_for(spec.hidden_size) == {"mlp.gate_up_proj": 64}  # 128 does not divide it
    recipe = decide_recipe(target, QuantOptions(), shape)
    assert recipe.body is not None and recipe.overrides == ((GATE_UP.format(1), replace(recipe.body, block_size=64)),)
    result = export(str(path), target="cpu-int4", output=tmp_path / "int4", progress=False, fidelity=False,
                    quant_algo=RTN)
    manifest = json.loads((result.output / "manifest.json").read_text())["recipe"]
    assert manifest["quantization"]["overrides"] == {GATE_UP.format(1): asdict(replace(recipe.body, block_size=64))}
    # Every other matrix carried: 4 packed Linears a layer, less layer 1's gate_up, + lm_head and the untied table.
    carried_line = f"{4 * spec.num_layers - 1 + 2} Q4_0 carried as they are"
    if arch == "phi3":  # one stored Q4_1 tensor, re-quantized; a mixed packed view is read as float rows
        carried_line += "; 1 Q4_1 dequantized and re-quantized"
    assert manifest["gguf_blocks"] == carried_line
    assert _gate_up_blocks(result.output / "model.onnx") == {0: 32, 1: 64}  # the graph holds what was recorded


def _gate_up_blocks(model_path: Path) -> dict[int, int]:
    """block_size of each layer's gate_up MatMulNBits, from the exported graph."""
    import re

    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    blocks = {}
    for node in model.graph.node:
        found = re.search(r"layers\.(\d+)\.mlp\.gate_up_proj", node.input[1]) if node.op_type == "MatMulNBits" else None
        if found:
            blocks[int(found.group(1))] = next(a.i for a in node.attribute if a.name == "block_size")
    return blocks


def test_a_uniform_file_is_all_carried_or_all_overridden(tokenizer_dir: Path, tmp_path: Path) -> None:
    """The per-tensor rule on uniform files: a Q4_0 file lists every decoder Linear (packed views by their
    packed names) and takes no override; a Q8_0 file (not carried into int4) lists them at int8, so cpu-int4
    overrides every layer's gate_up; safetensors list nothing."""
    spec = None
    listed = {}
    for qtype in ("Q4_0", "Q8_0"):
        path = write_gguf(tmp_path / f"{qtype}.gguf", llama_model("gqa"), "llama", qtype,
                          tokenizer_folder=tokenizer_dir)
        spec = load_spec(path)
        listed[qtype] = model_shape(spec, (path,))
    assert spec is not None
    names = {f"model.layers.{i}.{stem}.weight" for i in range(spec.num_layers)
             for stem in ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")}
    for qtype, fmt in (("Q4_0", (4, 32)), ("Q8_0", (8, 32))):
        formats = dict(listed[qtype].carry_formats)
        assert names <= set(formats) and set(formats.values()) == {fmt}, qtype
    target = get_target("cpu-int4")
    assert decide_recipe(target, QuantOptions(), listed["Q4_0"]).overrides == ()
    every_layer = [GATE_UP.format(i) for i in range(spec.num_layers)]
    overridden = decide_recipe(target, QuantOptions(), listed["Q8_0"]).overrides
    assert [name for name, _ in overridden] == every_layer
    # A calibrated body carries nothing (GPTQ's codes are its own, AWQ folds before rounding; see
    # test_awq_export's carried-tensor count): the Q4_0 file's tensors take the target's block like any other.
    for algo in ("gptq", "awq"):
        calibrated = decide_recipe(target, QuantOptions(algo=algo), listed["Q4_0"]).overrides
        assert [name for name, _ in calibrated] == every_layer, algo
    assert model_shape(spec).carry_formats == ()

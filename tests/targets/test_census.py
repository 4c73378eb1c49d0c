"""Every target exports, and its graph's op census says what the target table says.

CUDA and DirectML cannot run here: these structural checks (ops, dtypes, attributes those EPs need) stand in,
and tests/targets/test_table.py runs the same graphs numerically on ORT's CPU kernels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import pytest

from phi3_edge.api import export
from phi3_edge.targets.table import TARGETS, Target

ELEM = {"float32": onnx.TensorProto.FLOAT, "float16": onnx.TensorProto.FLOAT16}


def attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def recorded_recipe(folder: Path) -> dict[str, Any]:
    """The quantization recipe the export recorded in its manifest (QuantRecipe.to_json)."""
    recipe: dict[str, Any] = json.loads((folder / "manifest.json").read_text())["recipe"]["quantization"]
    return recipe


def expected_linears(target: Target, folder: Path, layers: int) -> dict[str, tuple[int, int, int]]:
    """Every MatMulNBits (by checkpoint stem) -> (bits, block, accuracy_level) as the target table implies:
    the body's format, the table's block_overrides where the block divides the hidden size, lm_head at
    lm_head_bits (else as the body); and the recorded recipe must say the same."""
    assert target.bits is not None and target.block_size is not None
    hidden = json.loads((folder / "manifest.json").read_text())["spec"]["hidden_size"]
    level = target.accuracy_level or 0
    blocks: dict[str, int] = {}
    for stem, block in target.block_overrides:  # a stem listed twice: the first block that divides wins
        if hidden % block == 0:
            blocks.setdefault(stem, block)
    # Unpacked Q/K/V (DirectML): three MatMulNBits named qkv_proj.q/.k/.v, all from the checkpoint's qkv_proj.
    stems = ["self_attn.qkv_proj"] if target.packed_qkv else [f"self_attn.qkv_proj.{p}" for p in "qkv"]
    stems += ["self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"]
    expected = {f"model.layers.{layer}.{stem}": (target.bits, blocks.get(stem, target.block_size), level)
                for layer in range(layers) for stem in stems}
    expected["lm_head"] = (target.lm_head_bits or target.bits, target.block_size, level)
    recipe = recorded_recipe(folder)
    # The calibrated default's measured mixed precision (calibrated_size_budget) widens the tensors it chose to
    # int8: those come from the measurement, not the table, and only under a recorded size budget.
    for tensor, one in recipe["overrides"].items():
        stem = tensor.removesuffix(".weight")
        if one["bits"] > target.bits and stem in expected:
            assert recipe["size_budget"] == target.calibrated_size_budget is not None
            expected[stem] = (one["bits"], one["block_size"], level)

    def recorded(stem: str) -> tuple[int, int, int]:
        tensor = f"{stem.removesuffix('.q').removesuffix('.k').removesuffix('.v')}.weight"
        one = recipe["lm_head"] if stem == "lm_head" else recipe["overrides"].get(tensor, recipe["body"])
        return one["bits"], one["block_size"], one["accuracy_level"]

    assert {stem: recorded(stem) for stem in expected} == expected
    return expected


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """The LongRoPE checkpoint (it has the If node DirectML must not get) exported once per target."""
    root = tmp_path_factory.mktemp("census")
    checkpoint = tiny_checkpoint("longrope")
    for name in TARGETS:
        export(str(checkpoint), target=name, output=root / name, progress=False, fidelity=False)
    return {name: root / name for name in TARGETS}


@pytest.mark.parametrize("name", list(TARGETS))
def test_census_matches_table(exported: dict[str, Path], name: str) -> None:
    target: Target = TARGETS[name]
    model = onnx.load(str(exported[name] / "model.onnx"), load_external_data=False)
    ops = [node.op_type for node in model.graph.node]
    layers = 2

    io = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}
    assert io["logits"] == ELEM[target.io_dtype] and io["past_key_values.0.key"] == ELEM[target.io_dtype]

    nbits = {n.name.split("/")[0]: attrs(n) for n in model.graph.node if n.op_type == "MatMulNBits"}
    if target.bits is None:
        assert not nbits and "MatMul" in ops
    else:
        expected = expected_linears(target, exported[name], layers)
        got = {stem: (a["bits"], a["block_size"], a["accuracy_level"]) for stem, a in nbits.items()}
        assert got == expected
    tables = [attrs(n) for n in model.graph.node if n.op_type == "GatherBlockQuantized"]
    table = recorded_recipe(exported[name])["embeddings"]
    assert [(a["bits"], a["block_size"]) for a in tables] == ([] if table is None else
                                                              [(table["bits"], table["block_size"])])

    gqa = [attrs(n) for n in model.graph.node if n.op_type == "GroupQueryAttention"]
    assert len(gqa) == layers and all(a["do_rotary"] == int(target.fused_rotary) for a in gqa)
    assert ("If" in ops) == target.allow_if_node  # LongRoPE: If where allowed, stacked caches otherwise
    assert ("RotaryEmbedding" in ops) == (not target.fused_rotary)
    projections = [n.name for n in model.graph.node if n.op_type in ("MatMul", "MatMulNBits") and "qkv_proj" in n.name]
    assert len(projections) == layers * (1 if target.packed_qkv else 3)
    assert (exported[name] / "model.ort").exists() == target.ort_format

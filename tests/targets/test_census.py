"""Every target exports, and its graph's op census says what the target table says.

CUDA and DirectML cannot run here: these structural checks (ops, dtypes, attributes those EPs need) stand in,
and tests/targets/test_table.py runs the same graphs numerically on ORT's CPU kernels.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from phi3_edge.api import export
from phi3_edge.targets.table import TARGETS, Target

ELEM = {"float32": onnx.TensorProto.FLOAT, "float16": onnx.TensorProto.FLOAT16}


def attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


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

    nbits = [attrs(n) for n in model.graph.node if n.op_type == "MatMulNBits"]
    if target.bits is None:
        assert not nbits and "MatMul" in ops
    else:
        assert nbits and all(a["bits"] == target.bits and a["block_size"] == target.block_size
                             and a["accuracy_level"] == target.accuracy_level for a in nbits)

    gqa = [attrs(n) for n in model.graph.node if n.op_type == "GroupQueryAttention"]
    assert len(gqa) == layers and all(a["do_rotary"] == int(target.fused_rotary) for a in gqa)
    assert ("If" in ops) == target.allow_if_node  # LongRoPE: If where allowed, stacked caches otherwise
    assert ("RotaryEmbedding" in ops) == (not target.fused_rotary)
    projections = [n.name for n in model.graph.node if n.op_type in ("MatMul", "MatMulNBits") and "qkv_proj" in n.name]
    assert len(projections) == layers * (1 if target.packed_qkv else 3)
    assert (exported[name] / "model.ort").exists() == target.ort_format

"""graph_features reads IR version, opsets and ops with their int attributes (subgraphs included) off the wire,
the same answers the onnx package gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from phi3_edge.errors import ArtifactError
from phi3_edge.graph_features import OpUse, read_graph_features


def _model(tmp_path: Path) -> Path:
    table = numpy_helper.from_array(np.zeros((4, 8), dtype=np.uint8), "table")
    then_branch = helper.make_graph(
        [helper.make_node("MatMulNBits", ["x", "w", "s"], ["y"], domain="com.microsoft", K=64, N=32, bits=8,
                          block_size=32, accuracy_level=4)], "then", [], [helper.make_tensor_value_info("y", 1, None)])
    else_branch = helper.make_graph([helper.make_node("Identity", ["x"], ["y2"])], "else", [],
                                    [helper.make_tensor_value_info("y2", 1, None)])
    nodes = [
        helper.make_node("GroupQueryAttention", ["q", "k", "v"], ["o"], domain="com.microsoft", num_heads=8,
                         kv_num_heads=4, do_rotary=1, local_window_size=-1),
        helper.make_node("GatherBlockQuantized", ["table", "ids", "s"], ["e"], domain="com.microsoft", bits=4),
        helper.make_node("If", ["c"], ["z"], then_branch=then_branch, else_branch=else_branch),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("q", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("o", TensorProto.FLOAT, [1])],
                              initializer=[table, numpy_helper.from_array(np.zeros((1,), np.float32), "w")])
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    path = tmp_path / "model.onnx"
    onnx.save_model(model, path)
    return path


def test_features_match_the_graph(tmp_path: Path) -> None:
    features = read_graph_features(_model(tmp_path))
    assert features.ir_version == 10
    assert features.opset("") == 21 and features.opset("ai.onnx") == 21 and features.opset("com.microsoft") == 1
    by_op = {use.op: use for use in features.uses}
    gqa = by_op["com.microsoft.GroupQueryAttention"]
    assert gqa.attr("local_window_size") == -1 and gqa.attr("do_rotary") == 1 and gqa.attr("softcap") is None
    assert by_op["com.microsoft.GatherBlockQuantized"].const_types == (TensorProto.UINT8, None, None)
    nbits = by_op["com.microsoft.MatMulNBits"]  # inside the If's then-branch, reading the outer initializer w
    assert nbits.attr("bits") == 8 and nbits.attr("accuracy_level") == 4
    assert nbits.const_types == (None, TensorProto.FLOAT, None)
    assert {"If", "Identity"} <= set(by_op)
    assert OpUse("Identity", (), (None,)) in features.uses


def test_not_an_onnx_file_is_one_artifact_error(tmp_path: Path) -> None:
    for name, payload in (("empty.onnx", b""), ("junk.onnx", b"\xff" * 64)):
        path = tmp_path / name
        path.write_bytes(payload)
        with pytest.raises(ArtifactError) as caught:
            read_graph_features(path)
        assert str(caught.value).startswith(f"{path}: cannot read the graph")
    with pytest.raises(ArtifactError, match="cannot read the graph"):
        read_graph_features(tmp_path / "missing.onnx")

"""The oldest onnxruntime for a graph: each table row fires on its feature only, the maximum wins, and an older
installed runtime gets one actionable line. The rows themselves are measured by bench/min_runtime.py."""

from __future__ import annotations

import pytest

from phi3_edge.graph_features import GraphFeatures, OpUse
from phi3_edge.runtime_compat import (
    GENAI_FOR_ORT,
    REQUIREMENTS,
    UnknownFeature,
    check_installed,
    genai_for,
    min_runtime,
    parse_version,
)

MS = "com.microsoft."
BASE = (OpUse(MS + "GroupQueryAttention", (("do_rotary", 1), ("local_window_size", -1))),
        OpUse(MS + "MatMulNBits", (("accuracy_level", 4), ("bits", 4), ("block_size", 32))),
        OpUse("SimplifiedLayerNormalization", ()))


def _graph(*uses: OpUse, ir: int = 10, opset: int = 21) -> GraphFeatures:
    return GraphFeatures(ir, (("", opset), ("com.microsoft", 1)), frozenset(BASE + uses))


def test_int4_graph_needs_what_its_ir_and_opset_need() -> None:
    found = min_runtime(_graph())
    assert found.onnxruntime == "1.18.0"
    assert found.reasons == ("ONNX IR version 10", "ONNX opset 21")
    assert found.onnxruntime_genai == "0.4.0"  # the oldest genai release in the table, built for ORT 1.19


@pytest.mark.parametrize(("use", "ort", "genai"), [
    (OpUse(MS + "MatMulNBits", (("bits", 8), ("block_size", 32))), "1.22.0", "0.8.0"),
    (OpUse(MS + "GatherBlockQuantized", (("block_size", 32),), (22, None, None)), "1.20.0", "0.5.0"),
    (OpUse(MS + "GatherBlockQuantized", (("bits", 4), ("block_size", 32))), "1.23.0", "0.10.0"),
    (OpUse(MS + "GroupQueryAttention", (("do_rotary", 1), ("local_window_size", 2047))), "1.24.1", "0.12.0"),
])
def test_each_feature_raises_the_minimum(use: OpUse, ort: str, genai: str) -> None:
    found = min_runtime(_graph(use))
    assert (found.onnxruntime, found.onnxruntime_genai) == (ort, genai)
    assert len(found.reasons) == 1 and found.reasons[0] != "ONNX IR version 10"


def test_highest_requirement_wins_and_all_ties_are_reasons() -> None:
    found = min_runtime(_graph(OpUse(MS + "MatMulNBits", (("bits", 8),)),
                               OpUse(MS + "GroupQueryAttention", (("local_window_size", 8),))))
    assert found.onnxruntime == "1.24.1"
    assert found.to_json() == {"onnxruntime": "1.24.1", "onnxruntime-genai": "0.12.0",
                               "reasons": [found.reasons[0]]}


def test_unknown_ir_or_opset_claims_nothing() -> None:
    with pytest.raises(UnknownFeature, match="IR version 99"):
        min_runtime(_graph(ir=99))
    with pytest.raises(UnknownFeature, match="ONNX opset 40"):
        min_runtime(_graph(opset=40))
    assert min_runtime(_graph(ir=3, opset=7)).onnxruntime == "1.17.0"  # older than the table: its floor


def test_tables_are_ordered_and_consistent() -> None:
    versions = [parse_version(r.onnxruntime) for r in REQUIREMENTS]
    assert versions == sorted(versions)
    assert [parse_version(o) for _, o in GENAI_FOR_ORT] == sorted(parse_version(o) for _, o in GENAI_FOR_ORT)
    assert genai_for("1.22.0") == "0.8.0" and genai_for("1.22.1") == "0.10.0" and genai_for("9.0.0") is None


def test_installed_runtime_checks() -> None:
    record = {"onnxruntime": "1.22.0", "onnxruntime-genai": "0.8.0",
              "reasons": ["com.microsoft.MatMulNBits with 8-bit weights"]}
    assert check_installed(record, {"onnxruntime": "1.32.0", "onnxruntime-genai": "0.18.0"}) is None
    assert check_installed(record, {"onnxruntime": "1.22.0", "onnxruntime-genai": None}) is None
    problem = check_installed(record, {"onnxruntime": "1.21.1", "onnxruntime-genai": None})
    assert problem == ("needs onnxruntime >= 1.22.0, installed 1.21.1 (com.microsoft.MatMulNBits with 8-bit "
                       "weights): pip install -U 'onnxruntime>=1.22.0'")
    assert "onnxruntime-genai >= 0.8.0, installed 0.7.1" in str(
        check_installed(record, {"onnxruntime": "1.32.0", "onnxruntime-genai": "0.7.1"}))
    assert check_installed({}, {"onnxruntime": "1.0.0"}) is None  # an older manifest without the record


def test_parse_version() -> None:
    assert parse_version("1.22.1") == (1, 22, 1)
    assert parse_version("1.23.0.dev20250101") == (1, 23, 0)
    assert parse_version("1.24.0rc1") == (1, 24, 0)
    assert parse_version("2") == (2, 0, 0)
    with pytest.raises(ValueError, match="not a version"):
        parse_version("dev")

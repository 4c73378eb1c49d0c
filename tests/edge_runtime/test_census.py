"""The protobuf walker (no `onnx` on a device) reads the same op census and I/O as the onnx package / ORT."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

from fixtures.table_bytes import gathered_table_bytes
from phi3_edge import io_spec
from phi3_edge.edge_runtime.artifact_info import inspect_artifact
from phi3_edge.edge_runtime.census import read_graph_info
from phi3_edge.errors import ArtifactError


def _onnx_census(graph: onnx.GraphProto, counts: Counter[str]) -> Counter[str]:
    for node in graph.node:
        counts[f"{node.domain}.{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type] += 1
        for attribute in node.attribute:
            for subgraph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                _onnx_census(subgraph, counts)
    return counts


@pytest.mark.parametrize(("variant", "target"), [("gqa", "cpu-fp32"), ("longrope", "cpu-int4")])
def test_census_and_io_match_onnx_and_onnxruntime(tiny_artifact, variant: str, target: str) -> None:
    path = tiny_artifact(variant, target) / "model.onnx"
    info = read_graph_info(path)
    assert info.ops == _onnx_census(onnx.load(str(path), load_external_data=False).graph, Counter())
    assert info.has_gqa
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # An input an initializer backs (logits_to_keep) is onnxruntime's overridable initializer, not its input.
    required = tuple(t for t in info.inputs if t.name not in info.optional_inputs)
    optional = tuple(t for t in info.inputs if t.name in info.optional_inputs)
    assert [t.name for t in optional] == [io_spec.LOGITS_TO_KEEP]
    for ours, theirs in [(required, session.get_inputs()), (optional, session.get_overridable_initializers()),
                         (info.outputs, session.get_outputs())]:
        assert [(t.name, list(t.shape)) for t in ours] == [(t.name, t.shape) for t in theirs]
        assert all(theirs_.type == f"tensor({'float' if t.dtype == 'float32' else t.dtype})"
                   for t, theirs_ in zip(ours, theirs, strict=True))


def test_not_an_onnx_file_is_one_artifact_error(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\xff\xff\xff\xff not protobuf")
    with pytest.raises(ArtifactError, match="model.onnx"):
        read_graph_info(path)


def test_inspect_reports_files_and_manifest(tiny_artifact) -> None:
    info = inspect_artifact(tiny_artifact("gqa", "cpu-int4"))
    assert info.files[0][0] == "model.onnx.data" and info.total_bytes > info.files[0][1]
    rows = dict(info.summary_rows())
    assert rows["target"].startswith("cpu-int4") and "block_size=32" in rows["recipe"]
    assert "onnxruntime" in rows["tools"]
    assert info.graph.ops["com.microsoft.MatMulNBits"] > 0


def test_lookup_only_bytes_are_the_gathered_table(tiny_artifact) -> None:
    """A decode step reads one row of a table only Gather uses; a table shared with lm_head is read whole.

    A float tied model stores the table twice (Gather wants (V, H), MatMul (H, V)), so its Gather copy is
    lookup-only too; quantized tied models share one table between GatherBlockQuantized and MatMulNBits."""
    untied = read_graph_info(tiny_artifact("gqa") / "model.onnx")
    assert untied.lookup_only_bytes == 512 * 64 * 4  # vocab x hidden x float32
    assert read_graph_info(tiny_artifact("partial_tied") / "model.onnx").lookup_only_bytes == 512 * 64 * 4
    assert read_graph_info(tiny_artifact("partial_tied", "cpu-int4") / "model.onnx").lookup_only_bytes == 0
    # An untied quantized table (cpu-int4's default): its codes reach GatherBlockQuantized through a Reshape, and
    # its scales are lookup-only too.
    quantized = tiny_artifact("gqa", "cpu-int4") / "model.onnx"
    assert read_graph_info(quantized).ops["com.microsoft.GatherBlockQuantized"] == 1
    assert read_graph_info(quantized).lookup_only_bytes == gathered_table_bytes(quantized) > 0

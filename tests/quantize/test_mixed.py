"""Mixed precision: int8 down projections in the layers llama.cpp's Q4_K_M gives more bits, int4 elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import onnx

from phi3_edge.api import export
from phi3_edge.evaluate import compare_artifacts
from phi3_edge.quantize.mixed import uses_more_bits


def test_layer_choice_matches_llama_cpp() -> None:
    """Phi-3-mini's 32 layers: 0-3 and 28-31, plus every third from 6 (4 + 2) on."""
    chosen = [layer for layer in range(32) if uses_more_bits(layer, 32)]
    assert chosen == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]


def test_mixed_export_census_manifest_and_fidelity(tiny_checkpoint, tmp_path: Path) -> None:
    checkpoint = str(tiny_checkpoint("gqa"))
    export(checkpoint, target="cpu-fp32", output=tmp_path / "fp32", progress=False)
    export(checkpoint, target="cpu-int4", output=tmp_path / "int4", progress=False, fidelity=False)
    export(checkpoint, target="cpu-int4", output=tmp_path / "mixed", progress=False, fidelity=False,
           mixed_precision=True)
    graph = onnx.load(str(tmp_path / "mixed" / "model.onnx"), load_external_data=False).graph
    bits = {n.name.split("/")[0]: next(a.i for a in n.attribute if a.name == "bits")
            for n in graph.node if n.op_type == "MatMulNBits"}
    assert bits.pop("model.layers.1.mlp.down_proj") == 8  # 2 layers: the last eighth is layer 1
    assert set(bits.values()) == {4}
    manifest = json.loads((tmp_path / "mixed" / "manifest.json").read_text())
    assert manifest["recipe"]["quant_algo"] == "rtn+int8-mixed"
    mixed = compare_artifacts(tmp_path / "mixed", tmp_path / "fp32")
    plain = compare_artifacts(tmp_path / "int4", tmp_path / "fp32")
    assert mixed.kl < plain.kl

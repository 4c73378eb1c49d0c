"""mobile-int4: model.ort + required_operators.config, and model.ort gives model.onnx's tokens."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fixtures.reference import ort_incremental
from phi3_edge.api import export
from phi3_edge.exporter.config import load_spec
from phi3_edge.exporter.ort_format import write_required_operators


def test_mobile_int4_writes_ort_format(tiny_checkpoint, tmp_path: Path) -> None:
    checkpoint = tiny_checkpoint("longrope")  # an If subgraph too: its ops must be in the config
    result = export(str(checkpoint), target="mobile-int4", output=tmp_path / "m", progress=False)
    folder = tmp_path / "m"
    assert (folder / "model.ort").stat().st_size > 0
    assert result.ort_format and result.ort_format.startswith("model.ort written")
    config = (folder / "required_operators.config").read_text().splitlines()
    entries = {line.split(";")[0]: line.split(";")[2].split(",") for line in config if not line.startswith("#")}
    assert {"MatMulNBits", "GroupQueryAttention", "SkipSimplifiedLayerNormalization"} <= set(entries["com.microsoft"])
    assert {"If", "Identity", "Gather"} <= set(entries["ai.onnx"])
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["recipe"]["ort_format"].startswith("model.ort written")
    assert "model.ort" in manifest["files"]

    spec = load_spec(checkpoint / "config.json")
    ids = np.random.default_rng(0).integers(0, 352, size=28).tolist()  # crosses the LongRoPE switch
    args = (ids, 8, spec.num_layers, spec.num_kv_heads, spec.head_dim)
    from_onnx, from_ort = ort_incremental(folder / "model.onnx", *args), ort_incremental(folder / "model.ort", *args)
    assert from_ort.tokens == from_onnx.tokens
    np.testing.assert_allclose(from_ort.step_logits, from_onnx.step_logits, atol=1e-5, rtol=0)


def test_ort_format_skipped_above_flatbuffer_limit(tiny_checkpoint, tmp_path: Path, monkeypatch) -> None:
    import phi3_edge.exporter.ort_format as ort_format

    monkeypatch.setattr(ort_format, "FLATBUFFER_LIMIT_BYTES", 1024)
    result = export(str(tiny_checkpoint("gqa")), target="mobile-int4", output=tmp_path / "m", progress=False)
    assert not (tmp_path / "m" / "model.ort").exists()
    assert (tmp_path / "m" / "required_operators.config").exists()
    assert result.ort_format and "2 GiB" in result.ort_format
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["recipe"]["ort_format"].startswith("skipped")


def test_required_operators_loads_in_ort_parser(tiny_checkpoint, tmp_path: Path) -> None:
    """onnxruntime's own reduced-build config parser accepts the file."""
    from onnxruntime.tools.reduced_build_config_parser import parse_config

    export(str(tiny_checkpoint("gqa")), target="cpu-int4", output=tmp_path / "a", progress=False)
    write_required_operators(tmp_path / "a" / "model.onnx", tmp_path / "ops.config")
    required, _ = parse_config(str(tmp_path / "ops.config"))
    assert "MatMulNBits" in required["com.microsoft"][1]

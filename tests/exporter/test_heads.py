"""Embedding and lm_head options: quantized (GatherBlockQuantized) tables, shared when tied, lm_head precision."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from fixtures.reference import ort_incremental
from safetensors.numpy import load_file, save_file

from phi3_edge.api import export
from phi3_edge.exporter.config import load_spec
from phi3_edge.quantize.blockwise import dequantize, quantize_rtn


def graph(folder: Path) -> onnx.GraphProto:
    return onnx.load(str(folder / "model.onnx"), load_external_data=False).graph


def nodes(folder: Path, op_type: str) -> list[onnx.NodeProto]:
    return [node for node in graph(folder).node if node.op_type == op_type]


def attribute(node: onnx.NodeProto, name: str) -> int:
    return next(a.i for a in node.attribute if a.name == name)


def run(folder: Path, checkpoint: Path, ids: list[int]):
    spec = load_spec(checkpoint / "config.json")
    return ort_incremental(folder / "model.onnx", ids, 4, spec.num_layers, spec.num_kv_heads, spec.head_dim)


def test_quantized_embeddings_gather_the_dequantized_table(tiny_checkpoint, tmp_path: Path) -> None:
    """GatherBlockQuantized rows equal RTN-dequantized rows: the float export of a checkpoint whose table was
    replaced by its dequantization gives the same logits (lm_head float, body float)."""
    checkpoint = tiny_checkpoint("gqa")
    export(str(checkpoint), target="cpu-fp32", output=tmp_path / "q", progress=False, embeddings="quantized")
    assert len(nodes(tmp_path / "q", "GatherBlockQuantized")) == 1
    fake = shutil.copytree(checkpoint, tmp_path / "fake")
    weights = load_file(str(fake / "model.safetensors"))
    table = weights["model.embed_tokens.weight"].astype(np.float32)
    weights["model.embed_tokens.weight"] = dequantize(quantize_rtn(table, 4, 32, True))[:, : table.shape[1]]
    save_file(weights, str(fake / "model.safetensors"), metadata={"format": "pt"})
    export(str(fake), target="cpu-fp32", output=tmp_path / "ref", progress=False)
    ids = list(range(5, 25))
    ours, ref = run(tmp_path / "q", checkpoint, ids), run(tmp_path / "ref", fake, ids)
    np.testing.assert_allclose(ours.prompt_logits, ref.prompt_logits, atol=1e-4, rtol=0)
    assert ours.tokens == ref.tokens


def test_tied_int4_shares_one_table(tiny_checkpoint, tmp_path: Path) -> None:
    """Tied model on cpu-int4: one quantized table feeds both GatherBlockQuantized and lm_head's MatMulNBits."""
    checkpoint = tiny_checkpoint("partial_tied_wide")
    export(str(checkpoint), target="cpu-int4", output=tmp_path / "shared", progress=False)
    export(str(checkpoint), target="cpu-int4", output=tmp_path / "float", progress=False, embeddings="float")
    reshape = nodes(tmp_path / "shared", "Reshape")[0]
    head = [n for n in nodes(tmp_path / "shared", "MatMulNBits") if n.name.startswith("lm_head")][0]
    assert reshape.input[0] == head.input[1], "lm_head must read the embedding table's codes"
    names = {t.name for t in graph(tmp_path / "shared").initializer}
    assert "model.embed_tokens.weight" not in names
    shared_bytes = (tmp_path / "shared" / "model.onnx.data").stat().st_size
    float_bytes = (tmp_path / "float" / "model.onnx.data").stat().st_size
    assert shared_bytes < float_bytes
    ids = list(range(3, 19))
    assert run(tmp_path / "shared", checkpoint, ids).tokens  # it runs end to end


def test_lm_head_int8_on_int4_target(tiny_checkpoint, tmp_path: Path) -> None:
    export(str(tiny_checkpoint("gqa")), target="cpu-int4", output=tmp_path / "a", progress=False, lm_head="int8")
    bits = {n.name.split("/")[0]: attribute(n, "bits") for n in nodes(tmp_path / "a", "MatMulNBits")}
    assert bits.pop("lm_head") == 8
    assert set(bits.values()) == {4}
    assert not nodes(tmp_path / "a", "GatherBlockQuantized"), "untied: embeddings stay float by default"

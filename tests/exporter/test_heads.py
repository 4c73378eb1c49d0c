"""Embedding and lm_head options: quantized (GatherBlockQuantized) tables, shared when tied, lm_head precision."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from safetensors.numpy import load_file, save_file

from fixtures.reference import ort_incremental
from phi3_edge.api import export
from phi3_edge.exporter.config import load_spec
from phi3_edge.quantize.blockwise import dequantize, quantize_rtn
from phi3_edge.targets.table import TARGETS


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
    # rtn: the calibrated default would also widen its measured body tensors to int8 (test_default_algo)
    export(str(tiny_checkpoint("gqa")), target="cpu-int4", output=tmp_path / "a", progress=False, lm_head="int8",
           quant_algo="rtn")
    bits = {n.name.split("/")[0]: attribute(n, "bits") for n in nodes(tmp_path / "a", "MatMulNBits")}
    assert bits.pop("lm_head") == 8
    assert set(bits.values()) == {4}
    # Untied: the table follows the head's format where the target quantizes tables (targets/table.py), else float.
    gathers = nodes(tmp_path / "a", "GatherBlockQuantized")
    if TARGETS["cpu-int4"].quantize_embeddings:
        assert [attribute(g, "bits") for g in gathers] == [8]
    else:
        assert not gathers
    export(str(tiny_checkpoint("gqa")), target="cpu-int4", output=tmp_path / "f", progress=False, lm_head="int8",
           embeddings="float")
    assert not nodes(tmp_path / "f", "GatherBlockQuantized"), "--embeddings float keeps the table float"


def _manifest_recipe(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())["recipe"]


def _lm_head_op(folder: Path) -> tuple[str, int | None]:
    """The op that produces the logits, and its bits (None for a float MatMul)."""
    (node,) = [n for n in graph(folder).node if "logits" in n.output]
    return node.op_type, attribute(node, "bits") if node.op_type == "MatMulNBits" else None


@pytest.mark.parametrize("variant", ["gqa", "partial_tied_wide"])
def test_manifest_describes_the_heads_the_graph_has_with_mixed_precision(tiny_checkpoint, tmp_path: Path,
                                                                        variant: str) -> None:
    """--mixed-precision wraps the body's Linears; the heads still follow the recipe, and the manifest says what
    the graph holds (it used to report a float lm_head beside an int4 MatMulNBits one)."""
    out = tmp_path / variant
    export(str(tiny_checkpoint(variant)), target="cpu-int4", output=out, progress=False, fidelity=False,
           mixed_precision=True)
    target = TARGETS["cpu-int4"]
    head_bits = target.lm_head_bits or target.bits  # the target's measured head width, else the body's
    recipe = _manifest_recipe(out)
    op, bits = _lm_head_op(out)
    assert (op, bits) == ("MatMulNBits", head_bits)
    assert recipe["lm_head"].startswith(f"int{head_bits} ")
    applied = recipe["quantization"]
    assert applied["lm_head"]["bits"] == head_bits and applied["overrides"]  # the recipe as applied, overrides too
    gathers = nodes(out, "GatherBlockQuantized")
    if variant == "partial_tied_wide":  # tied: the table is quantized once and shared, as without mixed precision
        assert recipe["lm_head"] == f"int{head_bits} GatherBlockQuantized table, shared" and applied["shared_table"]
        assert len(gathers) == 1 and recipe["embeddings"] == f"int{head_bits} GatherBlockQuantized"
    else:
        assert recipe["lm_head"] == f"int{head_bits} MatMulNBits (rtn, block {target.block_size})"
        if target.quantize_embeddings:  # untied: a table of its own in the head's format
            assert [attribute(g, "bits") for g in gathers] == [head_bits]
            assert recipe["embeddings"] == f"int{head_bits} GatherBlockQuantized" and not applied["shared_table"]
        else:
            assert not gathers and recipe["embeddings"] == "float"
    # Every body MatMulNBits has the format the applied recipe names for it: an override's (int8 widened, or
    # a measured block size), else the body's.
    body = applied["body"]
    formats = {n.name.split("/")[0]: (attribute(n, "bits"), attribute(n, "block_size"))
               for n in nodes(out, "MatMulNBits") if not n.name.startswith("lm_head")}
    overrides = {name.removesuffix(".weight"): r for name, r in applied["overrides"].items()}
    assert set(overrides) <= set(formats)
    for name, got in formats.items():
        want = overrides.get(name, body)
        assert got == (want["bits"], want["block_size"]), name
    wide = {name for name, (b, _) in formats.items() if b == 8}
    assert {name for name, r in overrides.items() if r["bits"] == 8} == wide


def test_manifest_float_head(tiny_checkpoint, tmp_path: Path) -> None:
    export(str(tiny_checkpoint("gqa")), target="cpu-int4", output=tmp_path / "f", progress=False, fidelity=False,
           lm_head="float")
    assert _lm_head_op(tmp_path / "f") == ("MatMul", None)
    assert _manifest_recipe(tmp_path / "f")["lm_head"] == "float MatMul"
    assert _manifest_recipe(tmp_path / "f")["quantization"]["lm_head"] is None

"""NBitsLinear (exporter/blocks/nbits.py) end to end: a tiny safetensors weight -> streamed MatMulNBits
initializers -> onnxruntime."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from safetensors.numpy import load_file, save_file

from fixtures.reference import ort_incremental
from phi3_edge.exporter.blocks.nbits import NBitsLinear
from phi3_edge.exporter.build import export_graph, model_shape
from phi3_edge.exporter.config import Phi3Spec, load_spec
from phi3_edge.exporter.graph import GraphBuilder, value_info
from phi3_edge.exporter.tensor_writer import TensorWriter
from phi3_edge.exporter.weight_source import WeightSource
from phi3_edge.exporter.weights import WeightStore
from phi3_edge.quantize.blockwise import dequantize, quantize_hqq, quantize_rtn
from phi3_edge.quantize.recipe import LinearRecipe, QuantOptions, QuantRecipe, decide_recipe
from phi3_edge.targets.table import TARGETS, Target

N, K = 80, 200  # K = 6.25 blocks of 32: the last block is partial
NAME = "model.layers.0.mlp.down_proj.weight"
EMBED = "model.embed_tokens.weight"


def write_checkpoint(folder: Path, dtype: type = np.float32) -> np.ndarray:
    w = (np.random.default_rng(0).standard_t(3, (N, K)) / np.sqrt(K)).astype(dtype)
    save_file({NAME: w}, str(folder / "model.safetensors"))
    return w.astype(np.float32)


def export_linear(folder: Path, io_dtype: str = "float32", chunk_rows: int = 7,
                  rows: tuple[int, int] | None = None, **recipe: object) -> tuple[onnx.ModelProto, list]:
    """One NBitsLinear call in a graph x (B, S, K) -> y, written to folder/model.onnx(.data)."""
    reports: list[tuple[str, int]] = []
    out_features = N if rows is None else rows[1] - rows[0]
    g = GraphBuilder("linear")
    with WeightStore((folder / "model.safetensors",)) as store, TensorWriter(folder / "model.onnx.data") as writer:
        # a few rows per chunk: the packed codes, scales and zero points must survive being streamed in pieces
        source = WeightSource(store, writer, float_dtype=io_dtype, chunk_bytes=4 * K * chunk_rows,
                              on_tensor=lambda name, nbytes: reports.append((name, nbytes)))
        linear = NBitsLinear(source, LinearRecipe(**recipe))  # type: ignore[arg-type]
        out = linear(g, "x", NAME, K, out_features, rows=rows, label="q" if rows else None)
    g.rename_value(out, "y")
    model = g.model([value_info("x", io_dtype, ["batch", "seq", K])], [value_info("y", io_dtype,
                                                                                ["batch", "seq", out_features])])
    onnx.save_model(model, folder / "model.onnx")
    return model, reports


def run(folder: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0].astype(np.float32)


def inputs(dtype: type = np.float32) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((2, 3, K)).astype(dtype)  # (B, S, K)


RECIPES = [
    {"bits": 4, "block_size": 32, "symmetric": True},
    {"bits": 4, "block_size": 32, "symmetric": False},
    {"bits": 4, "block_size": 128, "symmetric": True},
    {"bits": 4, "block_size": 32, "symmetric": False, "algo": "hqq"},
    {"bits": 8, "block_size": 32, "symmetric": True},
    {"bits": 8, "block_size": 64, "symmetric": False},
    {"bits": 4, "block_size": 32, "symmetric": False, "algo": "hqq", "zero_points": "float"},
]
HQQ, HQQ_FLOAT = RECIPES[3], RECIPES[6]


def reference_blocks(w: np.ndarray, recipe: dict, scale_dtype: str = "float32"):
    if recipe.get("algo") == "hqq":
        return quantize_hqq(w, recipe["bits"], recipe["block_size"], scale_dtype=scale_dtype,
                            zero_points=recipe.get("zero_points", "uint"))
    return quantize_rtn(w, recipe["bits"], recipe["block_size"], recipe["symmetric"], scale_dtype=scale_dtype)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: "-".join(str(v) for v in r.values()))
def test_nbits_linear_matches_float_matmul_within_quantization_error(tmp_path, recipe):
    w = write_checkpoint(tmp_path)
    export_linear(tmp_path, **recipe)
    x = inputs()
    got = run(tmp_path, x)  # (B, S, N)
    quantized = dequantize(reference_blocks(w, recipe))
    np.testing.assert_allclose(got, x @ quantized.T, rtol=0, atol=1e-4)  # exactly our quantization
    # |x (W - Wq)^T| <= |x| |W - Wq|^T elementwise: the float result, within the weights' quantization error
    bound = np.abs(x) @ np.abs(w - quantized).T
    assert np.all(np.abs(got - x @ w.T) <= bound + 1e-4)
    # t3 weights, measured relative error: 4-bit 0.10 (HQQ) .. 0.20 (block 128), 8-bit 0.008
    assert np.linalg.norm(got - x @ w.T) / np.linalg.norm(x @ w.T) < (0.3 if recipe["bits"] == 4 else 0.02)


@pytest.mark.parametrize("recipe", [RECIPES[0], RECIPES[1], HQQ, HQQ_FLOAT], ids=["sym", "asym", "hqq", "hqq-float"])
def test_initializer_shapes_and_node(tmp_path, recipe):
    write_checkpoint(tmp_path)
    level = 0 if recipe.get("zero_points") == "float" else 4  # float zero points leave the int8 path anyway
    model, reports = export_linear(tmp_path, accuracy_level=level, **recipe)
    shapes = {t.name.rsplit(".", 1)[-1]: (tuple(t.dims), t.data_type) for t in model.graph.initializer}
    blocks = 7  # ceil(200 / 32)
    assert shapes["qweight"] == ((N, blocks, 16), onnx.TensorProto.UINT8)
    assert shapes["scales"] == ((N, blocks), onnx.TensorProto.FLOAT)
    if recipe["symmetric"]:
        assert "zero_points" not in shapes
    elif recipe.get("zero_points") == "float":
        assert shapes["zero_points"] == ((N, blocks), onnx.TensorProto.FLOAT)  # float, unpacked
    else:  # asymmetric RTN and HQQ's default integer zero points: MatMulNBits' packed uint4
        assert shapes["zero_points"] == ((N, 4), onnx.TensorProto.UINT8)  # packed: ceil(7 / 2)
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    (node,) = model.graph.node
    attrs = {a.name: a.i for a in node.attribute}
    assert (node.op_type, node.domain) == ("MatMulNBits", "com.microsoft")
    assert attrs == {"K": K, "N": N, "bits": 4, "block_size": 32, "accuracy_level": level}
    assert reports == [(NAME, N * K * 4)]


def test_row_range_of_a_packed_weight(tmp_path):
    w = write_checkpoint(tmp_path)
    recipe = {"bits": 4, "block_size": 32, "symmetric": False}
    model, reports = export_linear(tmp_path, rows=(16, 48), **recipe)
    x = inputs()
    expected = x @ dequantize(reference_blocks(w[16:48], recipe)).T
    np.testing.assert_allclose(run(tmp_path, x), expected, rtol=0, atol=1e-4)
    assert model.graph.node[0].name.endswith(".q/MatMulNBits")
    assert reports == [(NAME, 32 * K * 4)]


@pytest.mark.parametrize("recipe", [RECIPES[0], HQQ, HQQ_FLOAT], ids=["sym", "hqq", "hqq-float"])
def test_float16_io(tmp_path, recipe):
    """fp16 targets: scales (and float HQQ zero points) in fp16, quantized against the rounded scales."""
    w = write_checkpoint(tmp_path, np.float16)
    model, _ = export_linear(tmp_path, io_dtype="float16", **recipe)
    kinds = {t.name.rsplit(".", 1)[-1]: t.data_type for t in model.graph.initializer}
    assert kinds["scales"] == onnx.TensorProto.FLOAT16
    if "zero_points" in kinds:  # packed integer codes, or float ones in the scales' dtype
        float_zero = recipe.get("zero_points") == "float"
        assert kinds["zero_points"] == (onnx.TensorProto.FLOAT16 if float_zero else onnx.TensorProto.UINT8)
    x = inputs(np.float16)
    expected = x.astype(np.float32) @ dequantize(reference_blocks(w, recipe, "float16")).T
    got = run(tmp_path, x)
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 1e-3


def fake_quantized_checkpoint(weights: Path, folder: Path, tied: bool, recipe: QuantRecipe) -> Path:
    """The checkpoint with every Linear weight replaced by dequantize(quantize(W)) in the format the export's
    recipe gives it (the body's, a per-tensor override's, lm_head's), as fp32.

    Quantization is per row, so it does not matter that a split Q/K/V quantizes row ranges separately.
    A tied head is quantized while the embedding table is not: it becomes an explicit lm_head.weight.
    """
    def fake_of(w: np.ndarray, linear: LinearRecipe | None) -> np.ndarray:
        assert linear is not None, "this test quantizes every Linear"
        return dequantize(reference_blocks(w, asdict(linear)))

    tensors = load_file(str(weights))
    fake = {name: fake_of(w, recipe.lm_head if name == "lm_head.weight" else recipe.for_tensor(name))
            if w.ndim == 2 and name != EMBED else w for name, w in tensors.items()}
    if tied:
        fake["lm_head.weight"] = fake_of(tensors[EMBED], recipe.lm_head)
    folder.mkdir()
    save_file(fake, str(folder / "model.safetensors"))
    return folder / "model.safetensors"


def decoder_recipe(spec: Phi3Spec, target: Target, algo: str = "rtn") -> QuantRecipe:
    # Float embeddings: this test isolates the Linears (the shared quantized table is tests/exporter/test_heads.py).
    return decide_recipe(target, QuantOptions(algo=algo, embeddings="float"), model_shape(spec))


def decoder_logits(spec: Phi3Spec, target: Target, files: tuple[Path, ...], folder: Path,
                   recipe: QuantRecipe | None = None):
    folder.mkdir()
    export_graph(spec, target, files, folder, recipe=recipe or decoder_recipe(spec, target))
    got = ort_incremental(folder / "model.onnx", [3, 17, 42, 7, 99, 5], 0, spec.num_layers, spec.num_kv_heads,
                          spec.head_dim)
    return got.prompt_logits


@pytest.mark.parametrize(("variant", "algo", "packed_qkv"),
                         [("partial_tied", "rtn", True), ("gqa", "rtn", False), ("gqa", "hqq", True)])
def test_decoder_equals_fp32_export_of_fake_quantized_weights(tiny_checkpoint, tmp_path, variant, algo, packed_qkv):
    """Whole decoder at accuracy_level 0: the int4 graph computes what the fp32 graph computes on
    dequantize(quantize(W)) for every Linear (q/k/v row ranges, the target's per-tensor formats such as
    cpu-int4's int8 lm_head and gate_up block, and a tied lm_head included)."""
    checkpoint = tiny_checkpoint(variant)
    spec = load_spec(checkpoint / "config.json")
    (weights,) = sorted(checkpoint.glob("*.safetensors"))
    int4 = replace(TARGETS["cpu-int4"], accuracy_level=0, packed_qkv=packed_qkv)
    recipe = decoder_recipe(spec, int4, algo)
    assert recipe.body is not None and recipe.body.bits == 4 and recipe.body.algo == algo
    fake = fake_quantized_checkpoint(weights, tmp_path / "fake", spec.tie_word_embeddings, recipe)
    got = decoder_logits(spec, int4, (weights,), tmp_path / "int4", recipe)
    expected = decoder_logits(replace(spec, tie_word_embeddings=False), replace(TARGETS["cpu-fp32"],
                              packed_qkv=packed_qkv), (fake,), tmp_path / "fp32")
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)

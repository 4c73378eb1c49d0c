"""AWQ's clip search through the exporter: the graph holds exactly the blocks the calibration pass chose (and
streamed), at every tensor's own format (int4 body, gate_up's block 64, mixed precision's int8, fp16 scales),
and runs with the logits of the reference model that reads those dequantized blocks and the folded norms."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest

from fixtures.reference import ort_incremental
from phi3_edge.exporter.build import WEIGHT_DTYPES, export_graph, model_shape
from phi3_edge.exporter.checkpoint import resolve_checkpoint
from phi3_edge.exporter.config import load_spec
from phi3_edge.exporter.weights import WeightStore
from phi3_edge.quantize.blockwise import _storable, dequantize, pack_weights, quantize_rtn
from phi3_edge.quantize.calibration import Calibration
from phi3_edge.quantize.recipe import QuantOptions, decide_recipe
from phi3_edge.reference import calibrate as cal
from phi3_edge.reference import streamed
from phi3_edge.reference.checkpoint_side import CheckpointSide
from phi3_edge.reference.export_calibration import calibrator
from phi3_edge.targets.table import TARGETS

IDS = [int(t) for t in np.random.default_rng(0).integers(0, 300, 24)]
FP32_ATOL = 1e-4  # the exporter's fp32 parity bar: the weights are the reference's, bit for bit
FP16_ATOL = TARGETS["cuda-fp16"].logits_atol  # fp16 activations' error budget


def calibrated_export(checkpoint_dir: Path, target_name: str, out: Path, **options: object) -> tuple[Calibration,
                                                                                                      str]:
    """The product's AWQ pass and export of the body only (float head and table: the reference's own), at
    accuracy level 0 (cpu-int4's level 4 quantizes the activations to int8 inside MatMulNBits: not a weight
    check) and with gate_up's block-64 override on every target (the Grams must follow it)."""
    target = dataclasses.replace(TARGETS[target_name], accuracy_level=0, block_overrides=(("mlp.gate_up_proj", 64),))
    checkpoint = resolve_checkpoint(str(checkpoint_dir))
    spec = load_spec(checkpoint.config_path)
    quant = QuantOptions(algo="awq", lm_head="float", embeddings="float", **options)  # type: ignore[arg-type]
    recipe = decide_recipe(target, quant, model_shape(spec, checkpoint.weight_files))
    dtype = WEIGHT_DTYPES.get(target.weight_format, target.io_dtype)
    calibration = calibrator(None, False, dtype)(spec, checkpoint, recipe)
    export_graph(spec, target, checkpoint.weight_files, out, recipe=calibration.recipe,
                 calibrated=calibration.blocks, scales=calibration.scales)
    return calibration, dtype


@pytest.mark.parametrize(("target_name", "atol"), [("cpu-int4", FP32_ATOL), ("cuda-int4", FP16_ATOL)])
def test_exported_awq_graph_is_the_calibrated_reference(tiny_checkpoint, tmp_path: Path, target_name: str,
                                                        atol: float) -> None:
    folder = tiny_checkpoint("gqa")
    checkpoint = resolve_checkpoint(str(folder))
    spec = load_spec(checkpoint.config_path)
    calibration, dtype = calibrated_export(folder, target_name, tmp_path)
    blocks, recipe, scales = calibration.blocks, calibration.recipe, calibration.scales
    assert blocks is not None and scales is not None and blocks.algo == "awq"
    assert set(blocks.names()) == {n for layer in range(spec.num_layers) for n in cal.linear_names(layer)}
    gate_up = recipe.for_tensor("model.layers.0.mlp.gate_up_proj.weight")
    assert gate_up is not None and gate_up.block_size == 64  # the target's override: Grams built at 64
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "model.onnx"),
                                                                               load_external_data=True).graph.initializer}
    for name in blocks.names():
        held = blocks.whole(name)
        chosen = recipe.for_tensor(name)
        assert chosen is not None and held.block_size == chosen.block_size and held.bits == chosen.bits
        np.testing.assert_array_equal(held.scales, _storable(held.scales, dtype))  # chosen among storable scales
        layer, stem = name.split(".")[2], name.split(".")[-2]
        packed = [v for k, v in initializers.items() if f"layers.{layer}." in k and stem in k and k.endswith("qweight")]
        assert len(packed) == 1, [k for k in initializers if stem in k]
        np.testing.assert_array_equal(packed[0], pack_weights(held.q, held.bits))  # not re-rounded

    folds = scales.folds()
    done = {name: dequantize(blocks.whole(name)) for name in blocks.names()}
    with CheckpointSide(spec, checkpoint.weight_files) as side:
        side.weight_map = lambda name, rows: done[name] if name in done else (
            folds[name].apply(rows, 0) if name in folds else rows)
        expected = streamed.logits(side, [IDS], 100)[0]  # (S, V)
    got = ort_incremental(tmp_path / "model.onnx", IDS, 0, spec.num_layers, spec.num_kv_heads, spec.head_dim)
    np.testing.assert_allclose(got.prompt_logits.astype(np.float32), expected, rtol=0, atol=atol)

    # Not vacuous: the search moved some scales off RTN's for the folded weights it was given.
    name = "model.layers.1.mlp.down_proj.weight"
    with WeightStore(checkpoint.weight_files) as store:
        info = store.info(name, (spec.hidden_size, spec.intermediate_size))
        folded = folds[name].apply(store.read_rows(info, 0, spec.hidden_size), 0)
    rtn = quantize_rtn(folded, 4, 32, True, dtype)
    assert not np.array_equal(blocks.whole(name).scales, rtn.scales)
    blocks.close()


def test_mixed_precision_int8_tensors_are_clip_searched_and_recorded_as_awq(tiny_checkpoint, tmp_path: Path) -> None:
    calibration, _ = calibrated_export(tiny_checkpoint("gqa"), "cpu-int4", tmp_path, mixed_precision=True,
                                       size_budget=1.3)
    blocks, recipe = calibration.blocks, calibration.recipe
    assert blocks is not None
    wide = [(name, r) for name, r in recipe.overrides if r.bits == 8]
    assert wide, "the budget widened nothing: the check below would be vacuous"
    for name, chosen in wide:
        assert chosen.algo == "awq" and chosen.symmetric  # folded and clipped like the body, recorded so
        held = blocks.whole(name)
        assert held.bits == 8 and held.block_size == chosen.block_size and held.q.max() > 15
    assert recipe.name == "awq+int8-mixed"
    blocks.close()

"""GPTQ on the fp16 targets (cuda-int4, dml-int4): float16 scales (MatMulNBits' T is the activations' float16),
and the graph runs on the CPU EP with the reference's logits, like the RTN exports of those targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from fixtures.reference import ort_incremental
from phi3_edge.exporter.build import export_graph
from phi3_edge.exporter.checkpoint import resolve_checkpoint
from phi3_edge.exporter.config import load_spec
from phi3_edge.quantize.blockwise import QuantizedBlocks, dequantize, pack_weights
from phi3_edge.quantize.calibrated import CalibratedBlocks
from phi3_edge.quantize.recipe import LinearRecipe, QuantRecipe
from phi3_edge.reference import calibrate as cal
from phi3_edge.reference import streamed
from phi3_edge.reference.checkpoint_side import CheckpointSide
from phi3_edge.targets.table import TARGETS

IDS = [int(t) for t in np.random.default_rng(0).integers(0, 300, 24)]
FP16_ATOL = TARGETS["cuda-fp16"].logits_atol  # fp16 activations' error budget: the weights are the reference's


def fp16_scales(blocks: QuantizedBlocks) -> QuantizedBlocks:
    """The blocks as the fp16 graph stores them."""
    return QuantizedBlocks(blocks.q, blocks.scales.astype(np.float16).astype(np.float32), blocks.zero_points,
                           blocks.bits, blocks.k)


@pytest.mark.parametrize("target_name", ["cuda-int4", "dml-int4"])
def test_gptq_fp16_target_runs_on_cpu_with_float16_scales(tiny_checkpoint, tmp_path: Path, target_name: str) -> None:
    target = TARGETS[target_name]
    assert target.io_dtype == "float16" and target.bits == 4 and target.block_size is not None
    checkpoint = resolve_checkpoint(str(tiny_checkpoint("gqa")))
    spec = load_spec(checkpoint.config_path)
    with CalibratedBlocks("gptq") as calibrated, CheckpointSide(spec, checkpoint.weight_files) as side:
        cal.gptq_calibrate(side, [IDS], lambda name: (4, target.block_size), calibrated.add)
        done = {name: dequantize(fp16_scales(b)) for name, b in calibrated.blocks.items()}
        side.weight_map = lambda name, rows: done.get(name, rows)
        expected = streamed.logits(side, [IDS], 100)[0]  # (S, V)
        recipe = QuantRecipe(LinearRecipe(4, target.block_size, target.accuracy_level or 0, True, "gptq"))
        export_graph(spec, target, checkpoint.weight_files, tmp_path, recipe=recipe, calibrated=calibrated)
        down = calibrated.blocks["model.layers.0.mlp.down_proj.weight"]

    model = onnx.load(str(tmp_path / "model.onnx"))
    scales = {t.name: t for t in model.graph.initializer if t.name.endswith(".scales")}
    assert scales and all(t.data_type == onnx.TensorProto.FLOAT16 for t in scales.values())
    packed = next(onnx.numpy_helper.to_array(t) for t in model.graph.initializer
                  if "layers.0" in t.name and "down_proj" in t.name and t.name.endswith("qweight"))
    np.testing.assert_array_equal(packed, pack_weights(down.q, 4))  # the calibrated codes, not re-rounded
    got = ort_incremental(tmp_path / "model.onnx", IDS, 0, spec.num_layers, spec.num_kv_heads, spec.head_dim)
    logits = got.prompt_logits.astype(np.float32)
    np.testing.assert_allclose(logits, expected, rtol=0, atol=FP16_ATOL)

"""GPTQ blocks through the exporter: MatMulNBits holds exactly the calibrated codes, logits match the reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from phi3_edge import api
from phi3_edge.errors import Phi3EdgeError
from phi3_edge.exporter.build import export_graph
from phi3_edge.exporter.checkpoint import resolve_checkpoint
from phi3_edge.exporter.config import load_spec
from phi3_edge.quantize.blockwise import dequantize, pack_weights
from phi3_edge.quantize.calibrated import CalibratedBlocks
from phi3_edge.quantize.recipe import LinearRecipe, QuantRecipe
from phi3_edge.reference import calibrate as cal
from phi3_edge.reference import streamed
from phi3_edge.reference.checkpoint_side import CheckpointSide
from phi3_edge.targets.table import TARGETS

IDS = [[int(t) for t in np.random.default_rng(0).integers(0, 300, 24)]]
ATOL = 1e-4  # the exporter's parity bar; accuracy_level 0 (float compute) so the weights are the only change


def graph_logits(folder: Path, ids: list[int]) -> np.ndarray:
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    pasts = [i for i in session.get_inputs() if i.name.startswith("past_key_values")]
    feeds = {"input_ids": np.asarray([ids], dtype=np.int64), "attention_mask": np.ones((1, len(ids)), np.int64)}
    feeds.update({p.name: np.zeros((1, p.shape[1], 0, p.shape[3]), np.float32) for p in pasts})  # (B, Hkv, 0, D)
    logits: np.ndarray = session.run(["logits"], feeds)[0][0]  # (S, V)
    return logits


def test_gptq_export_holds_the_calibrated_codes(tiny_checkpoint, tmp_path) -> None:
    checkpoint = resolve_checkpoint(str(tiny_checkpoint("gqa")))
    spec = load_spec(checkpoint.config_path)
    calibrated = CalibratedBlocks("gptq")
    with CheckpointSide(spec, checkpoint.weight_files) as side:
        cal.gptq_calibrate(side, IDS, lambda name: (4, 32), calibrated.add)
        done = {name: dequantize(b) for name, b in calibrated.blocks.items()}
        side.weight_map = lambda name, rows: done.get(name, rows)
        expected = streamed.logits(side, IDS, 100)[0]
    recipe = QuantRecipe(LinearRecipe(4, 32, 0, True, "gptq"))  # float head and table: only the body changes
    export_graph(spec, TARGETS["cpu-int4"], checkpoint.weight_files, tmp_path, recipe=recipe, calibrated=calibrated)

    np.testing.assert_allclose(graph_logits(tmp_path, IDS[0]), expected, rtol=0, atol=ATOL)
    model = onnx.load(str(tmp_path / "model.onnx"))  # external data next to it, loaded by path
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    name = "model.layers.0.mlp.down_proj.weight"
    packed = next(v for k, v in weights.items() if "layers.0" in k and "down_proj" in k and k.endswith("qweight"))
    np.testing.assert_array_equal(packed, pack_weights(calibrated.blocks[name].q, 4))
    assert not any(k.endswith("zero_points") for k in weights)  # symmetric: no extra bytes


@pytest.mark.parametrize("options, asked", [({"quant_algo": "gptq"}, "--quant-algo gptq"),
                                            ({"mixed_precision": True, "quant_algo": "rtn"}, "--mixed-precision"),
                                            ({}, "cpu-int4's default algorithm awq")])
def test_pipeline_without_a_calibrator_names_what_needs_one(tiny_checkpoint, tmp_path, options: dict[str, object],
                                                          asked: str) -> None:
    """export_artifact called directly (not through api) has no calibration pass to run: one line naming the
    option that needs it, nothing written."""
    from phi3_edge.exporter.pipeline import export_artifact
    from phi3_edge.targets.table import get_target

    out = tmp_path / "out"
    request = api.export_request(str(tiny_checkpoint("gqa")), "cpu-int4", out, fidelity=False, **options)
    with pytest.raises(Phi3EdgeError, match=f"^{asked} needs a calibration pass") as caught:
        export_artifact(request, get_target("cpu-int4"), lambda *_: {}, calibrate=None)
    assert "\n" not in str(caught.value) and not out.exists()

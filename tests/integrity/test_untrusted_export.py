"""NaN/Inf weights are refused at export with one line naming the tensor, and manifest.json is never written
with NaN (not valid JSON: `kl: NaN` made every later read of the artifact fail)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from phi3_edge.api import export
from phi3_edge.errors import Phi3EdgeError
from phi3_edge.exporter.tensor_writer import TensorWriter
from phi3_edge.manifest import MANIFEST_NAME, write_manifest


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_the_writer_refuses_non_finite_weights(tmp_path: Path, bad: float) -> None:
    chunk = np.ones((2, 3), dtype=np.float32)
    chunk[1, 2] = bad
    with TensorWriter(tmp_path / "model.onnx.data") as writer:
        with pytest.raises(Phi3EdgeError, match="weight w.0 holds NaN or Inf"):
            writer.write("w.0", (2, 3), "float32", [chunk])


def test_a_nan_measurement_never_reaches_manifest_json(tmp_path: Path) -> None:
    with pytest.raises(Phi3EdgeError, match="NaN or infinite") as caught:
        write_manifest(tmp_path, {"format": "x", "fidelity": {"kl": math.nan}})
    assert "\n" not in str(caught.value)
    assert not (tmp_path / MANIFEST_NAME).exists()


def test_export_of_a_nan_checkpoint_is_one_line_and_leaves_nothing(tiny_checkpoint, tmp_path: Path) -> None:
    checkpoint = Path(shutil.copytree(tiny_checkpoint("gqa"), tmp_path / "ckpt"))
    weights = next(checkpoint.glob("*.safetensors"))
    tensors = load_file(weights)
    name = next(key for key in sorted(tensors) if key.endswith("mlp.down_proj.weight"))
    tensors[name] = tensors[name].copy()
    tensors[name].flat[0] = np.nan
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(Phi3EdgeError, match="NaN or Inf") as caught:
        export(str(checkpoint), target="cpu-fp32", output=tmp_path / "out", progress=False)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()
    assert json.dumps([p.name for p in tmp_path.iterdir()]) == json.dumps(["ckpt"])

"""The Optimum / Transformers.js layout: the file names Transformers.js asks for, a graph copy whose external
data names its own (hard-linked) weights file, and the same logits from both graphs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from phi3_edge import api
from phi3_edge.errors import ArtifactError
from phi3_edge.exporter import optimum_layout
from phi3_edge.exporter.optimum_layout import transformers_js_dtype, write_optimum_layout


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("optimum")
    checkpoint = tiny_checkpoint("gqa")

    def get(target: str) -> tuple[Path, dict]:  # type: ignore[type-arg]
        folder = root / target
        if not folder.exists():
            api.export(str(checkpoint), target, folder, progress=False, fidelity=False)
        return folder, json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))

    return get


def _logits(model: Path) -> np.ndarray:  # type: ignore[type-arg]
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    feeds: dict[str, np.ndarray] = {}  # type: ignore[type-arg]
    for arg in session.get_inputs():
        if arg.name == "input_ids":
            feeds[arg.name] = np.array([[1, 5, 9, 3]], dtype=np.int64)
        elif arg.name == "attention_mask":
            feeds[arg.name] = np.ones((1, 4), dtype=np.int64)
        else:  # past_key_values.*: (B, kv_heads, 0, head_dim)
            dtype = np.float16 if arg.type == "tensor(float16)" else np.float32
            feeds[arg.name] = np.zeros((1, arg.shape[1], 0, arg.shape[3]), dtype=dtype)
    return session.run(["logits"], feeds)[0]


def test_int4_layout_files_names_and_logits(exported) -> None:  # type: ignore[no-untyped-def]
    folder, config = exported("cpu-int4")
    layout = write_optimum_layout(folder, config, weight_format="int4", io_dtype="float32")
    assert (layout.dtype, layout.model, layout.data) == ("q4", "onnx/model_q4.onnx", "onnx/model_q4.onnx_data")
    assert sorted(layout.files()) == ["config.json", "generation_config.json", "onnx/model_q4.onnx",
                                      "onnx/model_q4.onnx_data"]
    assert all((folder / name).is_file() for name in layout.files())
    assert (folder / "model.onnx").is_file() and (folder / "genai_config.json").is_file()  # ours, untouched
    written = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    assert written["model_type"] == "phi3" and written["use_cache"] is True
    assert written["transformers.js_config"] == {"dtype": "q4", "use_external_data_format": {"model_q4.onnx": 1}}
    assert json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))  # kept or made, not empty
    # The copied graph names its own weights file; the weights are the same file (a hard link), not a copy.
    graph = onnx.load(str(folder / layout.model), load_external_data=False)
    locations = {e.value for t in graph.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"model_q4.onnx_data"}
    assert layout.linked and os.path.samefile(folder / "model.onnx.data", folder / layout.data)
    np.testing.assert_array_equal(_logits(folder / layout.model), _logits(folder / "model.onnx"))


def test_fp16_layout_names_the_kv_cache_dtype(exported) -> None:  # type: ignore[no-untyped-def]
    folder, config = exported("cuda-fp16")
    (folder / "generation_config.json").unlink(missing_ok=True)
    layout = write_optimum_layout(folder, config, weight_format="fp16", io_dtype="float16")
    assert layout.model == "onnx/model_fp16.onnx"
    js = json.loads((folder / "config.json").read_text(encoding="utf-8"))["transformers.js_config"]
    assert js == {"dtype": "fp16", "use_external_data_format": {"model_fp16.onnx": 1},
                  "kv_cache_dtype": {"fp16": "float16"}}
    made = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
    assert made == {key: config[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id") if key in config}


def test_copy_when_links_are_impossible(exported, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    folder, config = exported("cpu-fp32")

    def no_links(source: object, destination: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(optimum_layout.os, "link", no_links)
    layout = write_optimum_layout(folder, config, weight_format="fp32", io_dtype="float32")
    assert layout.model == "onnx/model.onnx" and not layout.linked
    assert not os.path.samefile(folder / "model.onnx.data", folder / layout.data)
    assert (folder / layout.data).read_bytes() == (folder / "model.onnx.data").read_bytes()
    np.testing.assert_array_equal(_logits(folder / layout.model), _logits(folder / "model.onnx"))


def test_dtype_names_and_unknown_combinations() -> None:
    assert [transformers_js_dtype(w, i) for w, i in (("fp32", "float32"), ("int8", "float32"),
                                                      ("int4", "float16"))] == ["fp32", "int8", "q4f16"]
    with pytest.raises(ArtifactError, match="no Transformers.js dtype for int8 weights with float16 activations"):
        transformers_js_dtype("int8", "float16")


def test_folder_without_weights_file(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="has no external weights file"):
        write_optimum_layout(tmp_path, {"model_type": "phi3"}, weight_format="fp32", io_dtype="float32")

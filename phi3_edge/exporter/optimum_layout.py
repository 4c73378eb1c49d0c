"""The Optimum / Transformers.js layout, added beside an artifact's own files so one folder serves every client.

    folder/
      model.onnx, model.onnx.data, genai_config.json, tokenizer*.json, manifest.json   (unchanged: ours, genai)
      config.json              the checkpoint's config + "transformers.js_config" {dtype, external data}
      generation_config.json   the checkpoint's (or one made from config.json's token ids)
      onnx/model_q4.onnx       a copy of the graph whose external-data `location` says model_q4.onnx_data
      onnx/model_q4.onnx_data  the weights: a hard link to ../model.onnx.data (a copy where links are impossible)

Transformers.js (4.x, src/utils/dtypes.js and model-loader.js) loads `onnx/model{suffix}.onnx` for a dtype
(fp32 "", fp16 "_fp16", int8 "_int8", q4 "_q4", q4f16 "_q4f16") and its external data as
`model{suffix}.onnx_data` when config.json's transformers.js_config.use_external_data_format names the file.
The graph names its external data file inside every initializer, so the copy in onnx/ must name the new file:
onnxruntime resolves `location` relative to the graph's folder and refuses paths that leave it ("../").
Optimum's ORTModelForCausalLM reads config.json and the root model.onnx.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from phi3_edge.artifact_contract import DATA_FILE, MODEL_FILE
from phi3_edge.errors import ArtifactError

OPTIMUM_LAYOUT = "optimum"  # ExportRequest.layout's value (`--layout optimum`)
LAYOUTS = (OPTIMUM_LAYOUT,)
ONNX_DIR = "onnx"
CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
TRANSFORMERS_JS_KEY = "transformers.js_config"
# (target weight format, io dtype) -> Transformers.js dtype; and dtype -> file-name suffix (its dtypes.js).
TRANSFORMERS_JS_DTYPES = {("fp32", "float32"): "fp32", ("fp16", "float16"): "fp16", ("int4", "float32"): "q4",
                          ("int4", "float16"): "q4f16", ("int8", "float32"): "int8"}
DTYPE_SUFFIXES = {"fp32": "", "fp16": "_fp16", "int8": "_int8", "q4": "_q4", "q4f16": "_q4f16"}
_GENERATION_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


@dataclass(frozen=True)
class OptimumLayout:
    dtype: str  # the Transformers.js dtype ("q4", ...)
    model: str  # "onnx/model_q4.onnx"
    data: str  # "onnx/model_q4.onnx_data"
    linked: bool  # the data is a hard link (False: a copy)

    def files(self) -> tuple[str, ...]:
        return (CONFIG_FILE, GENERATION_CONFIG_FILE, self.model, self.data)


def transformers_js_dtype(weight_format: str, io_dtype: str) -> str:
    try:
        return TRANSFORMERS_JS_DTYPES[(weight_format, io_dtype)]
    except KeyError:
        raise ArtifactError(f"no Transformers.js dtype for {weight_format} weights with {io_dtype} activations "
                            f"(known: {', '.join(f'{w}/{i}' for w, i in TRANSFORMERS_JS_DTYPES)})") from None


def write_optimum_layout(folder: Path, config: dict[str, Any], *, weight_format: str, io_dtype: str,
                         generation_config: dict[str, Any] | None = None) -> OptimumLayout:
    """Add the layout's files to an artifact folder (a staging folder: the manifest, written after, hashes them).

    `config` is the checkpoint's config.json; `generation_config` its generation_config.json (None: kept if the
    folder already has one, else made from config's token ids)."""
    folder = Path(folder)
    dtype = transformers_js_dtype(weight_format, io_dtype)
    name = f"model{DTYPE_SUFFIXES[dtype]}.onnx"
    data_name = f"{name}_data"
    (folder / ONNX_DIR).mkdir(exist_ok=True)
    linked = _link_or_copy(folder / DATA_FILE, folder / ONNX_DIR / data_name)
    _write_relocated_graph(folder / MODEL_FILE, folder / ONNX_DIR / name, data_name)
    _write_json(folder / CONFIG_FILE, _with_transformers_js(config, dtype, name, io_dtype))
    if generation_config is not None or not (folder / GENERATION_CONFIG_FILE).is_file():
        made = generation_config or {key: config[key] for key in _GENERATION_KEYS if key in config}
        _write_json(folder / GENERATION_CONFIG_FILE, made)
    return OptimumLayout(dtype, f"{ONNX_DIR}/{name}", f"{ONNX_DIR}/{data_name}", linked)


def _with_transformers_js(config: dict[str, Any], dtype: str, name: str, io_dtype: str) -> dict[str, Any]:
    js: dict[str, Any] = {"dtype": dtype, "use_external_data_format": {name: 1}}
    if io_dtype != "float32":  # Transformers.js makes float32 empty past key/values unless told otherwise
        js["kv_cache_dtype"] = {dtype: io_dtype}
    return {**config, "use_cache": True, TRANSFORMERS_JS_KEY: js}


def _link_or_copy(source: Path, destination: Path) -> bool:
    """A hard link costs no disk; a folder on a filesystem without links (or across devices) gets a copy."""
    if not source.is_file():
        raise ArtifactError("has no external weights file to lay out", source)
    destination.unlink(missing_ok=True)
    try:
        os.link(source, destination)
        return True
    except OSError:
        shutil.copyfile(source, destination)
        return False


def _write_relocated_graph(source: Path, destination: Path, data_name: str) -> None:
    """Copy the graph (weights stay external, never loaded) with every external-data location renamed."""
    model = onnx.load(str(source), load_external_data=False)
    locations = set()
    for tensor in _all_tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        for entry in tensor.external_data:
            if entry.key == "location":
                locations.add(entry.value)
                entry.value = data_name
    if locations - {DATA_FILE}:
        raise ArtifactError(f"external data in {sorted(locations)}, expected only {DATA_FILE}", source)
    onnx.save_model(model, str(destination))


def _all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Initializers and tensor attributes, in subgraphs (If branches) too."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _all_tensors(attribute.g)
            for body in attribute.graphs:
                yield from _all_tensors(body)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")

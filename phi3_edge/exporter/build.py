"""Checkpoint weights + spec + target -> model.onnx and model.onnx.data in a folder."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx

from phi3_edge.artifact_contract import DATA_FILE, MODEL_FILE
from phi3_edge.errors import CheckpointError
from phi3_edge.exporter.blocks.recipe_linear import RecipeLinear
from phi3_edge.exporter.config import Phi3Spec
from phi3_edge.exporter.decoder import DecoderPlan, build_decoder
from phi3_edge.exporter.gguf.carry import carry_formats
from phi3_edge.exporter.graph import GraphBuilder
from phi3_edge.exporter.heads import make_heads
from phi3_edge.exporter.ort_format import write_ort_format
from phi3_edge.exporter.scaled_store import ScaledStore
from phi3_edge.exporter.tensor_writer import TensorWriter
from phi3_edge.exporter.weight_source import WeightSource
from phi3_edge.exporter.weights import WeightStore
from phi3_edge.quantize.awq import AwqScales
from phi3_edge.quantize.calibrated import CalibratedBlocks
from phi3_edge.quantize.recipe import ModelShape, QuantOptions, QuantRecipe, decide_recipe
from phi3_edge.targets.table import Target

WEIGHT_DTYPES = {"fp32": "float32", "fp16": "float16"}


@dataclass(frozen=True)
class GraphStats:
    nodes: int
    data_bytes: int
    seconds: float
    fused_rotary: bool
    heads: dict[str, str]  # what the embedding and lm_head became (float, int4 MatMulNBits, shared table)
    ort_format: str | None  # mobile targets: what happened to model.ort (written, or skipped and why)


def model_shape(spec: Phi3Spec, weight_files: tuple[Path, ...] = ()) -> ModelShape:
    """What the quantization recipe needs to know about the model (and its GGUF files' carryable blocks)."""
    return ModelShape(spec.num_layers, spec.hidden_size, spec.tie_word_embeddings, carry_formats(weight_files),
                      carry_formats(weight_files, head=True))


def export_graph(spec: Phi3Spec, target: Target, weight_files: tuple[Path, ...], folder: Path,
                 *, recipe: QuantRecipe | None = None,
                 on_tensor: Callable[[str, int], None] | None = None,
                 on_layer: Callable[[int], None] | None = None,
                 on_stage: Callable[[str], None] | None = None,
                 calibrated: CalibratedBlocks | None = None, scales: AwqScales | None = None) -> GraphStats:
    """`recipe` defaults to the target's own (decide_recipe with default options); on_stage hears
    "headers" and "weights" (see exporter/artifact.py's STAGES); `calibrated`: GPTQ blocks by tensor name;
    `scales`: AWQ's per-channel scales, folded into the weights as they are read (exporter/scaled_store.py)."""
    if recipe is None:
        recipe = decide_recipe(target, QuantOptions(), model_shape(spec, weight_files))
    if scales is None and recipe.body is not None and recipe.body.algo == "awq":  # else plain RTN labelled AWQ
        raise ValueError("an AWQ recipe needs its scales (the export's calibration pass)")
    started = time.perf_counter()
    plan = DecoderPlan(io_dtype=target.io_dtype, fused_rotary=target.fused_rotary, packed_qkv=target.packed_qkv,
                       allow_if_node=target.allow_if_node)
    float_dtype = WEIGHT_DTYPES.get(target.weight_format, target.io_dtype)
    opened = WeightStore(weight_files, on_stage) if scales is None else ScaledStore(weight_files, scales, on_stage)
    with opened as store, TensorWriter(folder / DATA_FILE, on_stage) as writer:
        source = WeightSource(store, writer, float_dtype=float_dtype, on_tensor=on_tensor)
        g = GraphBuilder("phi3_decoder")
        heads = make_heads(g, spec, source, recipe)
        linear = RecipeLinear(source, recipe, calibrated)
        model = build_decoder(g, spec, plan, source, linear, heads, on_layer or (lambda layer: None))
        _check_all_used(store, spec, weight_files)
        data_bytes = writer.bytes_written
        carried = store.carry_log.describe()  # GGUF sources: blocks carried as they are vs re-quantized
    description = {**heads.description, **({"gguf_blocks": carried} if carried else {})}
    onnx.save_model(model, folder / MODEL_FILE)
    ort_format = write_ort_format(folder, MODEL_FILE, DATA_FILE) if target.ort_format else None
    return GraphStats(len(model.graph.node), data_bytes, time.perf_counter() - started,
                      plan.rotary_is_fused(spec), description, ort_format)


def _check_all_used(store: WeightStore, spec: Phi3Spec, weight_files: tuple[Path, ...]) -> None:
    """Every checkpoint tensor must be consumed: a leftover means a layout we do not understand."""
    ignorable = {"lm_head.weight"} if spec.tie_word_embeddings else set()  # some tied checkpoints still ship it
    leftover = [name for name in store.unused() if name not in ignorable and not name.endswith("rotary_emb.inv_freq")]
    if leftover:
        shown = ", ".join(leftover[:3]) + (f" and {len(leftover) - 3} more" if len(leftover) > 3 else "")
        raise CheckpointError(f"unexpected tensors not used by the Phi-3 graph: {shown}", weight_files[0].parent)

"""One export, start to finish: request -> checked options -> staged folder -> graph, companions, gate, manifest.

    ExportRequest ─► resolve_algo (the parameter count) ─► decide_recipe ─► [gptq/awq: calibrate]
        ─► staged_artifact(output) ─┬─► export_graph (+ blocks)
                                    ├─► tokenizer, genai_config
                                    ├─► accuracy gate
                                    ├─► Optimum layout
                                    └─► manifest.json ─► rename
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from phi3_edge import io_spec
from phi3_edge.artifact_contract import MODEL_FILE
from phi3_edge.errors import Phi3EdgeError
from phi3_edge.exporter.app_files import check_mobile_files, keep_only
from phi3_edge.exporter.artifact import StageCallback, staged_artifact
from phi3_edge.exporter.build import GraphStats, export_graph, model_shape
from phi3_edge.exporter.checkpoint import Checkpoint, is_gguf, resolve_checkpoint
from phi3_edge.exporter.config import Phi3Spec, load_spec
from phi3_edge.exporter.genai_config import copy_tokenizer_files, write_genai_config
from phi3_edge.exporter.optimum_layout import OPTIMUM_LAYOUT, write_optimum_layout
from phi3_edge.exporter.progress import export_progress
from phi3_edge.exporter.request import ExportRequest, ExportResult
from phi3_edge.exporter.weights import read_header
from phi3_edge.graph_features import read_graph_features
from phi3_edge.manifest import build_manifest, source_record, write_manifest
from phi3_edge.quantize.calibration import Calibration, uncalibrated
from phi3_edge.quantize.recipe import (
    CALIBRATED_ALGOS,
    QuantOptions,
    QuantRecipe,
    check_options,
    decide_recipe,
    resolve_algo,
)
from phi3_edge.runtime_compat import MANIFEST_KEY as MIN_RUNTIME_KEY
from phi3_edge.runtime_compat import UnknownFeature, min_runtime
from phi3_edge.targets.table import REFERENCE_TARGET, Target

# The accuracy gate, injected by the caller (evaluate/ is the runtime side; the exporter does not import it):
# (candidate folder, checkpoint folder) -> manifest.json's "fidelity" record; raises when the gate fails.
MeasureFidelity = Callable[[Path, Path], dict[str, Any]]
Gate = Callable[[Path], dict[str, Any]]
# The calibration pass of a calibrated recipe (GPTQ, AWQ), injected the same way (it streams the reference
# forward): (spec, checkpoint, recipe) -> Calibration (the recipe as applied, GPTQ blocks / AWQ scales, record).
Calibrate = Callable[[Phi3Spec, Checkpoint, QuantRecipe], Calibration]


def export_artifact(request: ExportRequest, target: Target, measure: MeasureFidelity,
                    on_stage: StageCallback | None = None, calibrate: Calibrate | None = None) -> ExportResult:
    """Bad options fail before the checkpoint is fetched, the recipe before any weight is read.

    on_stage hears each point of exporter/artifact.py's STAGES as the export passes it (tests kill it there)."""
    started = time.perf_counter()
    check_options(target, request.quant)
    check_mobile_files(request.mobile_files, target.ort_format)
    if request.output is None:
        raise Phi3EdgeError("an output folder is required (--output)")
    output = request.output
    checkpoint = resolve_checkpoint(request.model, require_tokenizer=request.require_tokenizer)
    spec = load_spec(checkpoint.config_path)
    quant = _resolved_options(request, target, checkpoint)
    recipe = decide_recipe(target, quant, model_shape(spec, checkpoint.weight_files))
    gate = _accuracy_gate(checkpoint, recipe.quantized, request, measure)
    default_of = target.name if request.quant.algo is None else None  # the algorithm was the target's choice
    calibration = _calibrate(spec, checkpoint, recipe, calibrate, default_of)  # before anything is staged
    recipe = calibration.recipe  # as applied: a calibration pass may change it
    total_bytes = sum(path.stat().st_size for path in checkpoint.weight_files)
    # The checkpoint folder is protected: `--model X -o X --force` must never delete the user's weights.
    # GPTQ's and AWQ's blocks wait in a temp spill folder (quantize/calibrated.py), deleted when this block ends,
    # failed or not.
    with calibration.blocks or nullcontext(), \
            staged_artifact(output, force=request.force, on_stage=on_stage, protected=(checkpoint.root,)) as folder:
        with export_progress(total_bytes, spec.num_layers, request.progress) as hooks:
            stats = export_graph(spec, target, checkpoint.weight_files, folder, recipe=recipe,
                                 calibrated=calibration.blocks, scales=calibration.scales,
                                 on_tensor=hooks.on_tensor, on_layer=hooks.on_layer,
                                 on_stage=on_stage)
        # Inside staged_artifact: a failed accuracy gate deletes the staging folder, nothing reaches `output`.
        measured = _write_companions(folder, checkpoint, spec, target, stats, recipe, gate, request,
                                     calibration.record)
    size = sum(path.stat().st_size for path in output.iterdir() if path.is_file())
    return ExportResult(output, target.name, size, stats.nodes, time.perf_counter() - started, stats.fused_rotary,
                        measured, stats.ort_format)


def _resolved_options(request: ExportRequest, target: Target, checkpoint: Checkpoint) -> QuantOptions:
    """request.quant with its algorithm resolved (resolve_algo: --quant-algo, else the target's default for
    this model's parameter count), announced in one line on stderr for a quantized body."""
    choice = resolve_algo(target, request.quant, parameter_count(checkpoint.weight_files),
                          calibration=request.calibration is not None)
    if target.bits is not None and request.progress is not False:
        print(choice.describe(), file=sys.stderr, flush=True)
    if choice.size_budget is not None:
        return replace(request.quant, algo=choice.algo, mixed_precision=True, size_budget=choice.size_budget)
    return replace(request.quant, algo=choice.algo, int8_down_rule=choice.int8_down_rule)


def parameter_count(weight_files: tuple[Path, ...]) -> int:
    """The checkpoint's parameters, from its tensor shapes (safetensors headers, GGUF tensor infos): no
    weight is read. A tied table counts once, as it is stored."""
    total = 0
    for path in weight_files:
        if is_gguf(path):
            from phi3_edge.exporter.gguf.reader import open_gguf  # the gguf package only for a GGUF source

            shapes = [tensor.shape for tensor in open_gguf(path).tensors.values()]
        else:
            shapes = [info.shape for info in read_header(path)]
        total += sum(math.prod(shape) for shape in shapes)
    return total


def _calibrate(spec: Phi3Spec, checkpoint: Checkpoint, recipe: QuantRecipe, calibrate: Calibrate | None,
               default_of: str | None = None) -> Calibration:
    """The calibration pass a GPTQ or AWQ body needs (the recipe alone for the other algorithms). default_of:
    the target whose default chose the body's algorithm (None: --quant-algo did), for the error's wording."""
    if recipe.body is None or (recipe.body.algo not in CALIBRATED_ALGOS and recipe.size_budget is None):
        return uncalibrated(recipe)  # neither a calibrated body nor measured mixed precision
    if calibrate is None:
        algo = recipe.body.algo
        asked = ("--mixed-precision" if algo not in CALIBRATED_ALGOS  # the int8 choice is a calibration pass too
                 else f"--quant-algo {algo}" if default_of is None else f"{default_of}'s default algorithm {algo}")
        raise Phi3EdgeError(f"{asked} needs a calibration pass; export through phi3_edge.api")
    return calibrate(spec, checkpoint, recipe)


def _accuracy_gate(checkpoint: Checkpoint, quantized: bool, request: ExportRequest,
                   measure: MeasureFidelity) -> Gate | None:
    """The fidelity step of a quantized export, checked before any weight is read (None: not measured)."""
    max_kl = request.max_kl
    if max_kl is not None and (math.isnan(max_kl) or max_kl < 0):
        raise Phi3EdgeError(f"--max-kl must be a non-negative number, got {max_kl}")
    if max_kl is not None and not request.fidelity:
        raise Phi3EdgeError("--max-kl needs the fidelity measurement; drop --no-fidelity")
    if not quantized or not request.fidelity:
        return None  # float weights: nothing quantized to gate (a --max-kl passes trivially)
    if not any(path.name == "tokenizer.json" for path in checkpoint.tokenizer_files):
        if max_kl is not None:
            raise Phi3EdgeError("--max-kl: the accuracy gate tokenizes its prompts with the checkpoint's "
                                "tokenizer.json, which it lacks (or pass --no-fidelity)", checkpoint.root)
        return None

    def gate(candidate: Path) -> dict[str, Any]:
        if request.progress is not False:
            print(f"measuring fidelity against the {REFERENCE_TARGET} reference, streamed from the checkpoint",
                  file=sys.stderr, flush=True)
        return measure(candidate, checkpoint.root)

    return gate


def _write_companions(folder: Path, checkpoint: Checkpoint, spec: Phi3Spec, target: Target, stats: GraphStats,
                      recipe: QuantRecipe, gate: Gate | None, request: ExportRequest,
                      calibration: dict[str, Any] | None) -> dict[str, Any] | None:
    """Tokenizer files, genai_config.json, the accuracy gate (it runs the folder as it stands then), the Optimum
    layout when asked for and, last, manifest.json (it hashes everything else). Returns the fidelity record (None:
    not measured)."""
    copy_tokenizer_files(checkpoint.tokenizer_files, folder)
    write_genai_config(folder, spec, target)
    fidelity = gate(folder) if gate is not None else None
    if request.layout == OPTIMUM_LAYOUT:
        config = json.loads(checkpoint.config_path.read_text(encoding="utf-8"))
        write_optimum_layout(folder, config, weight_format=target.weight_format, io_dtype=target.io_dtype)
    signature = [asdict(s) for s in io_spec.decoder_inputs(spec.num_layers, spec.num_kv_heads, spec.head_dim,
                                                             target.io_dtype)]
    signature += [asdict(s) for s, _ in io_spec.optional_inputs()]
    signature += [asdict(s) for s in io_spec.decoder_outputs(spec.num_layers, spec.num_kv_heads, spec.head_dim,
                                                               spec.vocab_size, target.io_dtype)]
    source = source_record(checkpoint.source, checkpoint.revision, checkpoint.root, checkpoint.all_files())
    needs_runtime = _min_runtime(folder / MODEL_FILE)  # read from model.onnx, which --mobile-files ort removes
    if request.mobile_files is not None:  # after the gate (it measures model.onnx), before the hashes
        keep_only(folder, request.mobile_files)
    record = {"weights": target.weight_format, "io_dtype": target.io_dtype, "fused_rotary": stats.fused_rotary,
              "graph_nodes": stats.nodes, "bits": target.bits, "block_size": target.block_size,
              "accuracy_level": target.accuracy_level, "quant_algo": recipe.name, **stats.heads,
              "quantization": recipe.to_json(), "calibration": calibration, "ort_format": stats.ort_format,
              "mobile_files": request.mobile_files}
    rope_switch = spec.longrope.original_max_position_embeddings if spec.longrope else None
    manifest = build_manifest(source=source, spec_json=spec.to_json(), target=asdict(target), recipe=record,
                              io_signature=signature, artifact_dir=folder, rope_switch_length=rope_switch)
    manifest["fidelity"] = fidelity
    manifest[MIN_RUNTIME_KEY] = needs_runtime
    manifest["layout"] = request.layout
    manifest["command"] = request.command
    write_manifest(folder, manifest)
    return fidelity


def _min_runtime(model: Path) -> dict[str, Any] | None:
    """The oldest onnxruntime / onnxruntime-genai that runs the graph (None: a feature newer than the table)."""
    try:
        return min_runtime(read_graph_features(model)).to_json()
    except UnknownFeature:
        return None

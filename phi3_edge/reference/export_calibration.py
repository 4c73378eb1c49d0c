"""The calibration pass of a `--quant-algo gptq|awq` export: text -> token windows -> Calibration, before the graph.

    calibration text (built-in | --calibration FILE) ─► checkpoint's tokenizer.json ─► windows (calibrate.py)
        ─► over the streamed reference, one layer at a time ─┬─ gptq_calibrate ─► CalibratedBlocks ─► export_graph
                                                              └─ awq_calibrate  ─► AwqScales (norms folded on read)
                                                                  + clip search  ─► CalibratedBlocks (the Linears)
    --mixed-precision (any body algorithm) first: sensitivity_pass.measured_recipe ─► the recipe with the measured
    int8 tensors, which the GPTQ/AWQ passes then follow (Calibration.recipe; manifest "mixed_precision" record)

api injects `calibrator(request)` into the export pipeline (the exporter never imports this layer); the text
is read and checked when the calibrator is made, before the checkpoint is fetched, so a bad file fails in one
line with nothing written.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from tokenizers import Tokenizer

from phi3_edge.exporter.checkpoint import Checkpoint
from phi3_edge.exporter.config import Phi3Spec
from phi3_edge.quantize.awq import AwqScales, Quantizer
from phi3_edge.quantize.blockwise import quantize_rtn
from phi3_edge.quantize.calibrated import CalibratedBlocks
from phi3_edge.quantize.calibration import Calibration
from phi3_edge.quantize.recipe import CALIBRATED_ALGOS, LinearRecipe, QuantRecipe
from phi3_edge.reference import calibrate as cal
from phi3_edge.reference.checkpoint_side import CheckpointSide
from phi3_edge.reference.sensitivity_pass import measured_recipe

BUILTIN = "built-in"  # manifest.json's calibration "source" for the package's own text

Calibrator = Callable[[Phi3Spec, Checkpoint, QuantRecipe], Calibration]


def calibrator(path: Path | None, progress: bool | None, scale_dtype: str = "float32") -> Calibrator:
    """Reads and checks the text now (CalibrationError: one line naming the file); calibrates when called.

    `scale_dtype`: the dtype the export stores MatMulNBits scales in (the target's io dtype): AWQ's clip search
    chooses among scales rounded to it, so the blocks it judged are the blocks the graph holds."""
    text = cal.calibration_text(path)
    source: dict[str, Any] = {"source": BUILTIN} if path is None else {
        "source": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}

    def run(spec: Phi3Spec, checkpoint: Checkpoint, recipe: QuantRecipe) -> Calibration:
        assert recipe.body is not None  # the pipeline calls this for a calibrated body or mixed precision only
        sequences = cal.sequences_of(_tokenizer(checkpoint)(text), _window(spec))
        if not sequences:
            raise cal.CalibrationError(f"{path or BUILTIN}: the calibration text is under 16 tokens")
        algo = recipe.body.algo
        record = {**source, "algo": algo, "tokens": sum(len(s) for s in sequences)}
        with CheckpointSide(spec, checkpoint.weight_files) as side:
            if recipe.size_budget is not None:  # --mixed-precision: measure what to widen, for any body algorithm
                with _progress(progress, spec.num_layers, "int8 sensitivity") as step:
                    recipe, record["mixed_precision"] = measured_recipe(side, sequences, recipe, step)
            if algo not in CALIBRATED_ALGOS:
                return Calibration(recipe, record=record)  # rtn/hqq: the measured recipe is all this pass gives
            with _progress(progress, spec.num_layers, algo) as step:
                if algo == "awq":
                    recipe = awq_recipe(recipe)
                    scales, blocks = _awq(side, sequences, recipe, step, scale_dtype)
                    return Calibration(recipe, blocks=blocks, scales=scales,
                                       record={**record, "awq": {**scales.to_json(), "clip": CLIP_RECORD}})
                return Calibration(recipe, blocks=_gptq_blocks(side, sequences, recipe, step), record=record)

    return run


def _gptq_blocks(side: CheckpointSide, sequences: list[list[int]], recipe: QuantRecipe,
                 step: Callable[[int], None] | None) -> CalibratedBlocks:
    """Every body Linear whose recipe is GPTQ, quantized with error feedback (the others are left to the
    exporter: mixed precision's int8 RTN down projections)."""
    assert recipe.body is not None
    blocks = CalibratedBlocks(recipe.body.algo)

    def plan(name: str) -> tuple[int, int] | None:
        chosen = recipe.for_tensor(name)
        return None if chosen is None or chosen.algo != blocks.algo else (chosen.bits, chosen.block_size)

    cal.gptq_calibrate(side, sequences, plan, blocks.add, on_layer=step)
    return blocks


# manifest.json's calibration.awq.clip: AWQ's second step, as run (quantize/clip.py)
CLIP_RECORD = {"search": "per-block scale shrink, output error on the block Gram", "shrink": [0.6, 1.1, 26]}


def awq_recipe(recipe: QuantRecipe) -> QuantRecipe:
    """The recipe as an AWQ pass applies it: mixed precision's int8 tensors (wide_recipe: "rtn") are folded and
    clip-searched like the body, so they are recorded as AWQ at their own bits and block."""
    overrides = tuple((name, replace(r, algo="awq") if r.algo == "rtn" and r.symmetric else r)
                      for name, r in recipe.overrides)
    return replace(recipe, overrides=overrides)


def _awq(side: CheckpointSide, sequences: list[list[int]], recipe: QuantRecipe,
         step: Callable[[int], None] | None, scale_dtype: str) -> tuple[AwqScales, CalibratedBlocks]:
    """AWQ's scale vectors and, per layer, the clip-searched blocks of every body Linear at its recipe's bits and
    block (int4 body, block-64 gate_up, int8 mixed-precision tensors), spilled as each layer finishes (a 14B
    body's scales alone are 1/8 of its int4 bytes). Each group's alpha is searched with the rounding its tensor
    gets (symmetric RTN at its bits and block). The folded fp32 weights are dropped once the next layer starts;
    the exporter folds the norms on read (the only folded tensors it still reads)."""
    assert recipe.body is not None
    found = AwqScales({})
    blocks = CalibratedBlocks("awq")

    def rtn(chosen: LinearRecipe | None) -> Quantizer:
        if chosen is None:
            raise ValueError("an AWQ body has no float Linears")
        return lambda w: quantize_rtn(w, chosen.bits, chosen.block_size, True, scale_dtype)

    def plan(name: str) -> tuple[int, int] | None:
        chosen = recipe.for_tensor(name)
        return None if chosen is None or chosen.algo != "awq" else (chosen.bits, chosen.block_size)

    def keep(_layer: int, result: cal.AwqLayer) -> None:
        found.merge(result.scales)
        for name, quantized in result.blocks.items():
            blocks.add(name, quantized)

    try:
        cal.awq_calibrate(side, sequences, rtn(recipe.body), keep,
                          per_tensor=lambda name: rtn(recipe.for_tensor(name)), on_layer=step, clip=plan,
                          scale_dtype=scale_dtype)
    except BaseException:
        blocks.close()  # a failed pass leaves no spill folder behind
        raise
    return found, blocks


def _window(spec: Phi3Spec) -> int:
    """Calibration window length: within the rotary tables (and LongRoPE's short factors, as most prompts are)."""
    limits = [cal.SEQUENCE, spec.max_position_embeddings]
    if spec.longrope is not None:
        limits.append(spec.longrope.original_max_position_embeddings)
    return min(limits)


def _tokenizer(checkpoint: Checkpoint) -> Callable[[str], list[int]]:
    found = [path for path in checkpoint.tokenizer_files if path.name == "tokenizer.json"]
    if not found:
        raise cal.CalibrationError(f"{checkpoint.root}: calibration tokenizes its text with the checkpoint's "
                                   "tokenizer.json, which it lacks")
    tokenizer = Tokenizer.from_file(str(found[0]))
    return lambda text: list(tokenizer.encode(text).ids)


@contextmanager
def _progress(enabled: bool | None, layers: int, algo: str) -> Iterator[Callable[[int], None] | None]:
    """A bar on a terminal (or when asked), a line per layer otherwise, nothing when progress is False."""
    console = Console(stderr=True)
    if enabled is False:
        yield None
    elif enabled or console.is_terminal:
        columns = (TextColumn(f"[bold]{algo.upper()} calibration"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("layers"), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task(algo, total=layers)
            yield lambda layer: bar.update(task, completed=layer + 1)
    else:
        yield lambda layer: print(f"{algo.upper()} calibration: layer {layer + 1}/{layers}", file=sys.stderr,
                                  flush=True)

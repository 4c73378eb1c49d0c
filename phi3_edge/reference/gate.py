"""The export accuracy gate's measurement: a finished artifact against the fp32 reference streamed from its
checkpoint (reference/fidelity.py). No reference artifact is exported: nothing is written, and memory stays at
one layer's weights whatever the model's size.

api injects `measure_against_checkpoint` into the export pipeline (the exporter never imports this layer).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from phi3_edge.evaluate.gate import REFERENCE
from phi3_edge.exporter.checkpoint import resolve_checkpoint
from phi3_edge.exporter.config import load_spec
from phi3_edge.reference.fidelity import compare_to_checkpoint


def measure_against_checkpoint(candidate: Path, checkpoint: Path, *, progress: bool | None = None) -> dict[str, Any]:
    """manifest.json's fidelity record (kl, top1, prompts, positions, reference) of `candidate`.

    The candidate is the export's staging folder, measured before its manifest exists: no hash check here.
    progress: None = a bar on a terminal and a line per layer otherwise, False = silent (as the export's)."""
    resolved = resolve_checkpoint(str(checkpoint), require_tokenizer=False)
    spec = load_spec(resolved.config_path)
    with layer_progress(progress) as on_layer:
        report = compare_to_checkpoint(spec, resolved.weight_files, candidate, on_layer=on_layer)
    return {"kl": report.kl, "top1": report.top1, "prompts": report.prompts, "positions": report.positions,
            "reference": REFERENCE}


@contextmanager
def layer_progress(enabled: bool | None) -> Iterator[Callable[[int, int], None] | None]:
    console = Console(stderr=True)
    if enabled is False:
        yield None
    elif enabled or console.is_terminal:
        columns = (TextColumn("[bold]accuracy gate"), BarColumn(), MofNCompleteColumn(), TextColumn("layers"),
                   TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("gate", total=None)
            yield lambda done, total: bar.update(task, completed=done, total=total)
    else:
        yield lambda done, total: print(f"accuracy gate: layer {done}/{total}", file=sys.stderr, flush=True)

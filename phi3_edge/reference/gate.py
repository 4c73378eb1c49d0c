"""The export accuracy gate's measurement: a finished artifact against the fp32 reference streamed from its
checkpoint (reference/fidelity.py). No reference artifact is exported: nothing is written, and memory stays at
one layer's weights whatever the model's size.

api injects `measure_against_checkpoint` into the export pipeline (the exporter never imports this layer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from phi3_edge.evaluate.gate import REFERENCE
from phi3_edge.exporter.checkpoint import resolve_checkpoint
from phi3_edge.exporter.config import load_spec
from phi3_edge.reference.fidelity import compare_to_checkpoint


def measure_against_checkpoint(candidate: Path, checkpoint: Path) -> dict[str, Any]:
    """manifest.json's fidelity record (kl, top1, prompts, positions, reference) of `candidate`.

    The candidate is the export's staging folder, measured before its manifest exists: no hash check here."""
    resolved = resolve_checkpoint(str(checkpoint), require_tokenizer=False)
    report = compare_to_checkpoint(load_spec(resolved.config_path), resolved.weight_files, candidate)
    return {"kl": report.kl, "top1": report.top1, "prompts": report.prompts, "positions": report.positions,
            "reference": REFERENCE}

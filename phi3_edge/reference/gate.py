"""The export accuracy gate's measurement: a finished artifact against the fp32 reference streamed from its
checkpoint (reference/fidelity.py). No reference artifact is exported: nothing is written, and memory stays at
one layer's weights whatever the model's size.

api injects `measure_against_checkpoint` into the export pipeline (the exporter never imports this layer).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from phi3_edge.evaluate.gate import REFERENCE
from phi3_edge.exporter.config import Phi3Spec
from phi3_edge.reference.fidelity import compare_to_checkpoint


def measure_against_checkpoint(candidate: Path, spec: Phi3Spec, weight_files: Sequence[Path]) -> dict[str, Any]:
    """manifest.json's fidelity record (kl, top1, prompts, positions, reference) of `candidate`."""
    report = compare_to_checkpoint(spec, weight_files, candidate)
    return {"kl": report.kl, "top1": report.top1, "prompts": report.prompts, "positions": report.positions,
            "reference": REFERENCE}

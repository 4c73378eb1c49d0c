"""The export accuracy gate: a quantized artifact measured against an fp32 export of the same checkpoint.

The exporter is passed in as a callback (`export_reference(folder)`) rather than imported: evaluate/ sits on
the runtime side (onnxruntime + tokenizers) and must not pull in the exporter.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from phi3_edge.errors import Phi3EdgeError
from phi3_edge.evaluate.fidelity import compare_artifacts
from phi3_edge.targets.table import REFERENCE_TARGET

REFERENCE = f"{REFERENCE_TARGET} graph of the same checkpoint"


def measure_against_reference(candidate: Path, export_reference: Callable[[Path], object], *,
                              scratch_parent: Path) -> dict[str, Any]:
    """Export the reference into a temporary folder, compare, delete it; returns the manifest's fidelity dict.

    The scratch folder sits in `scratch_parent` (the export's staging folder), not the system temp dir: an fp32
    reference is 4 bytes per weight (15 GB for Phi-3-mini) and /tmp is often a small RAM-backed tmpfs, while
    the output's filesystem has just been shown to hold an export.
    """
    with tempfile.TemporaryDirectory(prefix=".phi3-edge-fidelity-", dir=scratch_parent) as scratch:
        reference = Path(scratch) / REFERENCE_TARGET
        export_reference(reference)
        report = compare_artifacts(candidate, reference, verify_artifact=False)  # candidate: no manifest yet
    return {"kl": report.kl, "top1": report.top1, "prompts": report.prompts, "positions": report.positions,
            "reference": REFERENCE}


def enforce_max_kl(fidelity: dict[str, Any], max_kl: float | None) -> None:
    """Phi3EdgeError when the measured KL exceeds `max_kl` (a NaN KL fails too: it is never "within")."""
    if max_kl is None:
        return
    kl, top1 = fidelity["kl"], fidelity["top1"]
    if not (math.isfinite(kl) and kl <= max_kl):
        raise Phi3EdgeError(f"accuracy gate: KL {kl:.3g} > --max-kl {max_kl:g} (top-1 agreement {top1:.1%})")

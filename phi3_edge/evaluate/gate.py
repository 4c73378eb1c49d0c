"""The export accuracy gate's verdict: the fidelity record's name for its reference, and --max-kl.

The measurement itself streams the fp32 reference from the checkpoint (phi3_edge/reference/gate.py); api
injects it into the export pipeline. This module stays runtime-side: no exporter, no reference engine.
"""

from __future__ import annotations

import math
from typing import Any

from phi3_edge.errors import Phi3EdgeError
from phi3_edge.targets.table import REFERENCE_TARGET

# The streamed reference computes the logits of the whole cpu-fp32 graph (within 1e-4, tests/reference).
REFERENCE = f"{REFERENCE_TARGET} graph of the same checkpoint"


def enforce_max_kl(fidelity: dict[str, Any], max_kl: float | None) -> None:
    """Phi3EdgeError when the measured KL exceeds `max_kl` (a NaN KL fails too: it is never "within")."""
    if max_kl is None:
        return
    kl, top1 = fidelity["kl"], fidelity["top1"]
    if not (math.isfinite(kl) and kl <= max_kl):
        raise Phi3EdgeError(f"accuracy gate: KL {kl:.3g} > --max-kl {max_kl:g} (top-1 agreement {top1:.1%})")

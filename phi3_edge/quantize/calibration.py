"""What a calibration pass hands the exporter: the recipe as applied, and what it computed from the text.

    calibration text ─► pass (reference/export_calibration.py, injected by api) ─► Calibration ─► export_graph
                                                                                        └────► manifest.json

One contract for every pass: GPTQ fills `blocks` (codes computed before the graph), AWQ fills `scales` (per-
channel vectors the exporter folds into the weights as it reads them), and a pass may change the recipe itself
(measured int8 overrides): the pipeline uses `recipe` from then on, and the manifest records it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from phi3_edge.quantize.awq import AwqScales
from phi3_edge.quantize.calibrated import CalibratedBlocks
from phi3_edge.quantize.recipe import QuantRecipe


@dataclass(frozen=True)
class Calibration:
    recipe: QuantRecipe  # as applied (a pass may have changed the one it was given)
    blocks: CalibratedBlocks | None = None  # GPTQ: the body's blocks by checkpoint name
    scales: AwqScales | None = None  # AWQ: per-channel scales folded into the weights on read
    record: dict[str, Any] | None = None  # manifest.json's "calibration" (None: no pass ran)


def uncalibrated(recipe: QuantRecipe) -> Calibration:
    """The recipe of an export that needs no calibration pass, in the same shape."""
    return Calibration(recipe)

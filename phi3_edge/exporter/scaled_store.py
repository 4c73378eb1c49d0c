"""A WeightStore whose reads come back with AWQ's scales folded in: the same graph, different weights.

    WeightStore.read_rows / read_columns ─► Fold.apply (quantize/awq.py) ─► WeightSource ─► RTN / float
        RMSNorm gains        g / s
        qkv, gate_up         columns * s   (a column slice takes the matching slice of s)
        up rows of gate_up   rows / s_down (the second half; a Llama-layout up_proj is that half of the view)
        down                 columns * s_down

Every read of a folded tensor goes through here, whatever the plan reads it as (packed or three Q/K/V ranges,
rows or column blocks), so the fold is one rule, not one per block. In a `--quant-algo awq` export the body's
Linears come ready-made from the calibration pass (folded there by the same Fold, then clip-searched:
reference/calibrate.py), so the reads folded here are the norms; a float export of scaled weights (tests) folds
every tensor. Folding runs on float32 slices only: the
stored GGUF blocks of a folded tensor are never carried (they hold the unscaled weights).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from phi3_edge.exporter.artifact import StageCallback
from phi3_edge.exporter.weights import TensorInfo, WeightStore
from phi3_edge.quantize.awq import AwqScales, Fold


class ScaledStore(WeightStore):
    def __init__(self, files: tuple[Path, ...], scales: AwqScales, on_stage: StageCallback | None = None) -> None:
        super().__init__(files, on_stage)
        self._folds: dict[str, Fold] = scales.folds()
        missing = sorted(name for name in self._folds if name not in self)
        if missing:  # the scales were computed on another checkpoint (or layout): refuse, do not skip
            raise ValueError(f"AWQ scales name tensors the checkpoint lacks: {', '.join(missing[:3])}")

    def read_rows(self, info: TensorInfo, start: int, stop: int) -> np.ndarray:
        rows = super().read_rows(info, start, stop)
        fold = self._folds.get(info.name)
        return rows if fold is None else fold.apply(rows, start)

    def read_columns(self, info: TensorInfo, start: int, stop: int, rows: tuple[int, int] | None = None) -> np.ndarray:
        block = super().read_columns(info, start, stop, rows)  # (last - first, stop - start)
        fold = self._folds.get(info.name)
        return block if fold is None else fold.apply(block, (rows or (0, info.shape[0]))[0], (start, stop))

    def stored_kind(self, info: TensorInfo) -> str | None:
        """None for a folded tensor: its stored blocks are the unscaled weights, so they are re-quantized
        (and logged so: carry_rows, the only caller, logs nothing for None)."""
        kind = super().stored_kind(info)
        if kind is not None and info.name in self._folds:
            self.carry_log.note(kind, carried=False)
            return None
        return kind

"""ExportRequest and ExportResult: one export as frozen data (importing this pulls in no onnx)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phi3_edge.quantize.recipe import QuantOptions
from phi3_edge.targets.table import REFERENCE_TARGET


@dataclass(frozen=True)
class ExportRequest:
    """One export: the checkpoint, the target, where to write it, and how."""

    model: str  # local folder, hub id, short name or "demo"
    target: str = REFERENCE_TARGET
    output: Path | None = None
    force: bool = False  # replace an artifact of ours at `output`
    require_tokenizer: bool = True
    progress: bool | None = None  # None: a progress display when stderr is a terminal
    quant: QuantOptions = field(default_factory=QuantOptions)
    calibration: Path | None = None  # --quant-algo gptq: the user's UTF-8 text (None: the built-in set)
    max_kl: float | None = None  # the accuracy gate: fail (writing nothing) above this KL to the reference
    fidelity: bool = True  # measure a quantized export against the reference (False: recorded as null)
    layout: str | None = None  # "optimum": also config.json, generation_config.json, onnx/model*.onnx (LAYOUTS)
    command: str | None = None  # the command line that asked for this export (manifest.json's "command")
    mobile_files: str | None = None  # mobile targets: keep only "ort" (model.ort) or "onnx" (exporter/app_files.py)


@dataclass(frozen=True)
class ExportResult:
    output: Path
    target: str
    size_bytes: int
    nodes: int
    seconds: float
    fused_rotary: bool
    fidelity: dict[str, Any] | None = None  # manifest.json's "fidelity": KL / top-1 vs the reference, or None
    ort_format: str | None = None  # mobile targets: model.ort written, or skipped and why

    def summary_rows(self) -> list[tuple[str, str]]:
        rows = [
            ("artifact", str(self.output)),
            ("target", self.target),
            ("size", f"{self.size_bytes / 2**20:.1f} MiB"),
            ("graph nodes", str(self.nodes)),
            ("rotary", "fused into GroupQueryAttention" if self.fused_rotary else "separate RotaryEmbedding"),
            ("time", f"{self.seconds:.1f} s"),
        ] + ([("ORT format", self.ort_format)] if self.ort_format else [])
        if self.fidelity is not None:
            rows.append((f"fidelity vs {REFERENCE_TARGET}",
                         f"KL {self.fidelity['kl']:.3g}, top-1 agreement {self.fidelity['top1']:.1%}"))
        return rows

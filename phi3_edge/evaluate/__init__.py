"""Fidelity of an artifact against a reference artifact: next-token KL, top-1 agreement, perplexity.

Runtime-side code (onnxruntime, numpy, tokenizers): it never imports the exporter, torch or transformers.

    report = compare_artifacts("build/cpu-int4", "build/cpu-fp32", text=open("notes.txt").read())
    print(report.kl, report.top1, report.ppl, report.ref_ppl)
"""

from __future__ import annotations

from phi3_edge.evaluate.fidelity import FidelityReport, compare_artifacts
from phi3_edge.evaluate.gate import REFERENCE, enforce_max_kl
from phi3_edge.evaluate.texts import PROMPTS

__all__ = ["PROMPTS", "REFERENCE", "FidelityReport", "compare_artifacts", "enforce_max_kl"]

"""The on-device runtime: onnxruntime + numpy + tokenizers only (never torch, transformers, onnx or the exporter).

    model = load("build/cpu-fp32")
    result = model.generate("def fibonacci(n):", max_new_tokens=32)
    for piece in model.stream("Explain KV caches in one sentence."):
        print(piece, end="")
"""

from __future__ import annotations

from pathlib import Path

from phi3_edge.edge_runtime.generate import GenerationResult, GreedyGenerator
from phi3_edge.edge_runtime.model import EdgeModel, TextStream
from phi3_edge.edge_runtime.tokenizer import EdgeTokenizer, IncrementalDetokenizer

__all__ = [
    "EdgeModel",
    "EdgeTokenizer",
    "GenerationResult",
    "GreedyGenerator",
    "IncrementalDetokenizer",
    "TextStream",
    "load",
]


def load(folder: str | Path, *, intra_op_threads: int | None = None) -> EdgeModel:
    """Open an artifact folder for generation (see EdgeModel.load)."""
    return EdgeModel.load(folder, intra_op_threads=intra_op_threads)

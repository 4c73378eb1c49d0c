"""The on-device runtime: onnxruntime + numpy + tokenizers (+ jinja2 for chat templates) only — never torch,
transformers, onnx or the exporter. onnxruntime-genai and psutil are optional extras (backend="genai", bench).

    model = load("build/cpu-fp32")
    result = model.generate("def fibonacci(n):", max_new_tokens=32)
    for piece in model.stream([{"role": "user", "content": "Hi"}], max_new_tokens=64, temperature=0.7, seed=1):
        print(piece, end="")
"""

from __future__ import annotations

from pathlib import Path

from phi3_edge.edge_runtime.generate import GenerationOptions, GenerationResult, Generator, GreedyGenerator
from phi3_edge.edge_runtime.model import EdgeModel, TextStream
from phi3_edge.edge_runtime.sampling import SamplingOptions
from phi3_edge.edge_runtime.tokenizer import EdgeTokenizer, IncrementalDetokenizer

__all__ = [
    "EdgeModel",
    "EdgeTokenizer",
    "GenerationOptions",
    "GenerationResult",
    "Generator",
    "GreedyGenerator",
    "IncrementalDetokenizer",
    "SamplingOptions",
    "TextStream",
    "load",
]


def load(folder: str | Path, *, intra_op_threads: int | None = None, backend: str = "ort",
         kv_cache: str = "auto", verify: bool = True, allow_cpu: bool = False) -> EdgeModel:
    """Open an artifact folder for generation (see EdgeModel.load)."""
    return EdgeModel.load(folder, intra_op_threads=intra_op_threads, backend=backend, kv_cache=kv_cache,
                          verify=verify, allow_cpu=allow_cpu)

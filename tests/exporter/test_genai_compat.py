"""The artifact folders load unchanged in onnxruntime-genai and generate transformers' greedy tokens.

onnxruntime-genai runs our graph with its own KV buffers (past/present share one preallocated buffer),
so this also proves the graph is correct under buffer sharing, not only under our concat-style loop.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures.checkpoints import ORIGINAL_MAX_POSITIONS, SLIDING_WINDOW
from fixtures.reference import hf_reference
from phi3_edge.api import export

og = pytest.importorskip("onnxruntime_genai")

NEW_TOKENS = 16


def genai_greedy(folder: Path, ids: list[int], new_tokens: int) -> list[int]:
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    total = len(ids) + new_tokens
    params.set_search_options(do_sample=False, max_length=total, min_length=total)  # no early eos stop
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    tokens: list[int] = []
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens


CASES = [("mha", 12), ("gqa", 12), ("longrope", ORIGINAL_MAX_POSITIONS - 8), ("longrope", ORIGINAL_MAX_POSITIONS + 4),
         ("partial_tied", 12), ("partial_tied_wide", 12), ("sliding", 2 * SLIDING_WINDOW)]


@pytest.mark.parametrize(("variant", "length"), CASES, ids=[f"{v}-{n}" for v, n in CASES])
def test_genai_generates_reference_tokens(tiny_checkpoint, tmp_path: Path, variant: str, length: int) -> None:
    import numpy as np

    checkpoint = tiny_checkpoint(variant)
    ids = np.random.default_rng(3).integers(0, 352, size=length).tolist()
    export(str(checkpoint), target="cpu-fp32", output=tmp_path / "art", progress=False)
    ref = hf_reference(checkpoint, ids, NEW_TOKENS - 1)
    assert genai_greedy(tmp_path / "art", ids, NEW_TOKENS) == ref.tokens


@pytest.mark.parametrize("variant", ["gqa", "partial_tied_wide"])
@pytest.mark.parametrize("target", ["cpu-int4", "cpu-int8"])
def test_genai_runs_quantized_artifacts(tiny_checkpoint, tmp_path: Path, variant: str, target: str) -> None:
    """Quantized graphs (MatMulNBits, shared GatherBlockQuantized table) in genai give our loop's tokens."""
    import numpy as np

    from fixtures.reference import ort_incremental
    from phi3_edge.exporter.config import load_spec

    checkpoint = tiny_checkpoint(variant)
    spec = load_spec(checkpoint / "config.json")
    ids = np.random.default_rng(4).integers(0, 352, size=12).tolist()
    export(str(checkpoint), target=target, output=tmp_path / "art", progress=False)
    ours = ort_incremental(tmp_path / "art" / "model.onnx", ids, NEW_TOKENS - 1, spec.num_layers,
                           spec.num_kv_heads, spec.head_dim)
    assert genai_greedy(tmp_path / "art", ids, NEW_TOKENS) == ours.tokens

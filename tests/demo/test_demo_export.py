"""The bundled demo exports to every CPU target, and its cpu-fp32 greedy output equals transformers'."""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures.reference import hf_generate_greedy
from phi3_edge.api import export, load
from phi3_edge.exporter.checkpoint import resolve_checkpoint

CPU_TARGETS = ["cpu-fp32", "cpu-int8", "cpu-int4", "mobile-int4"]
PROMPT = "def fibonacci(n):"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("demo")
    for target in CPU_TARGETS:
        export("demo", target=target, output=root / target, progress=False, fidelity=target != "cpu-fp32")
    return {target: root / target for target in CPU_TARGETS}


@pytest.mark.parametrize("target", CPU_TARGETS)
def test_demo_exports_and_generates(artifacts: dict[str, Path], target: str) -> None:
    result = load(artifacts[target]).generate(PROMPT, max_new_tokens=16)
    assert len(result.token_ids) >= 1 and result.stop_reason in ("eos", "length")


def test_demo_fp32_greedy_equals_transformers(artifacts: dict[str, Path]) -> None:
    model = load(artifacts["cpu-fp32"])
    ids = model.tokenizer.encode(PROMPT)
    ours = model.generate_ids(ids, max_new_tokens=32).token_ids
    reference = hf_generate_greedy(resolve_checkpoint("demo").root, ids, 32)  # fp32 load of the bf16 weights
    assert ours == reference[: len(ours)]

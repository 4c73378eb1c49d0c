"""Parity figures per variant: our cpu-fp32 export vs transformers on the tiny test checkpoints.

    python bench/parity_report.py            # a table: max |logit diff| prefill / decode, greedy match

Uses the tests' checkpoint factory and references (tests/fixtures), so the figures are the ones the parity
tests assert (< 1e-4), printed instead of asserted.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fixtures.checkpoints import ORIGINAL_MAX_POSITIONS, SLIDING_WINDOW, make_checkpoint  # noqa: E402
from fixtures.reference import hf_reference, ort_incremental  # noqa: E402
from phi3_edge.api import export  # noqa: E402
from phi3_edge.exporter.config import load_spec  # noqa: E402

STEPS = 16
CASES = [
    ("mha", "float32", 20), ("gqa", "float32", 20), ("gqa", "bfloat16", 20), ("gqa", "float16", 20),
    ("longrope", "float32", 10), ("longrope", "float32", ORIGINAL_MAX_POSITIONS - 8),
    ("longrope", "float32", ORIGINAL_MAX_POSITIONS + 8), ("partial_tied", "float32", 20),
    ("partial_tied_wide", "float32", 20), ("longrope_partial", "float32", ORIGINAL_MAX_POSITIONS - 4),
    ("sliding", "float32", 3 * SLIDING_WINDOW),
]


def measure(root: Path, variant: str, dtype: str, length: int) -> tuple[float, float, bool]:
    checkpoint = make_checkpoint(root / f"{variant}-{dtype}", variant, dtype=dtype) \
        if not (root / f"{variant}-{dtype}").exists() else root / f"{variant}-{dtype}"
    out = root / f"art-{variant}-{dtype}-{length}"
    export(str(checkpoint), target="cpu-fp32", output=out, progress=False, force=True)
    spec = load_spec(checkpoint / "config.json")
    ids = np.random.default_rng(0).integers(0, 352, size=length).tolist()
    ours = ort_incremental(out / "model.onnx", ids, STEPS, spec.num_layers, spec.num_kv_heads, spec.head_dim)
    ref = hf_reference(checkpoint, ids, STEPS)
    return (float(np.abs(ours.prompt_logits - ref.prompt_logits).max()),
            float(np.abs(ours.step_logits - ref.step_logits).max()), ours.tokens == ref.tokens)


def main() -> None:
    table = Table(title=f"cpu-fp32 export vs transformers (fp32 incremental forward, {STEPS} decode steps)")
    for column in ("variant", "source dtype", "prompt", "prefill max |diff|", "decode max |diff|", "greedy"):
        table.add_column(column)
    with tempfile.TemporaryDirectory() as tmp:
        for variant, dtype, length in CASES:
            prefill, decode, same = measure(Path(tmp), variant, dtype, length)
            table.add_row(variant, dtype, str(length), f"{prefill:.2e}", f"{decode:.2e}",
                          "identical" if same else "DIFFERENT")
    Console().print(table)


if __name__ == "__main__":
    main()

"""Artifacts shared by the evaluate tests: one tiny checkpoint exported as cpu-fp32 and as cpu-int4 (RTN)."""

from __future__ import annotations

from pathlib import Path

import pytest

from phi3_edge.api import export


@pytest.fixture(scope="session")
def gqa_artifacts(tiny_checkpoint, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{"fp32": cpu-fp32 folder, "int4": cpu-int4 folder} of the tiny gqa checkpoint (read-only)."""
    checkpoint = tiny_checkpoint("gqa")
    root = tmp_path_factory.mktemp("eval_artifacts")
    fp32 = export(str(checkpoint), target="cpu-fp32", output=root / "fp32", progress=False).output
    # The gate is tested in test_gate.py; skipping it here keeps this shared fixture to one export.
    # RTN, the uncalibrated int4: these tests measure the comparison tools, with bounds measured on RTN's loss.
    int4 = export(str(checkpoint), target="cpu-int4", output=root / "int4", progress=False, fidelity=False,
                  quant_algo="rtn").output
    return {"fp32": fp32, "int4": int4}

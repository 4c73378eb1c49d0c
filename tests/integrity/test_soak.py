"""A short soak (bench/soak.py): ~10 s of greedy generations in one process, same output every run, and
resident memory flat after warm-up. The full soak (minutes) is `python bench/soak.py`."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from phi3_edge.api import export

SOAK_PATH = Path(__file__).resolve().parents[2] / "bench" / "soak.py"
MAX_GROWTH_MB = 20.0  # after warm-up; a leak of one KV cache per run would pass this within seconds


def load_soak():
    spec = importlib.util.spec_from_file_location("phi3_edge_bench_soak", SOAK_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is being built
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(scope="module")
def artifact(tiny_checkpoint, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("soak") / "cpu-fp32"
    export(str(tiny_checkpoint("gqa")), target="cpu-fp32", output=output, progress=False)
    return output


def test_short_soak_is_deterministic_and_flat(artifact: Path) -> None:
    soak = load_soak()
    report = soak.soak(artifact, seconds=10.0, max_runs=20_000, max_new_tokens=24, warmup_seconds=3.0)
    assert report.runs >= 20, report.summary()
    assert report.tokens_per_run > 0 and report.changed_runs == 0, report.summary()
    assert report.growth_mb < MAX_GROWTH_MB, report.summary()


def test_report_arithmetic() -> None:
    report = load_soak().SoakReport("x", warmup_seconds=1.0,
                                    samples=[(0.0, 50.0), (1.0, 100.0), (31.0, 101.0), (61.0, 102.0)])
    assert report.growth_mb == pytest.approx(2.0)  # from the first sample after warm-up, not from 50 MB
    assert report.slope_mb_per_min == pytest.approx(2.0)

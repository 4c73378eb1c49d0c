"""Soak: many greedy generations in one process; resident memory must stay flat and the output unchanged.

A leak in the generation loop (a KV cache kept alive, an ORT binding never freed, a growing list) shows as RSS
climbing run after run; nondeterminism (uninitialised buffers, state carried between runs) shows as a
greedy output that changes. Both are invisible in a single `phi3-edge run`.

    python bench/soak.py                          # the bundled demo model, ~3 minutes
    python bench/soak.py --artifact build/cpu-int4 --minutes 10 --max-new-tokens 64
    python bench/soak.py --seconds 10 --json      # a quick check (what tests/integrity/test_soak.py runs)

Bounded in time (--minutes / --seconds) and in count (--max-runs). RSS is sampled after every run; the first
--warmup-seconds are excluded (allocator pools, ORT arenas and caches fill up then settle). Reported: RSS over
time, growth after warm-up, and the least-squares slope in MB/min. Exit status 1 when an output changed or the
growth passes --max-growth-mb.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

MB = 2**20
DEFAULT_PROMPT = "Explain KV caches in one sentence."


@dataclass
class SoakReport:
    artifact: str
    runs: int = 0
    seconds: float = 0.0
    tokens_per_run: int = 0
    changed_runs: int = 0  # runs whose greedy tokens differ from the first run's
    first_output: list[int] = field(default_factory=list)
    samples: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, RSS MB) per run
    warmup_seconds: float = 0.0

    @property
    def settled(self) -> list[tuple[float, float]]:
        """Samples after warm-up (all of them when the run was too short to have any after it)."""
        after = [s for s in self.samples if s[0] >= self.warmup_seconds]
        return after if len(after) >= 2 else self.samples

    @property
    def growth_mb(self) -> float:
        settled = self.settled
        return max(rss for _, rss in settled) - settled[0][1] if settled else 0.0

    @property
    def slope_mb_per_min(self) -> float:
        """Least-squares slope of RSS over time after warm-up: ~0 for a flat line, a leak's rate otherwise."""
        points = self.settled
        if len(points) < 2:
            return 0.0
        mean_t = sum(t for t, _ in points) / len(points)
        mean_r = sum(r for _, r in points) / len(points)
        var = sum((t - mean_t) ** 2 for t, _ in points)
        cov = sum((t - mean_t) * (r - mean_r) for t, r in points)
        return 60.0 * cov / var if var > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "samples"}
        data.update(growth_mb=round(self.growth_mb, 2), slope_mb_per_min=round(self.slope_mb_per_min, 3),
                    rss_start_mb=round(self.samples[0][1], 1) if self.samples else None,
                    rss_end_mb=round(self.samples[-1][1], 1) if self.samples else None)
        return data


def rss_mb() -> float:
    return psutil.Process(os.getpid()).memory_info().rss / MB


def soak(folder: str | Path, *, seconds: float, max_runs: int, max_new_tokens: int = 32,
         prompt: str = DEFAULT_PROMPT, warmup_seconds: float | None = None) -> SoakReport:
    """Generate greedily from `folder` until `seconds` pass or `max_runs` runs are done."""
    from phi3_edge.api import load

    model = load(folder)
    prompt_ids = model.tokenizer.encode(prompt)
    report = SoakReport(str(folder), warmup_seconds=seconds * 0.2 if warmup_seconds is None else warmup_seconds)
    started = time.perf_counter()
    while report.runs < max_runs and time.perf_counter() - started < seconds:
        tokens = list(model.generate_ids(prompt_ids, max_new_tokens).token_ids)
        if report.runs == 0:
            report.first_output, report.tokens_per_run = tokens, len(tokens)
        elif tokens != report.first_output:
            report.changed_runs += 1
        report.runs += 1
        report.samples.append((time.perf_counter() - started, rss_mb()))
    report.seconds = time.perf_counter() - started
    return report


def demo_artifact(work: Path) -> Path:
    """Export the bundled demo checkpoint once (cpu-fp32) and reuse it."""
    from phi3_edge.api import export

    folder = work / "demo-cpu-fp32"
    if not (folder / "manifest.json").is_file():
        export("demo", target="cpu-fp32", output=folder, force=True, progress=False)
    return folder


def print_report(report: SoakReport, rows: int = 10) -> None:
    print(f"artifact {report.artifact}: {report.runs} runs in {report.seconds:.0f} s, "
          f"{report.tokens_per_run} tokens per run")
    print(f"{'t (s)':>8} {'RSS (MB)':>10}")
    step = max(1, len(report.samples) // rows)
    for t, rss in report.samples[::step] + report.samples[-1:]:
        print(f"{t:8.1f} {rss:10.1f}")
    print(f"after {report.warmup_seconds:.0f} s warm-up: growth {report.growth_mb:.2f} MB, "
          f"slope {report.slope_mb_per_min:+.3f} MB/min")
    print(f"greedy output: {'unchanged' if not report.changed_runs else f'CHANGED in {report.changed_runs} runs'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, help="artifact folder (default: export the bundled demo model)")
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--seconds", type=float, help="overrides --minutes")
    parser.add_argument("--max-runs", type=int, default=100_000)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--warmup-seconds", type=float, help="default: the first 20%% of the run")
    parser.add_argument("--max-growth-mb", type=float, default=20.0)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "phi3-edge-bench")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    folder = args.artifact or demo_artifact(args.work)
    seconds = args.seconds if args.seconds is not None else args.minutes * 60
    report = soak(folder, seconds=seconds, max_runs=args.max_runs, max_new_tokens=args.max_new_tokens,
                  prompt=args.prompt, warmup_seconds=args.warmup_seconds)
    if args.json:
        print(json.dumps(report.summary(), indent=2))
    else:
        print_report(report)
    return 0 if not report.changed_runs and report.growth_mb < args.max_growth_mb else 1


if __name__ == "__main__":
    sys.exit(main())

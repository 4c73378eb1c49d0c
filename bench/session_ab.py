"""Session options A/B: decode ms/token and TTFT of each threads.SessionTuning variant, as ratios to the default.

Each round runs every variant once, in an order rotated every round (a machine that gets busier or quieter
over time favours no variant); each run is a fresh process that loads the session, warms it up and times one
greedy generation (--prompt-len, --gen-len, eos ignored). One process per run, because sessions sharing a
process would share its CPUs: one session's pool, still spinning after its run, slows the next session's.
Per round, each variant's time is divided by the default's from the same round; the table shows the median
of those ratios (below 1.0: faster than the default) beside the median absolute figures.
Every variant must produce the default's tokens (the "tokens" column).

    python bench/session_ab.py FOLDER [--threads 2] [--rounds 5] [--variants default spin ...] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phi3_edge.edge_runtime.threads import SessionTuning


@dataclass(frozen=True)
class Variant:
    tuning: SessionTuning
    threads: int | None = None  # None: --threads; 0: ORT's own choice (physical cores, with its default affinity)


VARIANTS: dict[str, Variant] = {
    "default": Variant(SessionTuning()),
    "spin": Variant(SessionTuning(spinning=True)),  # onnxruntime's own default (and ours, measured quiet)
    "no-spin": Variant(SessionTuning(spinning=False)),  # measured faster on a shared, loaded machine
    "spin-100us": Variant(SessionTuning(spinning=True, spin_duration_us=100)),
    "dynamic-block-4": Variant(SessionTuning(dynamic_block_base=4)),
    "pinned": Variant(SessionTuning(pin_threads=True)),
    "no-arena": Variant(SessionTuning(cpu_arena=False)),
    "no-mem-pattern": Variant(SessionTuning(mem_pattern=False)),
    "opt-extended": Variant(SessionTuning(optimization="extended")),
    "spin-stop-after-run": Variant(SessionTuning(spinning=True, extra=(("session.force_spinning_stop", "1"),))),
    "ort-threads": Variant(SessionTuning(), threads=0),  # ORT's thread count and default affinity
}


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--gen-len", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", choices=list(VARIANTS), help=argparse.SUPPRESS)  # internal: one run
    return parser.parse_args(argv)


def timed_generation(model: Any, prompt: list[int], new_tokens: int) -> tuple[float, float, list[int]]:
    """(TTFT s, decode s per token, the tokens) of one greedy generation that ignores eos."""
    generator = model.generator(prompt, new_tokens, ignore_eos=True)
    tokens = list(generator)
    return generator.prefill_seconds, generator.decode_seconds / (new_tokens - 1), tokens


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One variant, one fresh process: load, warm up, time one generation."""
    from phi3_edge.edge_runtime.bench import bench_prompt
    from phi3_edge.edge_runtime.model import EdgeModel

    variant = VARIANTS[args.worker]
    threads = args.threads if variant.threads is None else variant.threads
    model = EdgeModel.load(args.folder, intra_op_threads=threads, tuning=variant.tuning, verify=False)
    prompt = bench_prompt(model, args.prompt_len)
    timed_generation(model, prompt, 2)  # warm-up: arena growth, kernel setup
    ttft, per_token, tokens = timed_generation(model, prompt, args.gen_len)
    return {"ttft_s": ttft, "per_token_s": per_token, "tokens": tokens}


def measure(name: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, __file__, str(args.folder), "--worker", name, "--threads", str(args.threads),
               "--prompt-len", str(args.prompt_len), "--gen-len", str(args.gen_len)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_rounds(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    names = ["default", *[name for name in args.variants if name != "default"]]
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    tokens: dict[str, list[int]] = {}
    for index in range(args.rounds):
        order = names[index % len(names):] + names[:index % len(names)]
        for name in order:
            run = measure(name, args)
            samples[name].append((run["ttft_s"], run["per_token_s"]))
            tokens[name] = run["tokens"]
    return summarize(samples, tokens)


def summarize(samples: dict[str, list[tuple[float, float]]], tokens: dict[str, list[int]]) -> dict[str, dict[str, Any]]:
    base = samples["default"]
    out = {}
    for name, runs in samples.items():
        out[name] = {
            "decode_ms": statistics.median(r[1] for r in runs) * 1000,
            "ttft_ms": statistics.median(r[0] for r in runs) * 1000,
            "decode_ratio": statistics.median(r[1] / b[1] for r, b in zip(runs, base, strict=True)),
            "ttft_ratio": statistics.median(r[0] / b[0] for r, b in zip(runs, base, strict=True)),
            "same_tokens": tokens[name] == tokens["default"],
        }
    return out


def print_table(result: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    title = (f"{args.folder.name}: {args.threads} threads, prompt {args.prompt_len}, {args.gen_len} new tokens, "
             f"median of {args.rounds} interleaved rounds; ratio = variant / default in the same round")
    table = Table("variant", "decode ms/token", "decode ratio", "TTFT ms", "TTFT ratio", "tokens", title=title)
    for name, row in result.items():
        table.add_row(name, f"{row['decode_ms']:.2f}", f"{row['decode_ratio']:.3f}", f"{row['ttft_ms']:.0f}",
                      f"{row['ttft_ratio']:.3f}", "same" if row["same_tokens"] else "DIFFERENT")
    Console(width=max(Console().width, 120)).print(table)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    started = time.perf_counter()
    result = run_rounds(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result, args)
        print(f"({time.perf_counter() - started:.0f} s)")
    return 0 if all(row["same_tokens"] for row in result.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

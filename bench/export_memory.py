"""Peak RSS and wall time: onnxruntime-genai's model builder vs phi3-edge, exporting the same checkpoint.

Each export runs in its own subprocess. Peak RSS is the larger of (a) the summed RSS of the process tree,
polled every 50 ms with psutil, and (b) ru_maxrss from os.wait4 (the largest single process, sampled by the
kernel, so short spikes between polls are not missed). Output size is the artifact folder, which is deleted
after measuring unless --keep. Usage: python bench/export_memory.py [--layers 1] [--passes 2] [--json]

`--precision gptq` is phi3-edge's cpu-int4 export with --quant-algo gptq (the calibration pass over the built-in
text, then the export reading the calibrated blocks back): the builder has no GPTQ, so that row has no builder
pair; compare it with the int4 (RTN) row, and across --layers, to see what the calibrated blocks cost.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkpoints import SHAPES, ensure_checkpoint  # noqa: E402

POLL_S = 0.05
GB = 1e9
BUILDER, EDGE = "genai-builder", "phi3-edge"
EDGE_TARGETS = {"fp32": "cpu-fp32", "int4": "cpu-int4", "gptq": "cpu-int4", "awq": "cpu-int4"}
EDGE_ALGOS = {"gptq": "gptq", "awq": "awq"}  # the --quant-algo of a precision (rtn when not named)
BUILDER_PRECISIONS = ("fp32", "int4")  # what the builder is measured at
# The builder's documented CPU int4 defaults, passed explicitly: RTN, block 32, accuracy level 4 (int8 compute).
BUILDER_INT4 = ["--extra_options", "block_size=32", "accuracy_level=4"]
# The export alone (fidelity=False): the accuracy gate's fp32 pass is not the builder's job.
EDGE_CODE = (
    "import sys; from phi3_edge.api import export; "
    "export(model=sys.argv[1], target=sys.argv[2], output=sys.argv[3], quant_algo=sys.argv[4], force=True, "
    "require_tokenizer=False, progress=False, fidelity=False)"
)


@dataclass(frozen=True)
class Job:
    tool: str
    precision: str
    argv: list[str]
    output: Path


@dataclass
class Result:
    tool: str
    precision: str
    pass_index: int  # which pass (alternating order) produced this row
    position: int  # 1 = ran first of the pair in its pass, 2 = second
    peak_rss_bytes: int
    polled_tree_rss_bytes: int
    wait4_maxrss_bytes: int
    wall_s: float
    output_bytes: int
    matmulnbits: bool  # the graph has MatMulNBits nodes, i.e. the weights really are quantized
    returncode: int
    log: str


def edge_targets() -> set[str]:
    from phi3_edge.targets.table import TARGETS

    return set(TARGETS)


def builder_job(checkpoint: Path, precision: str, work: Path) -> Job:
    out = work / f"out-builder-{precision}"
    argv = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(checkpoint), "-o", str(out),
            "-p", precision, "-e", "cpu", "-c", str(work / "builder-cache")]
    return Job(BUILDER, precision, argv + (BUILDER_INT4 if precision == "int4" else []), out)


def edge_job(checkpoint: Path, precision: str, work: Path) -> Job:
    out = work / f"out-edge-{precision}"
    argv = [sys.executable, "-c", EDGE_CODE, str(checkpoint), EDGE_TARGETS[precision], str(out),
            EDGE_ALGOS.get(precision, "rtn")]
    return Job(EDGE, precision, argv, out)


def tree_rss(pid: int) -> int:
    """Summed RSS of a process and all its descendants (0 once it is gone)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def has_matmulnbits(folder: Path) -> bool:
    """Whether any model.onnx (weights are external, so the file is small) uses the MatMulNBits op."""
    return any(b"MatMulNBits" in path.read_bytes() for path in folder.rglob("*.onnx")) if folder.is_dir() else False


def measure(job: Job, work: Path, pass_index: int, position: int, keep: bool) -> Result:
    shutil.rmtree(job.output, ignore_errors=True)
    shutil.rmtree(work / "builder-cache", ignore_errors=True)
    log_path = work / f"{job.output.name}.pass{pass_index}.log"
    with log_path.open("wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(job.argv, stdout=log, stderr=subprocess.STDOUT, cwd=work)
        polled, status, usage = 0, 0, None
        while True:
            polled = max(polled, tree_rss(proc.pid))
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(POLL_S)
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4; tell Popen
    maxrss = usage.ru_maxrss * 1024  # Linux reports KiB
    size, quantized = folder_bytes(job.output), has_matmulnbits(job.output)
    if not keep:
        shutil.rmtree(job.output, ignore_errors=True)
    shutil.rmtree(work / "builder-cache", ignore_errors=True)
    return Result(job.tool, job.precision, pass_index, position, max(polled, maxrss), polled, maxrss, wall, size,
                  quantized, proc.returncode, str(log_path))


def plan(checkpoint: Path, work: Path, passes: int, precisions: list[str]) -> list[tuple[int, int, Job]]:
    """(pass, position, job): each pass runs builder and phi3-edge back to back, swapping who goes first."""
    available = edge_targets()
    jobs: list[tuple[int, int, Job]] = []
    for index in range(1, passes + 1):
        for precision in precisions:
            pair = [builder_job(checkpoint, precision, work)] if precision in BUILDER_PRECISIONS else []
            if EDGE_TARGETS[precision] in available:
                pair.append(edge_job(checkpoint, precision, work))
            if index % 2 == 0:
                pair.reverse()
            jobs += [(index, position, job) for position, job in enumerate(pair, 1)]
    return jobs


def ratio(result: Result, results: list[Result]) -> tuple[float, float] | None:
    """(RSS, time) of `result` over the builder's run of the same precision and pass."""
    for base in results:
        if (base.tool, base.precision, base.pass_index) == (BUILDER, result.precision, result.pass_index):
            if base.returncode == 0 and result.returncode == 0:
                return result.peak_rss_bytes / base.peak_rss_bytes, result.wall_s / base.wall_s
    return None


def print_table(results: list[Result], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 120))
    table = Table(title=title)
    for name in ("tool", "precision", "pass/order", "peak RSS (GB)", "wall (s)", "output (GB)", "RSS/builder",
                 "time/builder"):
        table.add_column(name, justify="left" if name in ("tool", "precision", "pass/order") else "right")
    for r in sorted(results, key=lambda r: (r.precision, r.pass_index, r.tool != BUILDER)):
        rel = ratio(r, results)
        failed = r.returncode != 0
        fake = r.precision != "fp32" and not r.matmulnbits and not failed
        table.add_row(
            r.tool, f"{r.precision}*" if fake else r.precision,
            f"{r.pass_index}/{'first' if r.position == 1 else 'second'}",
            f"{r.peak_rss_bytes / GB:.2f}", f"{r.wall_s:.1f}",
            f"FAILED rc={r.returncode}" if failed else f"{r.output_bytes / GB:.2f}",
            f"{rel[0]:.2f}x" if rel else "-", f"{rel[1]:.2f}x" if rel else "-",
        )
    console.print(table)
    if any(r.precision != "fp32" and not r.matmulnbits and r.returncode == 0 for r in results):
        console.print("[red]*[/] not quantized: the graph has no MatMulNBits node (float weights were written).")
    if "int4" in {r.precision for r in results} and EDGE_TARGETS["int4"] not in edge_targets():
        console.print("phi3-edge has no cpu-int4 target yet: int4 rows are the builder's only.")
    for r in results:
        if r.returncode != 0:
            console.print(f"[red]{r.tool} {r.precision} failed (rc {r.returncode}); see {r.log}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=1, help="decoder layers in the generated checkpoint")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="medium", help="tiny: smoke-test the bench")
    parser.add_argument("--work", type=Path, default=Path("/tmp/phi3-edge-bench"), help="checkpoint cache, outputs")
    parser.add_argument("--passes", type=int, default=1, help="passes; even passes run phi3-edge first")
    parser.add_argument("--precision", nargs="+", choices=sorted(EDGE_TARGETS), default=["fp32", "int4"])
    parser.add_argument("--keep", action="store_true", help="keep the exported folders under --work")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    checkpoint = ensure_checkpoint(args.work, args.layers, args.shape)
    results = [measure(job, args.work, index, position, args.keep)
               for index, position, job in plan(checkpoint, args.work, args.passes, args.precision)]
    checkpoint_gb = folder_bytes(checkpoint) / GB
    if args.json:
        rows = [{**asdict(r), "ratio_vs_builder": ratio(r, results)} for r in results]
        print(json.dumps({"checkpoint": str(checkpoint), "checkpoint_bytes": folder_bytes(checkpoint),
                          "layers": args.layers, "shape": args.shape, "cpu_count": os.cpu_count(),
                          "results": rows}, indent=2))
    else:
        print_table(results, f"export of {args.shape} L={args.layers} ({checkpoint_gb:.2f} GB bf16), "
                             f"{os.cpu_count()} CPUs, {args.passes} pass(es)")
    return 0 if all(r.returncode == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

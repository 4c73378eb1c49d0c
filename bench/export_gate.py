"""The default export at real size, accuracy gate included: peak RSS, wall time, temporary disk, output size.

    python bench/export_gate.py --layers 8 32 --target cpu-int4 cpu-int8 [--builder] [--json]

Checkpoints: random bf16 Phi-3-mini shapes (3072 hidden, 8192 intermediate, 32 heads, 32064 vocab, a byte-level
BPE tokenizer so the gate's prompts are real token sequences), generated once with numpy into --work
(bench/checkpoints.py). Each export runs `bench/export_phases.py` in its own subprocess with default options
(so the gate runs); peak RSS is max(polled process-tree RSS, wait4 ru_maxrss). Temporary disk is the peak of
everything under the output's parent folder (where the staging folder lives) minus the final output; new
entries in the system temp folder are reported beside it (on a shared machine, other processes' count too).
Time per phase comes from the child's timers (export_phases.py).
`--builder` adds onnxruntime-genai's builder (int4, its CPU defaults) on the same checkpoint: memory-hungry
(8.3 GB at 8 layers), so off by default.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkpoints import write_fidelity_checkpoint  # noqa: E402
from export_memory import BUILDER_INT4, folder_bytes, tree_rss  # noqa: E402

POLL_S = 0.1
GB = 1e9
HERE = Path(__file__).resolve().parent


@dataclass
class Run:
    tool: str
    layers: int
    target: str
    peak_rss_bytes: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0  # user + system of the child: the figure to compare on a machine shared with others
    temp_disk_bytes: int = 0  # peak of the output's parent folder (staging + output) minus the final output
    new_tmp_bytes: int = 0  # peak of new entries in the system temp folder: other processes' files count too
    output_bytes: int = 0
    returncode: int = 0
    phases: dict[str, float] = field(default_factory=dict)
    fidelity: dict[str, object] | None = None
    log: str = ""


def _temp_entries() -> set[str]:
    return set(os.listdir(tempfile.gettempdir()))


def _new_temp_bytes(before: set[str]) -> int:
    root = Path(tempfile.gettempdir())
    total = 0
    for name in _temp_entries() - before:
        path = root / name
        try:
            total += folder_bytes(path) if path.is_dir() else path.stat().st_size
        except OSError:
            pass
    return total


def measure(run: Run, argv: list[str], out_parent: Path, output: Path) -> Run:
    shutil.rmtree(out_parent, ignore_errors=True)
    out_parent.mkdir(parents=True)
    log_path = out_parent.with_suffix(".log")
    before = _temp_entries()
    with log_path.open("wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        polled, disk, tmp, status, usage, tick = 0, 0, 0, 0, None, 0
        while True:
            polled = max(polled, tree_rss(proc.pid))
            if tick % 10 == 0:  # a folder walk every second is enough: big files grow over seconds
                disk = max(disk, folder_bytes(out_parent))
                tmp = max(tmp, _new_temp_bytes(before))
            tick += 1
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(POLL_S)
        run.wall_s = time.perf_counter() - started
    run.returncode = os.waitstatus_to_exitcode(status)
    run.peak_rss_bytes = max(polled, usage.ru_maxrss * 1024 if usage else 0)
    run.cpu_s = usage.ru_utime + usage.ru_stime if usage else 0.0
    run.output_bytes = folder_bytes(output)
    run.temp_disk_bytes = max(0, disk - run.output_bytes)
    run.new_tmp_bytes = tmp
    run.log = str(log_path)
    return run


def edge_run(checkpoint: Path, layers: int, target: str, work: Path, fidelity: bool = True) -> Run:
    parent = work / f"out-{target}-L{layers}"
    output, phases = parent / "artifact", work / f"phases-{target}-L{layers}.json"
    argv = ["nice", "-n", "10", sys.executable, str(HERE / "export_phases.py"), str(checkpoint), target, str(output),
            str(phases), *([] if fidelity else ["--no-fidelity"])]
    run = measure(Run("phi3-edge" + ("" if fidelity else " --no-fidelity"), layers, target), argv, parent, output)
    if run.returncode == 0:
        record = json.loads(phases.read_text())
        run.phases, run.fidelity = record["phases"], record["fidelity"]
    shutil.rmtree(parent, ignore_errors=True)
    return run


def builder_run(checkpoint: Path, layers: int, work: Path) -> Run:
    parent = work / f"out-builder-L{layers}"
    output = parent / "artifact"
    argv = ["nice", "-n", "10", sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(checkpoint),
            "-o", str(output), "-p", "int4", "-e", "cpu", "-c", str(parent / "cache"), *BUILDER_INT4]
    run = measure(Run("genai-builder", layers, "int4 cpu"), argv, parent, output)
    shutil.rmtree(parent, ignore_errors=True)
    return run


def print_tables(runs: list[Run]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    table = Table(title=f"default export, gate included (Phi-3-mini shapes, bf16, {os.cpu_count()} CPUs)")
    for name in ("tool", "layers", "target", "peak RSS (GB)", "wall (s)", "CPU (s)", "temp disk (GB)",
                 "new /tmp (GB)", "output (GB)", "gate KL", "gate top-1"):
        table.add_column(name, justify="left" if name in ("tool", "target") else "right")
    for r in runs:
        fid = r.fidelity or {}
        table.add_row(r.tool, str(r.layers), r.target, f"{r.peak_rss_bytes / GB:.2f}", f"{r.wall_s:.1f}",
                      f"{r.cpu_s:.0f}", f"{r.temp_disk_bytes / GB:.2f}", f"{r.new_tmp_bytes / GB:.2f}",
                      f"FAILED rc={r.returncode}" if r.returncode else f"{r.output_bytes / GB:.2f}",
                      f"{fid['kl']:.4g}" if "kl" in fid else "-", f"{fid['top1']:.1%}" if "top1" in fid else "-")
    console.print(table)
    phases = sorted({name for r in runs for name in r.phases})
    if phases:
        breakdown = Table(title="where the time goes (s, exclusive; gate (inclusive) = the whole gate)")
        breakdown.add_column("run")
        for name in phases:
            breakdown.add_column(name, justify="right")
        breakdown.add_column("other", justify="right")
        for r in runs:
            if r.phases:
                exclusive = sum(v for k, v in r.phases.items() if k != "gate (inclusive)")
                breakdown.add_row(f"{r.target} L{r.layers}", *[f"{r.phases.get(n, 0.0):.1f}" for n in phases],
                                  f"{max(0.0, r.wall_s - exclusive):.1f}")
        console.print(breakdown)
    for r in runs:
        if r.returncode:
            console.print(f"[red]{r.tool} L{r.layers} {r.target} failed (rc {r.returncode}); see {r.log}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[8])
    parser.add_argument("--target", nargs="+", default=["cpu-int4", "cpu-int8"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/phi3-edge-bench"))
    parser.add_argument("--builder", action="store_true", help="also run onnxruntime-genai's builder (int4)")
    parser.add_argument("--no-fidelity", action="store_true", help="the export alone, gate off")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    runs: list[Run] = []
    for layers in args.layers:
        checkpoint = write_fidelity_checkpoint(args.work, layers)
        runs += [edge_run(checkpoint, layers, target, args.work, not args.no_fidelity) for target in args.target]
        if args.builder:
            runs.append(builder_run(checkpoint, layers, args.work))
    if args.json:
        print(json.dumps([asdict(r) for r in runs], indent=2))
    else:
        print_tables(runs)
    return 0 if all(r.returncode == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())

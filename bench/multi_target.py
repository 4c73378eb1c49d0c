"""Four targets from one checkpoint: what `phi3-edge build` costs beside four separate exports, and the floor a
one-pass build could reach.

    python bench/multi_target.py                              # Phi-3-mini shapes, 4 layers, 4 targets
    python bench/multi_target.py --layers 8 --targets cpu-fp32 cpu-int4 cpu-int8 mobile-int4

Each row is one child process, started with the checkpoint's pages evicted from the page cache
(posix_fadvise DONTNEED on its files), so "disk read" is what that row had to read from the device (wait4's
ru_inblock); peak RSS = max of psutil's polled tree RSS and wait4's ru_maxrss; wall from spawn to exit:
  read pass          every checkpoint tensor read and converted to float32 once, nothing else: the I/O floor any
                     build pays at least once, however many targets it writes
  export T           `api.export` of one target (--singles; fidelity off in every row)
  N exports          the targets one after another in one process (N `phi3-edge export` runs, minus start-ups)
  build --sequential `phi3-edge build`, targets one after another
  build              `phi3-edge build`, targets side by side (one thread each, one walk over the checkpoint)
The checkpoint is a random bf16 one of Phi-3-mini-4k shapes (bench/checkpoints.py). Wall times depend on the
cores free: `build` runs N exports at once, so it gains wall time only with spare cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

DEFAULT_TARGETS = ("cpu-fp32", "cpu-int4", "cpu-int8", "mobile-int4")
POLL_S = 0.05

READ_PASS = """
import sys
from pathlib import Path
import numpy as np
from phi3_edge.exporter.weights import WeightStore
files = tuple(sorted(Path(sys.argv[1]).glob("*.safetensors")))
total = 0
with WeightStore(files) as store:
    for name in store.names():
        backend = store.backend_of(name)
        info = backend.infos[name]
        row = int(np.prod(info.shape[1:], dtype=np.int64))
        step = max(1, (1 << 22) // max(row, 1))  # ~16 MB of float32 per read, as the exporter streams
        for start in range(0, info.shape[0], step):
            total += backend.read_rows(info, start, min(info.shape[0], start + step)).nbytes
print(total)
"""
EXPORTS = """
import sys
from pathlib import Path
from phi3_edge import api
checkpoint, out = sys.argv[1], Path(sys.argv[2])
for target in sys.argv[3:]:
    api.export(checkpoint, target, out / target, force=True, progress=False, fidelity=False)
"""


def evict(checkpoint: Path) -> None:
    """Drop the checkpoint's pages from the page cache (only its files: nothing else is touched)."""
    for path in checkpoint.glob("*.safetensors"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run(argv: list[str], cwd: Path) -> tuple[float, int, int, int]:
    """(wall seconds, peak RSS bytes, bytes read from the block device, exit code) of a child process."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    polled, status, usage = 0, 0, None
    while True:
        try:
            root = psutil.Process(proc.pid)
            polled = max(polled, sum(p.memory_info().rss for p in (root, *root.children(recursive=True))))
        except psutil.Error:
            pass
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        time.sleep(POLL_S)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0 and proc.stderr is not None:
        print((proc.stderr.read().decode(errors="replace").strip().splitlines() or ["?"])[-1], file=sys.stderr)
    return wall, max(polled, usage.ru_maxrss * 1024), usage.ru_inblock * 512, code


def recipe_text(checkpoint: Path, out: Path, targets: list[str]) -> str:
    rows = "".join(f'[[targets]]\nname = "{t}"\nfidelity = false\n' for t in targets)
    return f'output = "{out}"\n[model]\nsource = "{checkpoint}"\nname = "m"\n{rows}'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--targets", nargs="+", default=list(DEFAULT_TARGETS))
    parser.add_argument("--work", type=Path, default=Path("/tmp/phi3-edge-bench/multi-target"))
    parser.add_argument("--no-build", action="store_true", help="skip the `phi3-edge build` rows")
    parser.add_argument("--singles", action="store_true", help="also export each target alone")
    parser.add_argument("--builds-only", action="store_true", help="only the read pass and the build rows")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from checkpoints import FIDELITY_SHAPE, tensor_shapes, write_fidelity_checkpoint

    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = write_fidelity_checkpoint(work, args.layers)
    size = sum(p.stat().st_size for p in checkpoint.glob("*.safetensors"))
    params = sum(math.prod(shape) for shape in tensor_shapes(FIDELITY_SHAPE, args.layers).values())
    out = work / "out"
    rows: list[tuple[str, float, int, int, int]] = []

    def measure(label: str, argv: list[str]) -> None:
        shutil.rmtree(out, ignore_errors=True)
        evict(checkpoint)
        wall, rss, read, code = run(argv, work)
        rows.append((label, wall, rss, read, code))
        print(f"  {label:<20} {wall:8.1f} s  peak RSS {rss / 2**30:5.2f} GB  disk read {read / 2**30:5.2f} GiB"
              + ("" if code == 0 else f"  FAILED ({code})"), flush=True)

    print(f"checkpoint: Phi-3-mini shapes, {args.layers} layers, {params / 1e9:.2f} B parameters, "
          f"{size / 2**30:.2f} GiB bf16 ({checkpoint})", flush=True)
    measure("read pass", [sys.executable, "-c", READ_PASS, str(checkpoint)])
    for target in args.targets if args.singles else ():
        measure(f"export {target}", [sys.executable, "-c", EXPORTS, str(checkpoint), str(out), target])
    if not args.builds_only:
        measure(f"{len(args.targets)} exports",
                [sys.executable, "-c", EXPORTS, str(checkpoint), str(out), *args.targets])
    if not args.no_build:
        recipe = work / "build.toml"
        recipe.write_text(recipe_text(checkpoint, out, args.targets), encoding="utf-8")
        command = [shutil.which("phi3-edge") or "phi3-edge", "build", str(recipe),
                   "--report-dir", str(work / "reports")]
        measure("build --sequential", [*command, "--sequential"])
        measure("build", command)
    shutil.rmtree(out, ignore_errors=True)
    if args.json:
        print(json.dumps([{"row": r[0], "wall_s": r[1], "peak_rss_bytes": r[2], "disk_read_bytes": r[3],
                           "exit": r[4]} for r in rows]))
    return 0 if all(code == 0 for *_, code in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())

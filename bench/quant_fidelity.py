"""Quantization fidelity: phi3-edge's int4/int8 algorithms beside onnxruntime-genai's builder int4, on one checkpoint.

Every row is measured against phi3-edge's cpu-fp32 export of the same weights: mean next-token KL(fp32 || row)
and top-1 agreement over the built-in evaluation prompts (phi3_edge.evaluate), plus the bytes of the weights
file (model.onnx.data). The checkpoint has real Phi-3-mini layer shapes and random bf16 weights (see
checkpoints.write_fidelity_checkpoint). Usage: python bench/quant_fidelity.py [--layers 2] [--json]

Real weights: python bench/quant_fidelity.py --real smollm2:135m [rtn,gptq,...] -- every recipe (rtn, hqq,
gptq, awq, int8, table-only) on held-out prose and Python beside llama.cpp's Q4_0/Q4_K_M/Q8_0 (bench/quant_real.py).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkpoints import FIDELITY_SHAPE, write_fidelity_checkpoint  # noqa: E402

from phi3_edge.api import export  # noqa: E402
from phi3_edge.evaluate import compare_artifacts  # noqa: E402

MB = 1e6
BUILDER = "genai-builder int4"
# Our rows: (label, target, quant_algo). cpu-fp32 is the reference every row is compared with.
EDGE_ROWS = (("phi3-edge cpu-int4 rtn", "cpu-int4", "rtn"), ("phi3-edge cpu-int4 hqq", "cpu-int4", "hqq"),
             ("phi3-edge cpu-int8 rtn", "cpu-int8", "rtn"))
# The builder's documented CPU int4 defaults, written out: RTN, block 32, accuracy level 4 (int8 compute).
BUILDER_ARGS = ["-p", "int4", "-e", "cpu", "--extra_options", "block_size=32", "accuracy_level=4"]


@dataclass
class Row:
    label: str
    kl: float | None
    top1: float | None
    data_bytes: int | None
    export_s: float
    error: str | None = None


def data_bytes(folder: Path) -> int:
    """Size of the external weights file(s): what a device reads per decode step, give or take the graph."""
    return sum(p.stat().st_size for p in folder.glob("*.onnx.data"))


def edge_export(checkpoint: Path, target: str, algo: str, out: Path) -> float:
    started = time.perf_counter()
    # fidelity=False: this bench measures every row itself, against one shared reference.
    export(str(checkpoint), target=target, output=out, force=True, progress=False, quant_algo=algo, fidelity=False)
    return time.perf_counter() - started


def builder_export(checkpoint: Path, out: Path, work: Path) -> tuple[float, str | None]:
    """Run the builder in a subprocess (it imports torch); returns (seconds, error or None)."""
    shutil.rmtree(out, ignore_errors=True)
    cache = work / "builder-cache"
    argv = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(checkpoint), "-o", str(out),
            "-c", str(cache), *BUILDER_ARGS]
    log = work / "quant-fidelity-builder.log"
    started = time.perf_counter()
    with log.open("wb") as handle:
        code = subprocess.run(argv, stdout=handle, stderr=subprocess.STDOUT, cwd=work).returncode
    shutil.rmtree(cache, ignore_errors=True)
    return time.perf_counter() - started, None if code == 0 else f"builder failed (rc {code}), see {log}"


def measure(label: str, folder: Path, reference: Path, seconds: float, error: str | None = None) -> Row:
    if error is not None:
        return Row(label, None, None, None, seconds, error)
    report = compare_artifacts(folder, reference)
    return Row(label, report.kl, report.top1, data_bytes(folder), seconds)


def run(checkpoint: Path, work: Path, with_builder: bool) -> tuple[list[Row], Row]:
    """All rows and the reference row (its KL is 0 by definition; its bytes are the fp32 size)."""
    reference = work / "qf-cpu-fp32"
    ref_row = Row("phi3-edge cpu-fp32 (reference)", 0.0, 1.0, None,
                  edge_export(checkpoint, "cpu-fp32", "rtn", reference))
    ref_row.data_bytes = data_bytes(reference)
    rows = []
    for label, target, algo in EDGE_ROWS:
        out = work / f"qf-{target}-{algo}"
        rows.append(measure(label, out, reference, edge_export(checkpoint, target, algo, out)))
    if with_builder:
        out = work / "qf-builder-int4"
        seconds, error = builder_export(checkpoint, out, work)
        rows.append(measure(BUILDER, out, reference, seconds, error))
    return rows, ref_row


def versus_builder(row: Row, rows: list[Row]) -> tuple[float, float] | None:
    """(KL ratio, bytes ratio) of a row to the builder's int4 row."""
    base = next((r for r in rows if r.label == BUILDER and r.error is None), None)
    if base is None or row.kl is None or not base.kl or not base.data_bytes or row.data_bytes is None:
        return None
    return row.kl / base.kl, row.data_bytes / base.data_bytes


def print_table(rows: list[Row], ref_row: Row, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for name in ("artifact", "KL vs fp32", "top-1", "weights (MB)", "KL / builder", "bytes / builder", "export (s)"):
        table.add_column(name, justify="left" if name == "artifact" else "right")
    for row in [ref_row, *rows]:
        rel = versus_builder(row, rows)
        if row.error:
            table.add_row(row.label, row.error, "", "", "", "", f"{row.export_s:.0f}")
            continue
        table.add_row(row.label, f"{row.kl:.4g}", f"{row.top1:.1%}", f"{row.data_bytes / MB:.1f}",
                      f"{rel[0]:.2f}x" if rel else "-", f"{rel[1]:.3f}x" if rel else "-", f"{row.export_s:.0f}")
    Console(width=max(Console().width, 120)).print(table)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2, help="decoder layers in the generated checkpoint")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--work", type=Path, default=Path("/tmp/phi3-edge-bench"), help="checkpoint cache, outputs")
    parser.add_argument("--no-builder", action="store_true", help="skip onnxruntime-genai's builder row")
    parser.add_argument("--keep", action="store_true", help="keep the exported folders under --work")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--real"]:  # the real-weights table: its own options (bench/quant_real.py)
        import quant_real

        return quant_real.main(["--model", argv[1], *argv[2:]])
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    checkpoint = write_fidelity_checkpoint(args.work, args.layers, args.seed)
    try:
        rows, ref_row = run(checkpoint, args.work, not args.no_builder)
    finally:
        if not args.keep:
            for folder in args.work.glob("qf-*"):
                shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        print(json.dumps({"checkpoint": str(checkpoint), "layers": args.layers, "seed": args.seed,
                          "shape": asdict(FIDELITY_SHAPE), "cpu_count": os.cpu_count(), "reference": asdict(ref_row),
                          "rows": [{**asdict(r), "vs_builder": versus_builder(r, rows)} for r in rows]}, indent=2))
    else:
        print_table(rows, ref_row, f"quantization fidelity, Phi-3-mini shapes, {args.layers} layer(s), random "
                                   f"bf16 weights (seed {args.seed}), vs phi3-edge cpu-fp32")
    return 0 if all(r.error is None for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

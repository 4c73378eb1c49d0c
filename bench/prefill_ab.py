"""TTFT with and without logits_to_keep: the same export run as a folder exported before the input existed.

    checkpoint (bench/checkpoints.py, real shapes) --export--> new  (logits_to_keep: the runtime keeps 1 row)
                                                   --strip--> old  (the same graph minus Neg/Slice/input:
                                                                    what the exporter wrote before it; every
                                                                    prompt position goes through lm_head)

Each round runs both folders once, in alternating order (a machine that gets busier or quieter favours
neither); each run is a fresh process (sessions sharing a process share its CPUs) that loads the folder, warms
up, then times --repeats prefills (generator.prefill_seconds: prompt in, first token out) and keeps their
median. Per round new / old; the table shows the median ratio beside the median figures, and whether both
folders chose the same greedy tokens. --profile adds onnxruntime's profiler per op type over one prefill of
each folder (kernel time only, read-only: no option changes).

    python bench/prefill_ab.py --layers 8 --shape mini --rounds 5 [--profile] [--json]
    python bench/prefill_ab.py --folder build/cpu-int4      # an existing export (with logits_to_keep)
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkpoints import ensure_checkpoint  # noqa: E402

LOGITS_TO_KEEP = "logits_to_keep"  # phi3_edge.io_spec.LOGITS_TO_KEEP, spelled here for the stripping worker
SHORT_GENERATION = 8  # greedy tokens compared between the folders


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, help="an exported folder with logits_to_keep (default: export one)")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--shape", default="mini", help="a bench/checkpoints.py SHAPES key")
    parser.add_argument("--target", default="cpu-int4")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="timed prefills per run (median)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/phi3-edge-bench"))
    parser.add_argument("--profile", action="store_true", help="per-op-type kernel time of one prefill each")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # internal: one timed run of a folder
    return parser.parse_args(argv)


def exported_folder(args: argparse.Namespace) -> Path:
    if args.folder is not None:
        return Path(args.folder)
    from phi3_edge.api import export

    checkpoint = ensure_checkpoint(args.work, args.layers, args.shape)
    folder = args.work / f"{args.shape}-L{args.layers}-{args.target}-logits-to-keep"
    if not (folder / "manifest.json").is_file():
        export(str(checkpoint), target=args.target, output=folder, progress=False)
    return folder


def without_logits_to_keep(folder: Path, target: Path) -> Path:
    """A copy of `folder` with the graph as exported before logits_to_keep (the final norm reads the last
    layer's values directly) and manifest.json's io_signature to match; run it with verify=False."""
    import onnx

    if (target / "manifest.json").is_file():
        return target
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(folder, target)
    model = onnx.load(str(target / "model.onnx"), load_external_data=False)
    graph = model.graph
    added = [n for n in graph.node if LOGITS_TO_KEEP in n.input or n.name.startswith("logits_to_keep/")]
    if not added:
        raise SystemExit(f"{folder}: no {LOGITS_TO_KEEP} in the graph (exported before it?)")
    unsliced = {n.output[0]: n.input[0] for n in added if n.op_type == "Slice"}  # (B, k, H) -> (B, S, H)
    for node in added:
        graph.node.remove(node)
    for node in graph.node:
        node.input[:] = [unsliced.get(name, name) for name in node.input]
    orphans = {name for node in added for name in node.input} - _reads(graph)  # the Slice's end constant
    graph.input.remove(next(v for v in graph.input if v.name == LOGITS_TO_KEEP))
    kept = [t for t in graph.initializer if t.name not in orphans]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.save(model, str(target / "model.onnx"))
    manifest = json.loads((target / "manifest.json").read_text(encoding="utf-8"))
    manifest["io_signature"] = [s for s in manifest["io_signature"] if s["name"] != LOGITS_TO_KEEP]
    (target / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return target

def _reads(graph: Any) -> set[str]:
    """Every value a node reads, If/Loop bodies included (they read outer initializers too)."""
    names: set[str] = set()
    for node in graph.node:
        names.update(node.input)
        for attribute in node.attribute:
            for body in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                names |= _reads(body)
    return names


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One folder, one fresh process: load, warm up, the median of --repeats prefills, a short greedy run."""
    from phi3_edge.edge_runtime.bench import bench_prompt
    from phi3_edge.edge_runtime.model import EdgeModel

    model = EdgeModel.load(args.worker, intra_op_threads=args.threads, verify=False)
    prompt = bench_prompt(model, args.prompt_len)
    model.generate_ids(prompt, 2, ignore_eos=True)  # warm-up: arena growth, kernel setup
    ttfts = [model.generate_ids(prompt, 1, ignore_eos=True).prefill_seconds for _ in range(args.repeats)]
    tokens = model.generate_ids(prompt, SHORT_GENERATION, ignore_eos=True).token_ids
    layout = getattr(model.session, "layout", None)  # DecoderSession's CacheLayout
    return {"ttft_s": statistics.median(ttfts), "tokens": tokens,
            "keeps_logits": bool(layout is not None and layout.keeps_logits)}


def measure(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", str(folder), "--threads", str(args.threads),
               "--prompt-len", str(args.prompt_len), "--repeats", str(args.repeats)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_rounds(folders: dict[str, Path], args: argparse.Namespace) -> dict[str, Any]:
    samples: dict[str, list[float]] = {name: [] for name in folders}
    runs: dict[str, dict[str, Any]] = {}
    for index in range(args.rounds):
        order = list(folders) if index % 2 == 0 else list(folders)[::-1]
        for name in order:
            runs[name] = measure(folders[name], args)
            samples[name].append(runs[name]["ttft_s"])
    ratios = [new / old for new, old in zip(samples["new"], samples["old"], strict=True)]
    return {"ttft_ms": {name: statistics.median(s) * 1000 for name, s in samples.items()},
            "samples_ms": {name: [round(x * 1000, 1) for x in s] for name, s in samples.items()},
            "ratio_new_over_old": statistics.median(ratios), "ratios": [round(r, 3) for r in ratios],
            "keeps_logits": {name: run["keeps_logits"] for name, run in runs.items()},
            "same_tokens": runs["new"]["tokens"] == runs["old"]["tokens"]}


def prefill_profile(folder: Path, args: argparse.Namespace) -> dict[str, float]:
    """Kernel milliseconds per op type over the last model run of a profiled session: one prefill. MatMul rows
    are split by projection (decode_profile.op_group: qkv, o, gate_up, down, lm_head)."""
    from decode_profile import op_group, profiled_generation

    _, profile = profiled_generation(folder, args.threads, args.prompt_len, 1)  # warm-up, then 1 prefill
    events = json.loads(profile.read_text(encoding="utf-8"))
    run = [e for e in events if e.get("name") == "model_run"][-1]
    per_op: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time") \
                and run["ts"] <= event["ts"] <= run["ts"] + run["dur"]:
            op = event["args"].get("op_name", "?")
            group = op_group(op, event["name"][: -len("_kernel_time")]) if op.startswith("MatMul") else op
            per_op[group] += event["dur"] / 1000
    per_op["(model_run)"] = run["dur"] / 1000
    profile.unlink()
    return dict(sorted(per_op.items(), key=lambda item: -item[1]))


def print_tables(result: dict[str, Any], args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 120))
    title = (f"{result['folder']}: prompt {args.prompt_len}, {args.threads} threads, median of {args.rounds} "
             f"alternating rounds (each: median of {args.repeats} prefills); load before {result['load_before']}")
    table = Table("folder", "logits_to_keep", "TTFT ms", "per-round ms", title=title)
    for name in ("old", "new"):
        table.add_row(name, "fed 1" if result["keeps_logits"][name] else "absent (every row)",
                      f"{result['ttft_ms'][name]:.0f}", " ".join(map(str, result["samples_ms"][name])))
    console.print(table)
    console.print(f"TTFT new / old: median {result['ratio_new_over_old']:.3f} (per round {result['ratios']}); "
                  f"greedy tokens {'same' if result['same_tokens'] else 'DIFFERENT'}; "
                  f"load after {result['load_after']}")
    for name, ops in result.get("profile", {}).items():
        total = ops.get("(model_run)", 0.0)
        rows = Table("op type", "ms", "% of run", title=f"{name}: one prefill's kernel time per op type")
        for op, ms in list(ops.items())[:14]:
            rows.add_row(op, f"{ms:.1f}", f"{100 * ms / total:.1f}" if total else "-")
        console.print(rows)


def _load() -> str:
    import os

    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    new = exported_folder(args)
    folders = {"old": without_logits_to_keep(new, new.with_name(new.name + "-before")), "new": new}
    result: dict[str, Any] = {"folder": new.name, "load_before": _load()}
    result.update(run_rounds(folders, args))
    if args.profile:
        result["profile"] = {name: prefill_profile(folder, args) for name, folder in folders.items()}
    result["load_after"] = _load()
    (args.work / "prefill_ab.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_tables(result, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where a decode step's time goes: onnxruntime's profiler per op (group), ORT's own overhead, the Python loop.

One greedy generation (--prompt-len, --gen-len, --threads) through our runtime with ORT profiling on. For the
decode steps only (not the prefill), each step's wall time (measured around forward.run + sampling in the
generation loop) splits into

    Python loop      wall - model_run        binding inputs, sampling, the generator between steps
    ORT overhead     model_run - kernels     executor scheduling, allocation, thread-pool wake-ups
    kernels          per op group            MatMulNBits per projection (qkv, o, gate_up, down, lm_head),
                                             GroupQueryAttention, norms, everything else

MatMulNBits rows also show the bandwidth their weights were read at (initializer bytes / kernel time) beside
the copy bandwidth bench.measure_bandwidth() gets with the same threads: the gap to 1.0 is what a faster
kernel or layout could win. Usage: python bench/decode_profile.py FOLDER [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

NORM_OPS = ("SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "LayerNormalization",
            "SkipLayerNormalization", "RMSNormalization")
# Our node names are "<tensor>/MatMulNBits", e.g. "model.layers.3.mlp.down_proj/MatMulNBits".
PROJECTION = re.compile(r"(qkv_proj|q_proj|k_proj|v_proj|o_proj|gate_up_proj|gate_proj|up_proj|down_proj|lm_head)")


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--gen-len", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


def op_group(op: str, node: str) -> str:
    if op.startswith("MatMul"):
        match = PROJECTION.search(node)
        return f"{op} {match.group(1) if match else 'other'}"
    if op in NORM_OPS:
        return "norms"
    if op.endswith("Attention"):
        return op
    return "other ops"


def initializer_bytes(model_file: Path) -> dict[str, int]:
    """Bytes of the initializers each node reads (external data lengths), by node name."""
    import onnx

    model = onnx.load(str(model_file), load_external_data=False)
    sizes: dict[str, int] = {}
    for init in model.graph.initializer:
        external = {entry.key: entry.value for entry in init.external_data}
        sizes[init.name] = int(external["length"]) if "length" in external else len(init.raw_data)
    return {node.name: sum(sizes.get(name, 0) for name in node.input) for node in model.graph.node}


def profiled_generation(folder: Path, threads: int, prompt_len: int, gen_len: int) -> tuple[list[float], Path]:
    """Wall seconds of each generated token (first = prefill) and the ORT profile file of the session."""
    import onnxruntime as ort

    from phi3_edge.edge_runtime import session as session_module
    from phi3_edge.edge_runtime.bench import bench_prompt
    from phi3_edge.edge_runtime.model import EdgeModel
    from phi3_edge.edge_runtime.threads import DEFAULT_TUNING, SessionTuning

    original = session_module.session_options

    def profiling_options(intra_op_threads: int | None = None, tuning: SessionTuning = DEFAULT_TUNING
                          ) -> ort.SessionOptions:
        options = original(intra_op_threads, tuning)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path("/tmp") / "phi3-edge-decode-profile")
        return options

    session_module.session_options = profiling_options  # type: ignore[assignment]  # bench-only hook
    try:
        model = EdgeModel.load(folder, intra_op_threads=threads, verify=False)
    finally:
        session_module.session_options = original  # type: ignore[assignment]
    prompt = bench_prompt(model, prompt_len)
    for _ in model.generator(prompt, 2, ignore_eos=True):  # warm-up: arena growth and kernel setup
        pass
    walls = list(_timed_tokens(model.generator(prompt, gen_len, ignore_eos=True)))
    profile = Path(model.session.ort_session.end_profiling())  # type: ignore[attr-defined]
    return walls, profile


def _timed_tokens(tokens: Any) -> Iterator[float]:
    """Seconds from asking for each token to getting it: the whole loop, model and Python alike."""
    iterator = iter(tokens)
    while True:
        started = time.perf_counter()
        try:
            next(iterator)
        except StopIteration:
            return
        yield time.perf_counter() - started


def decode_breakdown(profile: Path, decode_steps: int, walls: list[float]) -> dict[str, Any]:
    """Per-group milliseconds per decode step, from the last `decode_steps` model runs of the profile."""
    events = json.loads(profile.read_text(encoding="utf-8"))
    runs = [e for e in events if e.get("name") == "model_run"][-decode_steps:]
    start = runs[0]["ts"]
    kernels = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")
               and e["ts"] >= start]
    per_group: dict[str, float] = defaultdict(float)
    per_node: dict[str, float] = defaultdict(float)
    for event in kernels:
        node = event["name"][: -len("_kernel_time")]
        per_group[op_group(event["args"].get("op_name", "?"), node)] += event["dur"]
        per_node[node] += event["dur"]
    steps = len(runs)
    run_us = sum(r["dur"] for r in runs)
    wall_us = sum(walls[-steps:]) * 1e6
    kernel_us = sum(per_group.values())
    groups = {name: us / steps / 1000 for name, us in per_group.items()}
    groups["ORT overhead (run - kernels)"] = (run_us - kernel_us) / steps / 1000
    groups["Python loop (wall - run)"] = (wall_us - run_us) / steps / 1000
    return {"steps": steps, "wall_ms": wall_us / steps / 1000, "groups": groups,
            "node_ms": {node: us / steps / 1000 for node, us in per_node.items()}}


def bandwidth_by_group(node_ms: dict[str, float], node_bytes: dict[str, int], ops: dict[str, str]) -> dict[str, float]:
    """GB/s at which each MatMul group read its initializers."""
    seconds: dict[str, float] = defaultdict(float)
    moved: dict[str, int] = defaultdict(int)
    for node, ms in node_ms.items():
        group = op_group(ops.get(node, "?"), node)
        if group.startswith("MatMul"):
            seconds[group] += ms / 1000
            moved[group] += node_bytes.get(node, 0)
    return {g: moved[g] / seconds[g] / 1e9 for g in seconds if seconds[g] > 0}


def node_ops(model_file: Path) -> dict[str, str]:
    import onnx

    return {n.name: n.op_type for n in onnx.load(str(model_file), load_external_data=False).graph.node}


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    from phi3_edge.edge_runtime.bench import measure_bandwidth

    walls, profile = profiled_generation(args.folder, args.threads, args.prompt_len, args.gen_len)
    result = decode_breakdown(profile, args.gen_len - 1, walls)
    model_file = args.folder / "model.onnx"
    # Profiled names are the optimized graph's; fused nodes keep their first node's name in ORT 1.2x.
    result["bandwidth_gbps"] = bandwidth_by_group(result.pop("node_ms"), initializer_bytes(model_file),
                                                  node_ops(model_file))
    result["copy_bandwidth_gbps"] = measure_bandwidth(512, threads=args.threads) / 1e9
    profile.unlink()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result, args)
    return 0


def print_table(result: dict[str, Any], args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    wall = result["wall_ms"]
    title = (f"{args.folder.name}: decode step {wall:.2f} ms ({1000 / wall:.1f} tok/s), {result['steps']} steps, "
             f"{args.threads} threads, after a {args.prompt_len}-token prompt; copy bandwidth "
             f"{result['copy_bandwidth_gbps']:.1f} GB/s")
    table = Table("where", "ms / token", "% of step", "weights read GB/s", "vs copy bandwidth", title=title)
    for name, ms in sorted(result["groups"].items(), key=lambda item: -item[1]):
        gbps = result["bandwidth_gbps"].get(name)
        table.add_row(name, f"{ms:.3f}", f"{100 * ms / wall:.1f}", f"{gbps:.1f}" if gbps else "-",
                      f"{gbps / result['copy_bandwidth_gbps']:.2f}" if gbps else "-")
    Console(width=max(Console().width, 120)).print(table)


if __name__ == "__main__":
    sys.exit(main())

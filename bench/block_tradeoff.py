"""Block size, accuracy level and head/table precision per tensor group: measured speed against measured KL.

1. Speed: single-op ONNX graphs (onnx.helper, random symmetric int4/int8 codes, fp32 scales) at Phi-3-mini and
   SmolLM2-135M shapes, M=1 (decode) and M=128 (prefill), block 32/64/128 x accuracy_level 0/4, 2 threads.
   Each graph holds `copies` distinct weights of one shape (parallel nodes on one input) so the weights
   stream from memory as in a model (one small matrix called again would sit in cache). Reported per node:
   median time, ratio to block 32 / level 4, weight GB/s and GB/s over a numpy copy's (STREAM convention:
   read + written bytes) measured in the same run. Also packed vs split QKV / gate-up, and the embedding
   lookup: Gather fp32 vs GatherBlockQuantized int8/int4 at Phi-3-mini's 32064 x 3072 table.
2. Accuracy: smollm2:135m real weights through bench/quant_real.Bench (layer-streamed fp32 reference, weights
   RTN-quantized and dequantized in numpy; level-4 activation rounding is not in these figures). One tensor
   group at block 64/128 (the rest block 32), int8 head/table, and the lookup alone in fp32/int8 (the
   untied-table question). Each row gets the decode MatMul time the change saves (from part 1's figures).

    python bench/block_tradeoff.py            # both parts (28 min measured at load average 10-16 on 2 cores)
    python bench/block_tradeoff.py --quick    # 3 rounds, accuracy rows at block 128 only
    python bench/block_tradeoff.py --no-accuracy --m 1 --rounds 9 --json decode.json   # decode timings only
    python bench/block_tradeoff.py --speed-from full.json decode.json --accuracy-from full.json  # recombine

On a loaded machine the decode (M=1) figures swing by +-20 % between runs (2 spinning ORT threads lose their
core); prefill (M=128) ratios and level 0 vs 4 repeat. Compare ratios within one run, or rerun part 1 alone.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from phi3_edge.quantize.sensitivity import matmul_nbits_bytes

sys.path.insert(0, str(Path(__file__).resolve().parent))

MB = 1e6
GROUPS = ("qkv", "o", "gate_up", "down", "head")  # head = lm_head + the (tied) embedding table


@dataclass(frozen=True)
class Shape:
    model: str
    group: str
    k: int
    n: int
    per_token: int  # how many such matrices one decode step streams (layers; 1 for lm_head)


SHAPES = (
    Shape("phi3-mini", "qkv", 3072, 9216, 32), Shape("phi3-mini", "o", 3072, 3072, 32),
    Shape("phi3-mini", "gate_up", 3072, 16384, 32), Shape("phi3-mini", "down", 8192, 3072, 32),
    Shape("phi3-mini", "head", 3072, 32064, 1),
    Shape("smollm2", "qkv", 576, 960, 30), Shape("smollm2", "o", 576, 576, 30),
    Shape("smollm2", "gate_up", 576, 3072, 30), Shape("smollm2", "down", 1536, 576, 30),
    Shape("smollm2", "head", 576, 49152, 1),
)
STREAM_BYTES = 64 << 20  # per graph: well past the L2/L3 a single matrix would live in


def nbits_bytes(k: int, n: int, bits: int, block: int) -> int:
    """Symmetric MatMulNBits bytes (codes with K padded to whole blocks, fp32 scales), as the exporter stores."""
    return matmul_nbits_bytes(n, k, bits, block)


def copies_for(shape: Shape) -> int:
    return max(1, min(64, math.ceil(STREAM_BYTES / nbits_bytes(shape.k, shape.n, 4, 32))))


# --- graphs ------------------------------------------------------------------------------------------------

def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[str],
           initializers: list[TensorProto]) -> bytes:
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
    graph = helper.make_graph(nodes, "bench", inputs, outs, initializers)
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=10)
    return bytes(model.SerializeToString())


def _nbits_node(rng: np.random.Generator, x: str, out: str, k: int, n: int, bits: int, block: int, level: int,
                inits: list[TensorProto]) -> onnx.NodeProto:
    blocks = -(-k // block)
    codes = rng.integers(0, 256, (n, blocks, block * bits // 8), dtype=np.uint8)  # random nibbles/bytes
    scales = rng.uniform(1e-3, 1e-2, (n, blocks)).astype(np.float32)
    inits += [numpy_helper.from_array(codes, f"{out}.B"), numpy_helper.from_array(scales, f"{out}.scales")]
    return helper.make_node("MatMulNBits", [x, f"{out}.B", f"{out}.scales"], [out], domain="com.microsoft", K=k, N=n,
                            bits=bits, block_size=block, accuracy_level=level)


def matmul_graph(k: int, widths: Sequence[int], copies: int, bits: int, block: int, level: int, seed: int) -> bytes:
    """`copies` x one MatMulNBits per width, all on input A (M, K): distinct random weights for each node."""
    rng = np.random.default_rng(seed)
    inits: list[TensorProto] = []
    nodes = [_nbits_node(rng, "A", f"y{c}_{i}", k, n, bits, block, level, inits)
             for c in range(copies) for i, n in enumerate(widths)]
    a = helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])
    return _model(nodes, [a], [n.output[0] for n in nodes], inits)


def gather_graph(vocab: int, hidden: int, bits: int | None, block: int, seed: int) -> bytes:
    """bits None: Gather over an fp32 table; else GatherBlockQuantized over uint8 codes (exporter's layout)."""
    rng = np.random.default_rng(seed)
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [1, "S"])
    if bits is None:
        table = rng.standard_normal((vocab, hidden), dtype=np.float32)
        node = helper.make_node("Gather", ["table", "ids"], ["rows"], axis=0)
        return _model([node], [ids], ["rows"], [numpy_helper.from_array(table, "table")])
    codes = rng.integers(0, 256, (vocab, hidden * bits // 8), dtype=np.uint8)
    scales = rng.uniform(1e-3, 1e-2, (vocab, hidden // block)).astype(np.float32)
    node = helper.make_node("GatherBlockQuantized", ["codes", "ids", "scales"], ["rows"], domain="com.microsoft",
                            gather_axis=0, quantize_axis=1, block_size=block, bits=bits)
    inits = [numpy_helper.from_array(codes, "codes"), numpy_helper.from_array(scales, "scales")]
    return _model([node], [ids], ["rows"], inits)


SPIN = False  # intra-op spinning: off like phi3_edge's SessionTuning default (--spin turns it on)


def session(model: bytes, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if SPIN else "0")
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def runner(sess: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> Callable[[], None]:
    """One call through io_binding: outputs stay in ORT's arena (no numpy copy of 64 outputs per call)."""
    binding = sess.io_binding()
    for name, value in feeds.items():
        binding.bind_cpu_input(name, value)
    for out in sess.get_outputs():
        binding.bind_output(out.name, "cpu")
    return lambda: sess.run_with_iobinding(binding)


# --- timing ------------------------------------------------------------------------------------------------

def time_alternating(runs: dict[Any, Callable[[], None]], rounds: int,
                     sample_s: float) -> dict[Any, tuple[float, float]]:
    """(median, min) seconds per call of each run; rounds rotate and reverse the order (the machine is shared:
    the min is the less load-sensitive estimate of the uncontended cost, the median the typical one)."""
    calls: dict[Any, int] = {}
    for key, fn in runs.items():
        fn()
        started = time.perf_counter()
        fn()
        calls[key] = max(1, round(sample_s / max(time.perf_counter() - started, 1e-6)))
    samples: dict[Any, list[float]] = {key: [] for key in runs}
    keys = list(runs)
    for r in range(rounds):
        order = keys[r % len(keys):] + keys[:r % len(keys)]
        for key in reversed(order) if r % 2 else order:
            started = time.perf_counter()
            for _ in range(calls[key]):
                runs[key]()
            samples[key].append((time.perf_counter() - started) / calls[key])
    return {key: (statistics.median(v), min(v)) for key, v in samples.items()}


def copy_bandwidth(repeats: int = 7) -> float:
    """GB/s of a numpy copy of a 256 MB array, STREAM convention (bytes read + bytes written)."""
    src = np.ones(256 << 20, dtype=np.uint8)
    dst = np.empty_like(src)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - started)
    return 2 * src.nbytes / statistics.median(times) / 1e9


@dataclass
class SpeedRow:
    model: str
    group: str
    k: int
    n: int
    m: int
    bits: int
    block: int
    level: int
    ms: float  # per matrix, median
    ratio: float  # ms / ms at int4 block 32, level 4 (same shape and M)
    weight_mb: float
    gbps: float
    of_copy: float
    ms_min: float = float("nan")
    ratio_min: float = float("nan")


def speed_rows(shapes: Sequence[Shape], ms: Sequence[int], blocks: Sequence[int], levels: Sequence[int],
               rounds: int, threads: int, copy_gbps: float) -> list[SpeedRow]:
    rows: list[SpeedRow] = []
    for shape in shapes:
        copies = copies_for(shape)
        configs = [(4, b, lv) for b in blocks for lv in levels]
        if shape.group == "head":
            configs.append((8, 32, 4))  # int8 head (cpu-int8's format; level 0 at 8 bits is ~26x slower)
        sessions = {c: session(matmul_graph(shape.k, [shape.n], copies, *c, seed=1), threads) for c in configs}
        for m in ms:
            a = np.random.default_rng(0).standard_normal((m, shape.k), dtype=np.float32)
            runs = {c: runner(s, {"A": a}) for c, s in sessions.items()}
            med = time_alternating(runs, rounds, 0.02 if m == 1 else 0.1)
            base, base_min = med[(4, 32, 4)]
            for (bits, block, level), (seconds, fastest) in med.items():
                per = seconds / copies
                nbytes = nbits_bytes(shape.k, shape.n, bits, block)
                rows.append(SpeedRow(shape.model, shape.group, shape.k, shape.n, m, bits, block, level, per * 1e3,
                                     seconds / base, nbytes / MB, nbytes / per / 1e9, nbytes / per / 1e9 / copy_gbps,
                                     fastest / copies * 1e3, fastest / base_min))
            print(f"  timed {shape.model} {shape.group} M={m}", file=sys.stderr, flush=True)
        del sessions
    return rows


def packed_rows(rounds: int, threads: int, ms: Sequence[int]) -> list[dict[str, Any]]:
    """One packed MatMulNBits vs its parts as separate nodes (block 32, level 4), per decode/prefill call."""
    cases = [("phi3-mini", "qkv", 3072, [9216], [3072, 3072, 3072]),
             ("phi3-mini", "gate_up", 3072, [16384], [8192, 8192]),
             ("smollm2", "qkv", 576, [960], [576, 192, 192]), ("smollm2", "gate_up", 576, [3072], [1536, 1536])]
    out = []
    for model, group, k, packed, split in cases:
        copies = copies_for(Shape(model, group, k, packed[0], 1))
        sessions = {kind: session(matmul_graph(k, widths, copies, 4, 32, 4, seed=2), threads)
                    for kind, widths in (("packed", packed), ("split", split))}
        for m in ms:
            a = np.random.default_rng(0).standard_normal((m, k), dtype=np.float32)
            med = time_alternating({kind: runner(s, {"A": a}) for kind, s in sessions.items()}, rounds,
                                   0.02 if m == 1 else 0.1)
            (packed_s, packed_min), (split_s, split_min) = med["packed"], med["split"]
            out.append({"model": model, "group": group, "m": m, "packed_ms": packed_s / copies * 1e3,
                        "split_ms": split_s / copies * 1e3, "split_over_packed": split_s / packed_s,
                        "split_over_packed_min": split_min / packed_min})
    return out


def gather_rows(rounds: int, threads: int, vocab: int = 32064, hidden: int = 3072) -> list[dict[str, Any]]:
    """Phi-3-mini's untied table: fp32 Gather vs GatherBlockQuantized, 1 id (decode) and 128 ids (prefill)."""
    kinds = {"fp32 Gather": (None, 32), "int8 GBQ b32": (8, 32), "int4 GBQ b32": (4, 32), "int4 GBQ b128": (4, 128)}
    sessions = {name: session(gather_graph(vocab, hidden, bits, block, seed=3), threads)
                for name, (bits, block) in kinds.items()}
    out = []
    for s in (1, 128):
        ids = np.random.default_rng(s).integers(0, vocab, (1, s), dtype=np.int64)
        med = time_alternating({n: runner(x, {"ids": ids}) for n, x in sessions.items()}, rounds, 0.02)
        for name, (bits, block) in kinds.items():
            nbytes = vocab * hidden * 4 if bits is None else nbits_bytes(hidden, vocab, bits, block)
            out.append({"table": name, "ids": s, "us": med[name][0] * 1e6, "us_min": med[name][1] * 1e6,
                        "MB": nbytes / MB, "ratio_to_fp32": med[name][0] / med["fp32 Gather"][0]})
    return out


def decode_ms(rows: Sequence[SpeedRow], model: str, plan: dict[str, tuple[int, int]], level: int = 4,
              stat: str = "ms", m: int = 1) -> float:
    """MatMul ms per call of `model` (m=1: one decode token) with each group's (bits, block); others int4 b32."""
    total = 0.0
    for shape in (s for s in SHAPES if s.model == model):
        bits, block = plan.get(shape.group, (4, 32))
        hit = [r for r in rows if r.model == model and r.group == shape.group and r.m == m and r.bits == bits
               and r.block == block and r.level == level]
        if not hit:
            return float("nan")
        total += getattr(hit[0], stat) * shape.per_token  # stat: "ms" (median) or "ms_min"
    return total


# --- accuracy (real weights) -------------------------------------------------------------------------------

Fmt = tuple[int, int]  # (bits, block)
BASE: Fmt = (4, 32)


@dataclass(frozen=True)
class Plan:
    label: str
    body: dict[str, Fmt]  # group -> format; missing groups: BASE
    head: Fmt | None = BASE  # lm_head MatMulNBits (None: fp32)
    lookup: Fmt | None = BASE  # embedding rows (None: fp32 Gather)

    def speed_plan(self) -> dict[str, Fmt]:
        return {**self.body, **({"head": self.head} if self.head else {})}


def group_of(name: str) -> str | None:
    for suffix, group in (("q_proj", "qkv"), ("k_proj", "qkv"), ("v_proj", "qkv"), ("qkv_proj", "qkv"),
                          ("o_proj", "o"), ("gate_proj", "gate_up"), ("up_proj", "gate_up"),
                          ("gate_up_proj", "gate_up"), ("down_proj", "down")):
        if name.endswith(f".{suffix}.weight"):
            return group
    return None


def plan_map(plan: Plan) -> Any:
    from phi3_edge.quantize.blockwise import dequantize, quantize_rtn
    from phi3_edge.reference.checkpoint_side import EMBED_NAME

    def rtn(rows: np.ndarray, fmt: Fmt | None) -> np.ndarray:
        return rows if fmt is None else dequantize(quantize_rtn(rows, fmt[0], fmt[1], True))

    def mapped(name: str, rows: np.ndarray) -> np.ndarray:
        if name == EMBED_NAME and rows.shape[0] == 1:  # CheckpointSide.embed reads one row per token id
            return rtn(rows, plan.lookup)
        if name in (EMBED_NAME, "lm_head.weight"):  # lm_head chunks (the tied table's other use)
            return rtn(rows, plan.head)
        group = group_of(name)
        return rows if group is None else rtn(rows, plan.body.get(group, BASE))
    return mapped


def plan_bytes(spec: Any, plan: Plan) -> int:
    """Weight bytes as the exporter stores them: MatMulNBits codes + fp32 scales; a tied table stored once
    when lookup and head share a format."""
    h, i, kv, layers = spec.hidden_size, spec.intermediate_size, spec.num_kv_heads * spec.head_dim, spec.num_layers
    total = 0
    for group, (k, n) in {"qkv": (h, h + 2 * kv), "o": (h, h), "gate_up": (h, 2 * i), "down": (i, h)}.items():
        total += layers * nbits_bytes(k, n, *plan.body.get(group, BASE))

    def table(fmt: Fmt | None) -> int:
        return spec.vocab_size * h * 4 if fmt is None else nbits_bytes(h, spec.vocab_size, *fmt)
    shared = spec.tie_word_embeddings and plan.head == plan.lookup
    return total + table(plan.head) + (0 if shared else table(plan.lookup))


def plans(hidden: int, blocks: Sequence[int]) -> list[Plan]:
    out = [Plan("cpu-int4 today: int4 b32 everywhere, tied table int4 b32", {})]
    for group in GROUPS:
        for block in blocks:
            if group == "head":
                # the exporter quantizes the table only with whole blocks per row (quantize/recipe.py _table)
                lookup = (4, block) if hidden % block == 0 else None
                note = "" if lookup else f" (table fp32: {hidden} % {block})"
                out.append(Plan(f"lm_head+table at b{block}{note}", {}, (4, block), lookup))
            else:
                out.append(Plan(f"{group} at b{block}", {group: (4, block)}))
    if 128 in blocks:
        lookup = (4, 128) if hidden % 128 == 0 else None
        out.append(Plan("all at b128 (builder-like)", dict.fromkeys(GROUPS[:4], (4, 128)), (4, 128), lookup))
    if 64 in blocks:  # composites proposed from the single-group rows (measured: not exactly additive)
        wide = {"qkv": (4, 64), "o": (4, 64), "gate_up": (4, 64)}
        out += [Plan("int8 head/table + gate_up b64", {"gate_up": (4, 64)}, (8, 32), (8, 32)),
                Plan("int8 head/table + qkv,o,gate_up b64", wide, (8, 32), (8, 32)),
                Plan("int8 head/table + qkv,o,gate_up,down b64", {**wide, "down": (4, 64)}, (8, 32), (8, 32))]
    out += [Plan("lm_head+table int8 b32", {}, (8, 32), (8, 32)),
            Plan("lookup fp32, head int4 (untied default analog)", {}, BASE, None),
            Plan("lookup int8, head int4", {}, BASE, (8, 32))]
    return out


def accuracy_rows(blocks: Sequence[int], windows: int) -> list[dict[str, Any]]:
    from quant_real import Bench

    bench = Bench("smollm2:135m")
    index = [(name, j) for name, seqs in bench.eval.items() for j in range(len(seqs))]
    picked = [n for n, (_, j) in enumerate(index) if j < windows]  # Bench's order: text by text
    bench.eval = {name: seqs[:windows] for name, seqs in bench.eval.items()}
    bench.all_eval = [bench.all_eval[n] for n in picked]
    bench.ref_states = [bench.ref_states[n] for n in picked]
    out: list[dict[str, Any]] = []
    base: dict[str, Any] = {}
    for plan in plans(bench.spec.hidden_size, blocks):
        started = time.perf_counter()
        row = bench.measure(plan.label, plan_map(plan), plan_bytes(bench.spec, plan), 0.0)
        entry: dict[str, Any] = {"label": plan.label, "kl": row.kl, "top1": row.top1,
                                 **{f"ppl_{k}": v for k, v in row.ppl_gap.items()}, "MB": row.weight_bytes / MB,
                                 "speed_plan": plan.speed_plan(), "seconds": time.perf_counter() - started}
        base = base or entry
        entry["dkl"] = entry["kl"] - base["kl"]
        out.append(entry)
        print(f"  {plan.label}: KL {row.kl:.4f} ({entry['seconds']:.0f} s)", file=sys.stderr, flush=True)
    return out


# --- printing ----------------------------------------------------------------------------------------------

def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for j, name in enumerate(columns):
        table.add_column(name, justify="left" if j == 0 else "right")
    for r in rows:
        table.add_row(*r)
    Console(width=160).print(table)


def _f(value: float, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def print_speed(rows: Sequence[SpeedRow], copy_gbps: float, threads: int) -> None:
    _table(f"MatMulNBits per matrix, {threads} threads; ratio to int4 b32 level 4; copy {copy_gbps:.1f} GB/s (r+w)",
           ["model tensor", "K->N", "M", "bits", "block", "level", "ms med", "ratio", "ms min", "ratio(min)", "MB",
            "GB/s", "/copy"],
           [[f"{r.model} {r.group}", f"{r.k}->{r.n}", str(r.m), str(r.bits), str(r.block), str(r.level),
             _f(r.ms, ".3f"), _f(r.ratio, ".2f"), _f(r.ms_min, ".3f"), _f(r.ratio_min, ".2f"), _f(r.weight_mb, ".1f"),
             _f(r.gbps, ".1f"), _f(r.of_copy, ".2f")]
            for r in rows])
    lines = []
    for model in dict.fromkeys(r.model for r in rows):
        base, base_min = decode_ms(rows, model, {}), decode_ms(rows, model, {}, stat="ms_min")
        for label, plan, level in (("int4 b32 level 4", {}, 4), ("int4 b32 level 0", {}, 0),
                                   ("int4 b64 all", dict.fromkeys(GROUPS, (4, 64)), 4),
                                   ("int4 b128 all", dict.fromkeys(GROUPS, (4, 128)), 4),
                                   ("int8 head, int4 b32 body", {"head": (8, 32)}, 4)):
            ms, fastest = decode_ms(rows, model, plan, level), decode_ms(rows, model, plan, level, "ms_min")
            lines.append([model, label, _f(ms, ".2f"), _f(ms / base, ".2f"), _f(fastest, ".2f"),
                          _f(fastest / base_min, ".2f")])
    _table("Decode MatMul ms per token (sum over the model's matrices, M=1)",
           ["model", "formats", "ms med", "ratio", "ms min", "ratio(min)"], lines)


def print_extras(packed: Sequence[dict[str, Any]], gathers: Sequence[dict[str, Any]]) -> None:
    if packed:
        _table("Packed vs split (int4 b32 level 4), ms per layer",
               ["model tensor", "M", "packed", "split", "split/packed", "(min)"],
               [[f"{p['model']} {p['group']}", str(p["m"]), _f(p["packed_ms"], ".3f"), _f(p["split_ms"], ".3f"),
                 _f(p["split_over_packed"], ".2f"), _f(p["split_over_packed_min"], ".2f")] for p in packed])
    if gathers:
        _table("Embedding lookup, Phi-3-mini 32064 x 3072 (µs per call incl. ~python/ORT overhead)",
               ["table", "ids", "µs med", "µs min", "ratio", "MB"],
               [[g["table"], str(g["ids"]), _f(g["us"], ".1f"), _f(g["us_min"], ".1f"), _f(g["ratio_to_fp32"], ".2f"),
                 _f(g["MB"], ".1f")]
                for g in gathers])


def add_saved(rows: Sequence[dict[str, Any]], speed: Sequence[SpeedRow]) -> None:
    """Each accuracy row's decode MatMul time saved vs int4 b32 (part 1's M=1 level-4 figures, median / min)."""
    for row in rows:
        plan = {g: (int(f[0]), int(f[1])) for g, f in row["speed_plan"].items()}
        for model, key in (("smollm2", "smollm2"), ("phi3-mini", "phi3")):
            for stat, tail in (("ms", ""), ("ms_min", "_min")):
                row[f"decode_saved_{key}{tail}"] = 1 - decode_ms(speed, model, plan, stat=stat) / decode_ms(
                    speed, model, {}, stat=stat)
            row[f"prefill_saved_{key}"] = 1 - decode_ms(speed, model, plan, m=128) / decode_ms(speed, model, {}, m=128)


def print_accuracy(rows: Sequence[dict[str, Any]], windows: int) -> None:
    _table(f"smollm2:135m real weights, {windows} x 512-token window per text: KL(fp32||row), ppl gap; MatMul "
           "time saved at decode (M=1, median / min) and prefill (M=128, median), level 4, from part 1",
           ["row", "KL", "dKL", "ppl prose", "ppl python", "top-1", "MB", "dec smol", "(min)", "dec phi3", "(min)",
            "pre smol", "pre phi3"],
           [[r["label"], _f(r["kl"], ".4f"), _f(r["dkl"], "+.4f"), _f(r["ppl_prose"], "+.1%"),
             _f(r["ppl_python"], "+.1%"), _f(r["top1"], ".1%"), _f(r["MB"], ".1f"),
             _f(r["decode_saved_smollm2"], "+.1%"), _f(r["decode_saved_smollm2_min"], "+.1%"),
             _f(r["decode_saved_phi3"], "+.1%"), _f(r["decode_saved_phi3_min"], "+.1%"),
             _f(r["prefill_saved_smollm2"], "+.1%"), _f(r["prefill_saved_phi3"], "+.1%")] for r in rows])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds, accuracy rows at block 128 only")
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default 5, quick 3)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--spin", action="store_true", help="let ORT's intra-op threads spin (its own default)")
    parser.add_argument("--models", default="phi3-mini,smollm2", help="speed shapes of these models")
    parser.add_argument("--m", default="1,128", help="activation rows to time (1 = decode, 128 = prefill)")
    parser.add_argument("--windows", type=int, default=1, help="512-token windows per held-out text (max 2)")
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--no-accuracy", action="store_true")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--speed-from", type=Path, nargs="+",
                        help="take part 1 from these --json files instead of timing it (later files' rows win)")
    parser.add_argument("--accuracy-from", type=Path, help="take part 2's rows from this --json file")
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 5)
    global SPIN
    SPIN = args.spin
    blocks = (32, 64, 128)
    started = time.perf_counter()
    result: dict[str, Any] = {"threads": args.threads, "rounds": rounds, "ort": ort.__version__, "spin": SPIN}
    speed: list[SpeedRow] = []
    if args.speed_from:
        olds = [json.loads(f.read_text(encoding="utf-8")) for f in args.speed_from]
        key = ("model", "group", "m", "bits", "block", "level")
        merged = {tuple(r[k] for k in key): r for o in olds for r in o["speed"]}
        speed = [SpeedRow(**r) for r in merged.values()]
        old = olds[-1]
        result.update({k: old[k] for k in ("copy_gbps", "copy_gbps_after", "speed", "packed", "gathers")})
        print_speed(speed, (old["copy_gbps"] + old["copy_gbps_after"]) / 2, old["threads"])
        print_extras(old["packed"], old["gathers"])
    elif not args.no_speed:
        result["copy_gbps"] = copy_bw = copy_bandwidth()
        shapes = [s for s in SHAPES if s.model in args.models.split(",")]
        ms = tuple(int(m) for m in args.m.split(","))
        speed = speed_rows(shapes, ms, blocks, (0, 4), rounds, args.threads, copy_bw)
        packed = packed_rows(rounds, args.threads, ms)
        gathers = gather_rows(rounds, args.threads)
        result["copy_gbps_after"] = copy_bandwidth()
        result.update(speed=[asdict(r) for r in speed], packed=packed, gathers=gathers)
        print_speed(speed, (copy_bw + result["copy_gbps_after"]) / 2, args.threads)
        print_extras(packed, gathers)
    if args.accuracy_from:
        rows = json.loads(args.accuracy_from.read_text(encoding="utf-8"))["accuracy"]
    elif not args.no_accuracy:
        rows = accuracy_rows((128,) if args.quick else (64, 128), args.windows)
    if args.accuracy_from or not args.no_accuracy:
        add_saved(rows, speed)
        result["accuracy"] = rows
        print_accuracy(rows, args.windows)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(f"total {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Quantization recipes judged on real weights (smollm2:135m), through the layer-streamed reference.

Each recipe is applied to the checkpoint's fp32 weights in numpy (quantize, dequantize: the weights MatMulNBits
would hold) and the model is run layer by layer in float32 (reference/checkpoint_side with a weight_map), so
every row differs from the fp32 reference by its weights only; ORT's int8 activation rounding at accuracy
level 4 is not in these figures (it is the same for every int4 row). Held-out texts, not in the calibration
set: English prose from Python's pydoc topics (the language reference) and Python source (textwrap.py).

Rows: perplexity gap to fp32 on each text, KL(fp32 || row) and top-1 over both, weight bytes (MatMulNBits
initializers as cpu-int4 stores them: fp32 scales), calibration/quantization seconds. llama.cpp's Q4_0, Q4_K_M
and Q8_0 of the same (dequantized) weights are measured by llama-perplexity on the same text files against
its own F32 of them: its tokens and windows differ slightly, so compare gaps, not perplexities.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from phi3_edge.exporter.checkpoint import resolve_checkpoint
from phi3_edge.exporter.config import Phi3Spec, load_spec
from phi3_edge.quantize import awq as awq_mod
from phi3_edge.quantize.blockwise import QuantizedBlocks, dequantize, quantize_hqq, quantize_rtn
from phi3_edge.quantize.mixed import down_proj_name, uses_more_bits
from phi3_edge.quantize.recipe import LinearRecipe, QuantRecipe
from phi3_edge.quantize.sensitivity import budget_bytes, choose_wide, matmul_nbits_bytes
from phi3_edge.reference import calibrate as cal
from phi3_edge.reference.checkpoint_side import EMBED_NAME, CheckpointSide, WeightMap
from phi3_edge.reference.sensitivity_pass import Sensitivity, measure_sensitivity
from phi3_edge.reference.state import State
from phi3_edge.reference.streamed import TokenStats

WINDOW = 512
EVAL_TOKENS = 1024  # per held-out text (2 windows of 512: 2 x 1022 scored positions)


@dataclass
class RealRow:
    label: str
    ppl_gap: dict[str, float]  # text -> ppl / ppl_fp32 - 1
    kl: float
    top1: float
    weight_bytes: int
    seconds: float


def held_out_texts() -> dict[str, str]:
    import pydoc_data.topics as topics
    import textwrap

    prose = "\n\n".join(topics.topics[k] for k in ("assignment", "if", "while", "for", "try", "with", "function"))
    return {"prose": prose, "python": Path(textwrap.__file__).read_text(encoding="utf-8")}


def quantized_bytes(params: int, k: int, bits: int, block: int, zero: str) -> int:
    """MatMulNBits bytes for `params` weights of rows of K: codes, fp32 scales, zero points (none/u4/float)."""
    return matmul_nbits_bytes(params // k, k, bits, block, zero)


BlockFn = Callable[[np.ndarray], QuantizedBlocks]


def rtn(bits: int, symmetric: bool = True) -> BlockFn:
    return lambda w: quantize_rtn(w, bits, 32, symmetric)


def hqq(w: np.ndarray) -> QuantizedBlocks:
    return quantize_hqq(w, 4, 32, zero_points="float")


def hqq_uint(w: np.ndarray) -> QuantizedBlocks:
    return quantize_hqq(w, 4, 32)  # the default: uint4 zero points, packed (MatMulNBits' fast path)


def body_map(body: BlockFn | None, table: BlockFn | None, done: dict[str, np.ndarray] | None = None) -> WeightMap:
    """Quantize every decoder Linear with `body` (or take it from `done`) and the tied table with `table`."""
    def mapped(name: str, rows: np.ndarray) -> np.ndarray:
        if done is not None and name in done:
            return done[name]
        if name == EMBED_NAME:
            return rows if table is None else dequantize(table(rows))
        if name.endswith("_proj.weight") and body is not None:
            return dequantize(body(rows))
        return rows
    return mapped


class Bench:
    def __init__(self, model: str = "smollm2:135m") -> None:
        self.checkpoint = resolve_checkpoint(model)
        self.spec: Phi3Spec = load_spec(self.checkpoint.config_path)
        tok = next(p for p in self.checkpoint.tokenizer_files if p.name == "tokenizer.json")
        self.tokenizer = Tokenizer.from_file(str(tok))
        self.texts = held_out_texts()
        self.eval: dict[str, list[list[int]]] = {}
        for name, text in self.texts.items():
            ids = self.tokenizer.encode(text).ids[:EVAL_TOKENS]
            self.eval[name] = [ids[i:i + WINDOW] for i in range(0, len(ids), WINDOW) if len(ids[i:i + WINDOW]) > 1]
        self.calibration = cal.sequences_of(self.tokenizer.encode(cal.builtin_calibration_text()).ids)
        self.all_eval = [s for seqs in self.eval.values() for s in seqs]
        self.ref_states = self._states(None)

    def side(self, weight_map: WeightMap | None) -> CheckpointSide:
        return CheckpointSide(self.spec, self.checkpoint.weight_files, weight_map=weight_map)

    def _states(self, weight_map: WeightMap | None) -> list[State]:
        with self.side(weight_map) as side:
            states = [side.embed(ids) for ids in self.all_eval]
            for layer in range(side.num_layers):
                states = side.run_layer(layer, states)
        return states

    def measure(self, label: str, weight_map: WeightMap, weight_bytes: int, seconds: float) -> RealRow:
        states = self._states(weight_map)
        stats = [TokenStats.empty(len(ids)) for ids in self.all_eval]
        targets = [np.asarray([*ids[1:], -1], dtype=np.int64) for ids in self.all_eval]
        with self.side(None) as ref, self.side(weight_map) as cand:
            chunk = ref.default_vocab_chunk()
            for (start, r), (_, c) in zip(ref.head_chunks(self.ref_states, chunk), cand.head_chunks(states, chunk),
                                          strict=True):
                for held, a, b, t in zip(stats, r, c, targets, strict=True):
                    held.update(start, a, b, t)
        gaps: dict[str, float] = {}
        at = 0
        for name, seqs in self.eval.items():
            part = stats[at:at + len(seqs)]
            at += len(seqs)
            ref_nll = np.concatenate([s.nll()[0][:-1] for s in part])
            nll = np.concatenate([s.nll()[1][:-1] for s in part])
            gaps[name] = math.exp(float(nll.mean() - ref_nll.mean())) - 1
        kl = float(np.concatenate([s.kl() for s in stats]).mean())
        top1 = float(np.concatenate([s.arg_r == s.arg_c for s in stats]).mean())
        return RealRow(label, gaps, kl, top1, weight_bytes, seconds)

    def ref_ppl(self) -> dict[str, float]:
        out = {}
        with self.side(None) as ref:
            at = 0
            for name, seqs in self.eval.items():
                part = self.ref_states[at:at + len(seqs)]
                at += len(seqs)
                stats = [TokenStats.empty(len(ids)) for ids in seqs]
                targets = [np.asarray([*ids[1:], -1], dtype=np.int64) for ids in seqs]
                for start, r in ref.head_chunks(part, ref.default_vocab_chunk()):
                    for held, a, t in zip(stats, r, targets, strict=True):
                        held.update(start, a, a, t)
                nll = np.concatenate([s.nll()[0][:-1] for s in stats])
                out[name] = math.exp(float(nll.mean()))
        return out

    def gptq(self, act_order: bool = True, base: WeightMap | None = None) -> tuple[dict[str, np.ndarray], float]:
        done: dict[str, np.ndarray] = {}
        started = time.perf_counter()

        def sink(name: str, blocks: QuantizedBlocks) -> None:
            done[name] = dequantize(blocks)

        def plan(name: str) -> tuple[int, int] | None:
            return (4, 32) if name.endswith("_proj.weight") else None

        with self.side(None) as side:
            cal.gptq_calibrate(side, self.calibration, plan, sink, act_order=act_order, base=base)
        return done, time.perf_counter() - started

    def params(self) -> tuple[int, int]:
        """(decoder Linear weights, tied table weights) of the model."""
        s = self.spec
        h, i, kv = s.hidden_size, s.intermediate_size, s.num_kv_heads * s.head_dim
        per_layer = h * (h + 2 * kv) + h * h + 2 * i * h + i * h
        return per_layer * s.num_layers, s.vocab_size * h

    def bytes_of(self, body: tuple[int, str], table: tuple[int, str] | None) -> int:
        """Weight bytes for a body (bits, zero kind) and a tied table (bits, zero kind) or None for fp32."""
        lin, tab = self.params()
        s = self.spec
        # One block count per 32 weights whatever K (576 and 1536 are multiples of 32); norms (2 x hidden per
        # layer) are below the rounding of these figures.
        out = quantized_bytes(lin, s.hidden_size, body[0], 32, body[1])
        return out + (tab * 4 if table is None else quantized_bytes(tab, s.hidden_size, table[0], 32, table[1]))


def summarize(rows: Sequence[RealRow]) -> list[dict[str, object]]:
    return [{"label": r.label, **{f"ppl_gap_{k}": v for k, v in r.ppl_gap.items()}, "kl": r.kl, "top1": r.top1,
             "MB": r.weight_bytes / 1e6, "seconds": r.seconds} for r in rows]


def awq_weights(bench: Bench, body: BlockFn) -> tuple[dict[str, np.ndarray], float, list[float]]:
    """Folded fp32 weights of every layer (the map then quantizes them with `body`), seconds, alphas."""
    folded: dict[str, np.ndarray] = {}
    alphas: list[float] = []
    started = time.perf_counter()

    def sink(layer: int, result: cal.AwqLayer) -> None:
        folded.update(result.weights)
        alphas.extend(result.alphas.values())

    with bench.side(None) as side:
        cal.awq_calibrate(side, bench.calibration, body, sink)
    return folded, time.perf_counter() - started, alphas


def awq_clip_weights(bench: Bench, coarse: int | None = None) -> tuple[dict[str, np.ndarray], float, list[float]]:
    """AWQ as `--quant-algo awq` exports it: scales, then the clip search on the folded weights (every Linear
    int4 block 32 here, like the other rows), the stream reading the clipped blocks. Returns every Linear's
    dequantized blocks and the folded norms, seconds, alphas. `coarse`: the alpha search's (1: full scan)."""
    done: dict[str, np.ndarray] = {}
    alphas: list[float] = []
    started = time.perf_counter()

    def sink(layer: int, result: cal.AwqLayer) -> None:
        done.update({n: w for n, w in result.weights.items() if not n.endswith("_proj.weight")})  # norms
        done.update({n: dequantize(b) for n, b in result.blocks.items()})
        alphas.extend(result.alphas.values())

    held = awq_mod.COARSE
    awq_mod.COARSE = held if coarse is None else coarse
    try:
        with bench.side(None) as side:
            cal.awq_calibrate(side, bench.calibration, rtn(4), sink, clip=lambda name: (4, 32))
    finally:
        awq_mod.COARSE = held
    return done, time.perf_counter() - started, alphas


def folded_map(folded: dict[str, np.ndarray], body: BlockFn, table: BlockFn | None) -> WeightMap:
    inner = body_map(body, table)

    def mapped(name: str, rows: np.ndarray) -> np.ndarray:
        return inner(name, folded[name]) if name in folded else inner(name, rows)
    return mapped


INT4_SYM = LinearRecipe(4, 32)
# The export's default int4 recipe (cpu-int4, tied): RTN symmetric body, the table int4 and shared with lm_head.
PLAIN_INT4 = QuantRecipe(INT4_SYM, (), INT4_SYM, INT4_SYM, True, 1.05)
BUDGETS = (1.05, 1.1, 1.253)  # 1.253 x the plain int4 bytes (84.2 MB with the norms) = Q4_K_M's 105.5 MB


def mixed_map(wide: set[str], table_wide: bool, folded: dict[str, np.ndarray] | None = None) -> WeightMap:
    """int8 RTN for the tensors in `wide` (and the table if `table_wide`), int4 RTN elsewhere, on `folded`."""
    int4, int8 = rtn(4), rtn(8)
    held = folded or {}

    def mapped(name: str, rows: np.ndarray) -> np.ndarray:
        rows = held.get(name, rows)
        if name == EMBED_NAME:
            return dequantize((int8 if table_wide else int4)(rows))
        if name.endswith("_proj.weight"):
            return dequantize((int8 if name in wide else int4)(rows))
        return rows
    return mapped


def sensitivity(bench: Bench, folded: dict[str, np.ndarray] | None = None,
                propagate: int = 0) -> tuple[Sensitivity, float]:
    started = time.perf_counter()
    base = None if folded is None else (lambda name, rows: folded.get(name, rows))
    with bench.side(None) as side:
        measured = measure_sensitivity(side, bench.calibration, PLAIN_INT4, base=base, propagate=propagate)
    return measured, time.perf_counter() - started


def measured_rows(bench: Bench, label: str, measured: Sensitivity, seconds: float, budgets: Sequence[float],
                  folded: dict[str, np.ndarray] | None = None) -> list[RealRow]:
    """One row per budget: the measured choice (greedy by score removed per byte) within it."""
    rows = []
    for budget in budgets:
        chosen = choose_wide(measured.candidates, budget_bytes(measured.plain_bytes, budget))
        extra = sum(c.extra_bytes for c in measured.candidates if c.name in chosen)
        table = measured.table in chosen
        print(f"{label} x{budget}: table {table}, {len(chosen) - table} body tensors:",
              [c.removeprefix("model.layers.") for c in chosen], flush=True)
        rows.append(bench.measure(f"{label}, measured int8 within x{budget}" + (" (table int8)" if table else ""),
                                  mixed_map(set(chosen), table, folded), measured.plain_bytes + extra, seconds))
        print(rows[-1], flush=True)
    if measured.table is not None:  # the table forced to int8, the body measured within what is left
        budget = max(budgets)
        forced = next(c for c in measured.candidates if c.name == measured.table)
        body = [c for c in measured.candidates if c.name != measured.table]
        chosen = choose_wide(body, budget_bytes(measured.plain_bytes, budget) - forced.extra_bytes)
        extra = forced.extra_bytes + sum(c.extra_bytes for c in body if c.name in chosen)
        rows.append(bench.measure(f"{label}, int8 table forced + measured int8 within x{budget}",
                                  mixed_map(set(chosen), True, folded), measured.plain_bytes + extra, seconds))
        print(rows[-1], flush=True)
    return rows


def fixed_rule_row(bench: Bench, measured: Sensitivity) -> list[RealRow]:
    """llama.cpp's use_more_bits down projections at int8 (what --mixed-precision did before), int8 table; and
    the measured choice at the same bytes, with the table left int4: which tensors, not how many bytes."""
    layers = bench.spec.num_layers
    wide = {down_proj_name(i) for i in range(layers) if uses_more_bits(i, layers)}
    extra = {c.name: c.extra_bytes for c in measured.candidates}
    fixed_extra = sum(extra[n] for n in wide)
    body_only = [c for c in measured.candidates if c.name != measured.table]
    same = set(choose_wide(body_only, fixed_extra))
    rows = [bench.measure(f"rtn + llama.cpp rule ({len(wide)} int8 down_proj), int4 table", mixed_map(wide, False),
                          measured.plain_bytes + fixed_extra, 0.0),
            bench.measure(f"rtn + measured int8 at the same bytes ({len(same)} tensors), int4 table",
                          mixed_map(same, False), measured.plain_bytes + sum(extra[n] for n in same), 0.0)]
    for row in rows:
        print(row, flush=True)
    return rows


def run_all(bench: Bench, only: set[str] | None = None, budgets: Sequence[float] = BUDGETS,
            propagate: int = 0) -> list[RealRow]:
    """Every recipe row; `only`: row kinds to run (table, rtn, hqq, gptq, awq, awq-full, awq+gptq, hqq8, int8,
    mixed, awq+mixed)."""
    i4, i8 = (4, "none"), (8, "none")
    rows: list[RealRow] = []

    def want(key: str) -> bool:
        return only is None or key in only

    def timed(label: str, key: str, weight_map: WeightMap, nbytes: int, seconds: float = 0.0) -> None:
        if want(key):
            rows.append(bench.measure(label, weight_map, nbytes, seconds))
            print(rows[-1], flush=True)

    timed("fp32 body, int4 table (table's own cost)", "table", body_map(None, rtn(4)),
          bench.params()[0] * 4 + bench.bytes_of(i4, i4) - bench.bytes_of(i4, None) + bench.params()[1] * 4)
    timed("rtn sym int4 + int4 table (cpu-int4 today)", "rtn", body_map(rtn(4), rtn(4)), bench.bytes_of(i4, i4))
    timed("rtn sym int4 + int8 table", "rtn", body_map(rtn(4), rtn(8)), bench.bytes_of(i4, i8))
    timed("rtn asym int4 (uint4 zp) + int4 table", "rtn", body_map(rtn(4, False), rtn(4)),
          bench.bytes_of((4, "uint"), i4))
    timed("hqq int4 (float zp) + int4 table", "hqq", body_map(hqq, rtn(4)), bench.bytes_of((4, "float"), i4))
    timed("hqq int4 (uint4 zp) + int4 table", "hqq", body_map(hqq_uint, rtn(4)), bench.bytes_of((4, "uint"), i4))
    if want("gptq"):
        done, seconds = bench.gptq(act_order=True)
        timed("gptq int4 (act-order) + int4 table", "gptq", body_map(None, rtn(4), done), bench.bytes_of(i4, i4),
              seconds)
        timed("gptq int4 (act-order) + int8 table", "gptq", body_map(None, rtn(8), done), bench.bytes_of(i4, i8),
              seconds)
    if want("awq"):
        folded, seconds, alphas = awq_weights(bench, rtn(4))
        print("awq alphas", np.round(alphas, 2).tolist(), flush=True)
        timed("awq + rtn sym int4 + int4 table", "awq", folded_map(folded, rtn(4), rtn(4)), bench.bytes_of(i4, i4),
              seconds)
        timed("awq + rtn sym int4 + int8 table", "awq", folded_map(folded, rtn(4), rtn(8)), bench.bytes_of(i4, i8),
              seconds)
    for key, coarse, label in (("awq", None, "awq (+ clip: the export's) int4 + int8 table"),
                               ("awq-full", 1, "awq (+ clip, full alpha scan) int4 + int8 table")):
        if want(key):
            done, seconds, alphas = awq_clip_weights(bench, coarse)
            print(f"{key} alphas", np.round(alphas, 2).tolist(), flush=True)
            timed(label, key, body_map(None, rtn(8), done), bench.bytes_of(i4, i8), seconds)
    if want("awq+gptq"):
        folded, seconds, _ = awq_weights(bench, rtn(4))
        done, more = bench.gptq(True, lambda name, rows: folded.get(name, rows))
        timed("awq + gptq int4 + int8 table", "awq+gptq", body_map(None, rtn(8), {**folded, **done}),
              bench.bytes_of(i4, i8), seconds + more)
    if want("hqq8"):
        timed("hqq int4 (float zp) + int8 table", "hqq8", body_map(hqq, rtn(8)), bench.bytes_of((4, "float"), i8))
        timed("hqq int4 (uint4 zp) + int8 table", "hqq8", body_map(hqq_uint, rtn(8)),
              bench.bytes_of((4, "uint"), i8))
    if want("mixed"):
        measured, seconds = sensitivity(bench, propagate=propagate)
        ranked = sorted(measured.candidates, key=lambda c: c.gain_per_byte, reverse=True)
        for rank, c in enumerate(ranked):
            if rank < 12 or c.name == measured.table:
                print(f"  #{rank} {c.name}: {c.narrow_error:.3e} -> {c.wide_error:.3e}, +{c.extra_bytes} B",
                      flush=True)
        rows += fixed_rule_row(bench, measured)
        rows += measured_rows(bench, "rtn", measured, seconds, budgets)
    if want("awq+mixed"):
        folded, seconds, _ = awq_weights(bench, rtn(4))
        measured, more = sensitivity(bench, folded, propagate)
        rows += measured_rows(bench, "awq + rtn", measured, seconds + more, budgets, folded)
    timed("rtn int8 + int8 table (cpu-int8)", "int8", body_map(rtn(8), rtn(8)), bench.bytes_of(i8, i8))
    return rows


LLAMA_BIN = Path("/work/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin")  # --llama-bin overrides
LLAMA_TYPES = ("F32", "Q4_0", "Q4_K_M", "Q8_0")


def llamacpp_rows(bench: Bench, work: Path, bin_dir: Path = LLAMA_BIN) -> list[dict[str, object]]:
    """llama.cpp's quantizations of the same GGUF weights: perplexity gap to its own F32 on the same texts.

    The texts are our first EVAL_TOKENS tokens of each held-out text, decoded; llama-perplexity re-tokenizes
    them (BOS per 512-token chunk) and scores the second half of each chunk, so only its gaps compare with ours.
    """
    import re
    import subprocess

    work.mkdir(parents=True, exist_ok=True)
    source = bench.checkpoint.weight_files[0]
    files = {}
    for name, seqs in bench.eval.items():
        files[name] = work / f"{name}.txt"
        files[name].write_text(bench.tokenizer.decode([t for s in seqs for t in s]), encoding="utf-8")
    ppl: dict[str, dict[str, float]] = {}
    sizes: dict[str, int] = {}
    for kind in LLAMA_TYPES:
        model = work / f"model-{kind}.gguf"
        if not model.exists():
            subprocess.run([str(bin_dir / "llama-quantize"), "--allow-requantize", str(source), str(model), kind],
                           check=True, capture_output=True)
        sizes[kind] = model.stat().st_size
        for name, path in files.items():
            out = subprocess.run([str(bin_dir / "llama-perplexity"), "-m", str(model), "-f", str(path), "-c",
                                  str(WINDOW)], capture_output=True, text=True, check=True)
            found = re.search(r"Final estimate: PPL = ([0-9.]+)", out.stdout + out.stderr)
            assert found, f"no perplexity in llama-perplexity's output for {model}"
            ppl.setdefault(kind, {})[name] = float(found.group(1))
    base = ppl["F32"]
    return [{"label": f"llama.cpp {kind}", **{f"ppl_gap_{n}": ppl[kind][n] / base[n] - 1 for n in base},
             "kl": None, "top1": None, "MB": sizes[kind] / 1e6, "seconds": None} for kind in LLAMA_TYPES[1:]]


def print_rows(rows: Sequence[dict[str, object]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for name in ("recipe", "ppl gap prose", "ppl gap python", "KL", "top-1", "weights MB", "calib s"):
        table.add_column(name, justify="left" if name == "recipe" else "right")

    def fmt(value: object, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for r in rows:
        table.add_row(str(r["label"]), fmt(r["ppl_gap_prose"], "+.1%"), fmt(r["ppl_gap_python"], "+.1%"),
                      fmt(r["kl"], ".4f"), fmt(r["top1"], ".1%"), fmt(r["MB"], ".1f"), fmt(r["seconds"], ".0f"))
    Console(width=max(Console().width, 130)).print(table)


def main(argv: Sequence[str] | None = None) -> int:
    """python bench/quant_real.py [rtn,hqq,gptq,awq,int8,table,mixed,awq+mixed] [--size-budget 1.05,1.255]
    [--no-llamacpp] [--json]"""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="?", help="comma-separated row kinds: rtn,hqq,gptq,awq,int8,table")
    parser.add_argument("--model", default="smollm2:135m")
    parser.add_argument("--no-llamacpp", action="store_true")
    parser.add_argument("--llama-bin", type=Path, default=LLAMA_BIN)
    parser.add_argument("--work", type=Path, default=Path("/tmp/phi3-edge-bench/quant-real"))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--size-budget", default=",".join(map(str, BUDGETS)),
                        help="comma-separated budgets of the mixed rows (factors of the plain int4 bytes)")
    parser.add_argument("--propagate", type=int, default=0,
                        help="mixed rows: windows on which each layer's error is run through the later layers")
    args = parser.parse_args(argv)
    bench = Bench(args.model)
    ref = bench.ref_ppl()
    budgets = [float(b) for b in args.size_budget.split(",")]
    rows = summarize(run_all(bench, set(args.only.split(",")) if args.only else None, budgets, args.propagate))
    if not args.no_llamacpp:
        rows += llamacpp_rows(bench, args.work, args.llama_bin)
    if args.json:
        print(json.dumps({"fp32_ppl": ref, "rows": rows}, indent=1))
    else:
        print_rows(rows, f"{args.model}: recipes vs fp32 (ppl prose {ref['prose']:.2f}, python {ref['python']:.2f}),"
                         f" {EVAL_TOKENS} held-out tokens per text")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

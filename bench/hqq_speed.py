"""HQQ's cost, one run, ratios only: quantization time against RTN, and decode speed by zero-point format.

1. Quantize: one Phi-3-mini-shaped tensor (gate_up's K=3072 rows: 8192 x 3072, N(0, 1/K) with one weight in
   500 scaled by 20), block 32, 4-bit: RTN symmetric and asymmetric, HQQ with uint4 zero points (the default)
   and with float zero points (20 iterations, the former default). Seconds (best of --repeats), ratio to
   asymmetric RTN's, RMS error relative to asymmetric RTN's.
2. Decode: one Phi-3-mini decoder layer's MatMulNBits nodes (qkv 9216x3072, o 3072x3072, gate_up 16384x3072,
   down 3072x8192) in one onnxruntime graph with M=1 (a decode step's activations), by zero-point format
   (what the kernel's path depends on): none (symmetric RTN), packed uint4 (HQQ's default), float32. Runs per
   second (best of --repeats timed loops), as a ratio to symmetric RTN; at accuracy_level 4 (cpu-int4) and 0.
   The node mix is what a decode step spends its time on; attention and the rest are the same for every format.

Usage: python bench/hqq_speed.py [--rows 8192] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from phi3_edge.quantize.blockwise import (
    QuantizedBlocks,
    dequantize,
    pack_weights,
    pack_zero_points,
    quantize_hqq,
    quantize_rtn,
)

BITS, BLOCK = 4, 32
MINI_LAYER = {"qkv": (9216, 3072), "o": (3072, 3072), "gate_up": (16384, 3072), "down": (3072, 8192)}  # (N, K)
FORMATS: dict[str, Callable[[np.ndarray], QuantizedBlocks]] = {
    "rtn sym (no zp)": lambda w: quantize_rtn(w, BITS, BLOCK, True),
    "rtn asym (uint4 zp)": lambda w: quantize_rtn(w, BITS, BLOCK, False),
    "hqq uint4 zp": lambda w: quantize_hqq(w, BITS, BLOCK),
    "hqq float zp": lambda w: quantize_hqq(w, BITS, BLOCK, zero_points="float"),
}


def planted(rows: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, k)).astype(np.float32) / np.sqrt(k)
    w.flat[rng.integers(0, w.size, w.size // 500)] *= 20
    return w


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def quantize_times(rows: int, repeats: int) -> list[dict[str, object]]:
    w = planted(rows, 3072)
    out = []
    for label, fn in FORMATS.items():
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            q = fn(w)
            best = min(best, time.perf_counter() - started)
        out.append({"format": label, "seconds": best, "rms_error": rms(dequantize(q) - w)})
    base = next(r for r in out if r["format"] == "rtn asym (uint4 zp)")
    for r in out:
        r["time_vs_rtn_asym"] = float(r["seconds"]) / float(base["seconds"])  # type: ignore[arg-type]
        r["error_vs_rtn_asym"] = float(r["rms_error"]) / float(base["rms_error"])  # type: ignore[arg-type]
    return out


DECODE_FORMATS = ("no zp (rtn sym)", "uint4 zp (hqq default)", "float zp (hqq-float)")


def layer_weights(fmt: str) -> dict[str, QuantizedBlocks]:
    """The kernel's speed depends on the zero-point input's format, not on the values: asymmetric RTN codes,
    their zero points packed uint4 or given as float32 (HQQ's float path, without its 112M-weight quantization)."""
    out = {}
    for name, (n, k) in MINI_LAYER.items():
        w = planted(n, k, seed=n + k)
        if fmt == DECODE_FORMATS[0]:
            out[name] = quantize_rtn(w, BITS, BLOCK, True)
            continue
        q = quantize_rtn(w, BITS, BLOCK, False)
        if fmt == DECODE_FORMATS[2]:
            q = replace(q, zero_points=q.zero_points.astype(np.float32) + 0.25)  # off-grid, as HQQ's are
        out[name] = q
    return out


def layer_session(weights: dict[str, QuantizedBlocks], accuracy_level: int,
                  threads: int | None) -> ort.InferenceSession:
    """x (1, 3072) through the four mini-layer MatMulNBits (the down one fed by a Slice of gate_up's output)."""
    nodes, inits = [], []
    for name, (n, k) in MINI_LAYER.items():
        q = weights[name]
        tensors = [numpy_helper.from_array(pack_weights(q.q, BITS), f"{name}.B"),  # (N, n_blocks, blob)
                   numpy_helper.from_array(q.scales, f"{name}.scales")]  # (N, n_blocks)
        if q.zero_points is not None:
            zero = pack_zero_points(q.zero_points, BITS) if q.zero_points.dtype == np.uint8 else q.zero_points
            tensors.append(numpy_helper.from_array(zero, f"{name}.zero_points"))
        inits += tensors
        source = "down_in" if name == "down" else "x"
        nodes.append(helper.make_node("MatMulNBits", [source, *(t.name for t in tensors)], [f"{name}.y"],
                                      domain="com.microsoft", K=k, N=n, bits=BITS, block_size=BLOCK,
                                      accuracy_level=accuracy_level))
    inits += [numpy_helper.from_array(np.array([0], np.int64), "s0"),
              numpy_helper.from_array(np.array([8192], np.int64), "s1"),
              numpy_helper.from_array(np.array([1], np.int64), "ax")]
    nodes.append(helper.make_node("Slice", ["gate_up.y", "s0", "s1", "ax"], ["down_in"]))  # (1, 8192)
    outputs = [helper.make_tensor_value_info(f"{n}.y", TensorProto.FLOAT, None) for n in ("qkv", "o", "down")]
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3072])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def decode_speeds(repeats: int, loops: int, threads: int | None) -> list[dict[str, object]]:
    x = np.random.default_rng(1).standard_normal((1, 3072)).astype(np.float32)
    out = []
    weights = {fmt: layer_weights(fmt) for fmt in DECODE_FORMATS}
    for level in (4, 0):
        rows = []
        for fmt, held in weights.items():
            session = layer_session(held, level, threads)
            session.run(None, {"x": x})  # warm-up (prepacking)
            best = float("inf")
            for _ in range(repeats):
                started = time.perf_counter()
                for _ in range(loops):
                    session.run(None, {"x": x})
                best = min(best, (time.perf_counter() - started) / loops)
            rows.append({"format": fmt, "accuracy_level": level, "layer_steps_per_s": 1.0 / best})
        base = float(rows[0]["layer_steps_per_s"])  # type: ignore[arg-type]
        for r in rows:
            r["speed_vs_rtn_sym"] = float(r["layer_steps_per_s"]) / base  # type: ignore[arg-type]
        out += rows
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8192, help="rows of the K=3072 tensor quantized in part 1")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loops", type=int, default=20, help="decode steps per timed loop in part 2")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-quantize", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = {"quantize": [] if args.skip_quantize else quantize_times(args.rows, args.repeats),
              "decode": decode_speeds(args.repeats, args.loops, args.threads)}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    for r in result["quantize"]:
        print(f"quantize {r['format']:22s} {r['seconds']:7.2f} s  x{r['time_vs_rtn_asym']:6.1f} RTN-asym time  "
              f"error x{r['error_vs_rtn_asym']:.4f}")
    for r in result["decode"]:
        print(f"decode   {r['format']:22s} level {r['accuracy_level']}  {r['layer_steps_per_s']:8.1f} layer-steps/s"
              f"  x{r['speed_vs_rtn_sym']:.3f} vs RTN sym")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

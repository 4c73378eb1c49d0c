"""onnxruntime's own MatMulNBitsQuantizer (RTN, HQQ) on our cpu-fp32 graph, judged like bench/quant_real.py's rows.

The quantized graph's MatMulNBits weights are read back, dequantized ((q - zero point) * scale) and fed to the
layer-streamed fp32 reference as a weight_map, so these rows differ from ours by the weights only (same texts,
same positions). Usage: python bench/ort_quantizers.py FP32_ARTIFACT_FOLDER   (needs onnx-ir)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quant_real as qr  # noqa: E402


def dequantized_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Checkpoint name -> (N, K) float32 of every MatMulNBits in the graph (our MatMul names carry it)."""
    init = {t.name: t for t in model.graph.initializer}
    out: dict[str, np.ndarray] = {}
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        n, k, bits, block = attrs["N"], attrs["K"], attrs["bits"], attrs["block_size"]
        packed = numpy_helper.to_array(init[node.input[1]]).reshape(n, -1)  # (N, n_blocks * blob)
        codes = np.stack([(packed >> (bits * j)) & (2**bits - 1) for j in range(8 // bits)], -1).reshape(n, -1)
        blocks = -(-k // block)
        scales = numpy_helper.to_array(init[node.input[2]]).reshape(n, blocks).astype(np.float32)
        if len(node.input) > 3 and node.input[3]:
            zp = numpy_helper.to_array(init[node.input[3]])
            if zp.dtype == np.uint8:
                zp = np.stack([(zp >> (bits * j)) & (2**bits - 1) for j in range(8 // bits)], -1).reshape(n, -1)
            zero = zp.reshape(n, -1)[:, :blocks].astype(np.float32)
        else:
            zero = np.full((n, blocks), 2 ** (bits - 1), np.float32)
        w = (codes.reshape(n, blocks, block) - zero[..., None]) * scales[..., None]  # (N, n_blocks, block)
        source = node.input[1].split(".MatMul")[0] + ".weight"
        out[source] = w.reshape(n, -1)[:, :k].astype(np.float32)
    return out


def main(folder: Path) -> None:
    from onnxruntime.quantization import matmul_nbits_quantizer as mq

    bench = qr.Bench()
    rows = []
    configs = {"ort RTN sym int4 b32 (DefaultWeightOnlyQuantConfig)":
               mq.DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=4),
               "ort HQQ int4 b32 (HQQWeightOnlyQuantConfig)": mq.HQQWeightOnlyQuantConfig(block_size=32)}
    for label, config in configs.items():
        model = onnx.load(str(folder / "model.onnx"))
        started = time.perf_counter()
        quantizer = mq.MatMulNBitsQuantizer(model, algo_config=config)
        quantizer.process()
        seconds = time.perf_counter() - started
        weights = dequantized_weights(quantizer.model.model)
        # Tied: ORT quantized the lm_head MatMul (named after the table); the embedding Gather stays fp32. The
        # reference reads the table one row per embedding lookup and in vocab chunks for the head, in order.
        head = weights.pop(qr.EMBED_NAME, None)
        print(label, len(weights), "MatMulNBits; lm_head quantized:", head is not None, flush=True)
        at = [0]

        def mapped(name: str, rows_in: np.ndarray, weights: dict[str, np.ndarray] = weights,
                   head: np.ndarray | None = head, at: list[int] = at) -> np.ndarray:
            if name == qr.EMBED_NAME:
                if head is None or len(rows_in) == 1:
                    return rows_in
                out = head[at[0]:at[0] + len(rows_in)]
                at[0] = (at[0] + len(rows_in)) % len(head)
                return out
            return weights.get(name, rows_in)
        row = bench.measure(label + " (int4 head, fp32 Gather table)", mapped, 0, seconds)
        print(row, flush=True)
        rows.append(row)
    print(json.dumps(qr.summarize(rows), indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))

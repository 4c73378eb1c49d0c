"""`phi3-edge bench`: TTFT, prefill and decode speed, peak RSS and the decode roofline of one artifact folder.

Decode is memory bound: every new token reads every weight once, so tokens/s <= bandwidth / weight bytes.
The roofline ratio is achieved decode tok/s over that bound. The bandwidth is measured here: a numpy copy of
a large array, split over as many threads as the runtime uses, best of 3. A copy understates the read
bandwidth a decode step gets (it interleaves writes), so a runtime near the bound can show a ratio a little
above 1. The weight bytes are the size of the external weights file (model.onnx.data). That file also holds
the untied embedding table, of which a token reads one row, so this bound is pessimistic and the ratio
flatters (for 4 Phi-3-mini layers in int4 the table is half the file). roofline_ratio_streamed uses the bytes
a token really streams: the file minus every initializer only a row lookup reads (Gather, or a quantized
table's GatherBlockQuantized, also through its Reshape view; found by census.py).

psutil (peak RSS polling) is optional: without it the kernel's ru_maxrss high-water mark is used.
"""

from __future__ import annotations

import resource
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from phi3_edge.edge_runtime.census import read_graph_info
from phi3_edge.edge_runtime.model import EdgeModel
from phi3_edge.edge_runtime.threads import physical_cores
from phi3_edge.errors import ArtifactError, Phi3EdgeError

WEIGHTS_FILE_SUFFIX = ".data"
RSS_POLL_S = 0.005
MB = 1e6


@dataclass(frozen=True)
class BenchReport:
    backend: str
    prompt_len: int
    gen_len: int
    ttft_s: float  # prompt in -> first token out
    prefill_tps: float  # prompt tokens / TTFT
    decode_tps: float  # tokens after the first / their time
    peak_rss_mb: float  # load + warm-up + measured run
    bandwidth_gbps: float  # measured copy bandwidth, bytes read + written per second / 1e9
    weight_bytes: int  # bytes read per decoded token (the weights file)
    roofline_tps: float  # bandwidth / weight_bytes
    roofline_ratio: float  # decode_tps / roofline_tps
    streamed_weight_bytes: int  # weight_bytes minus lookup-only tensors (the embedding table)
    roofline_ratio_streamed: float  # decode_tps / (bandwidth / streamed_weight_bytes)
    provider: str = ""  # the execution provider the session ran on (EdgeModel.provider)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def measure_bandwidth(megabytes: int = 512, repeats: int = 3, threads: int = 1) -> float:
    """Bytes per second moved by np.copyto of a `megabytes` array (read + write counted), best of `repeats`.

    The copy is split over `threads` threads (numpy releases the GIL while copying), as many as the runtime
    decodes with: one core alone often cannot saturate the memory bus.
    """
    source = np.ones(megabytes * 1_000_000, dtype=np.uint8)
    target = np.zeros_like(source)
    np.copyto(target, source)  # commits target's pages: page faults are not bandwidth
    bounds = np.linspace(0, source.size, threads + 1).astype(int)
    parts = [(target[a:b], source[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    best = float("inf")
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in range(repeats):
            started = time.perf_counter()
            list(pool.map(lambda pair: np.copyto(*pair), parts))
            best = min(best, time.perf_counter() - started)
    return 2 * source.nbytes / best


def weight_bytes(folder: Path, model_file: str) -> int:
    """Size of the graph's external weights (model.onnx.data), or of the graph itself when it has none."""
    data = folder / (model_file + WEIGHTS_FILE_SUFFIX)
    return (data if data.is_file() else folder / model_file).stat().st_size


class PeakRss:
    """Peak resident memory of this process while the block runs (polled with psutil when installed)."""

    def __init__(self) -> None:
        self.peak_bytes = 0
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakRss:
        try:
            import psutil
        except ImportError:
            return self
        process = psutil.Process()
        self.peak_bytes = process.memory_info().rss

        def poll() -> None:
            while not self._done.wait(RSS_POLL_S):
                self.peak_bytes = max(self.peak_bytes, process.memory_info().rss)

        self._thread = threading.Thread(target=poll, name="phi3-edge-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        else:  # no psutil: the kernel's lifetime high-water mark (KiB on Linux, bytes on macOS)
            scale = 1 if sys.platform == "darwin" else 1024
            self.peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def bench_prompt(model: EdgeModel, length: int, seed: int = 0) -> list[int]:
    """`length` random ids from the tokenizer's vocabulary: same prompt for every backend."""
    vocab = min(model.tokenizer.vocab_size, model.config.vocab_size)
    ids: list[int] = np.random.default_rng(seed).integers(0, vocab, size=length).tolist()
    return ids


def run_bench(folder: str | Path, prompt_len: int = 128, gen_len: int = 128, backend: str = "ort",
              bandwidth_mb: int = 512, intra_op_threads: int | None = None, repeats: int = 1,
              verify: bool = True, allow_cpu: bool = False, lookup: int = 0) -> BenchReport:
    """Load, warm up (same prompt, 2 tokens), then time greedy generations of exactly gen_len tokens.

    With repeats > 1 the best TTFT and the best decode time are kept (noise on a shared machine only adds).
    """
    if prompt_len < 1 or gen_len < 2 or repeats < 1:
        raise Phi3EdgeError(f"bench needs prompt_len >= 1, gen_len >= 2 and repeats >= 1, got {prompt_len}, "
                            f"{gen_len} and {repeats}")
    folder = Path(folder)
    with PeakRss() as rss:
        model = EdgeModel.load(folder, backend=backend, intra_op_threads=intra_op_threads, verify=verify,
                               allow_cpu=allow_cpu)
        context = model.config.context_length
        if prompt_len + gen_len > context:
            raise Phi3EdgeError(f"prompt_len + gen_len = {prompt_len + gen_len} exceeds the context of {context}")
        prompt = bench_prompt(model, prompt_len)
        _timed(model, prompt, 2, lookup)  # first-run costs (arena growth, kernel setup) are not what we measure
        runs = [_timed(model, prompt, gen_len, lookup) for _ in range(repeats)]
    ttft, decode_s = min(run[0] for run in runs), min(run[1] for run in runs)
    bandwidth = measure_bandwidth(bandwidth_mb, threads=intra_op_threads or physical_cores() or 1)
    weights = weight_bytes(folder, model.config.model_file)
    streamed = weights - _lookup_only_bytes(folder / model.config.model_file)
    decode_tps = (gen_len - 1) / decode_s
    roofline = bandwidth / weights
    return BenchReport(backend, prompt_len, gen_len, ttft, prompt_len / ttft, decode_tps, rss.peak_bytes / MB,
                       bandwidth / 1e9, weights, roofline, decode_tps / roofline, streamed,
                       decode_tps * streamed / bandwidth, model.provider)


def _lookup_only_bytes(model_path: Path) -> int:
    """Bytes only a Gather reads (census.py); 0 for an ORT-format graph (`--mobile-files ort`), a flatbuffer
    the protobuf census cannot read: its streamed ratio then equals the plain one."""
    try:
        return read_graph_info(model_path).lookup_only_bytes
    except ArtifactError:
        return 0


def _timed(model: EdgeModel, prompt: list[int], new_tokens: int, lookup: int = 0) -> tuple[float, float]:
    """(TTFT, seconds for the other tokens) of a greedy run that ignores eos (with prompt lookup: lookup > 0)."""
    if model.backend == "genai":
        if lookup:
            raise Phi3EdgeError("bench --lookup runs our loop; the genai backend times onnxruntime-genai's own")
        from phi3_edge.edge_runtime.genai_backend import native_greedy_timings

        ttft, decode_s, _ = native_greedy_timings(model.session.model, prompt, new_tokens)  # type: ignore
        return ttft, decode_s
    generator = model.generator(prompt, new_tokens, ignore_eos=True, lookup=lookup)
    for _ in generator:
        pass
    return generator.prefill_seconds, generator.decode_seconds

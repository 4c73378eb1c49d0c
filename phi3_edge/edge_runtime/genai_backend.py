"""onnxruntime-genai as an engine for our generation loop, and its own native greedy loop for benchmarks.

GenaiDecoder plugs og.Generator in behind the same ForwardPass interface as our onnxruntime loop: og owns
the KV cache (its past_present_share_buffer), we feed tokens with append_tokens and read get_logits, so
sampling, stop strings, chat and the LongRoPE re-run behave exactly as with the "ort" backend.
native_greedy_timings runs og's own loop (generate_next_token picks the token in C++), which is what a
benchmark of "onnxruntime-genai's runtime" should measure.
Both take token ids, never text: prompts are encoded by EdgeModel (chat through chat_encoding, where a
message's content cannot write a control token); og's own tokenizer and chat template are not used.

onnxruntime-genai is optional (the [genai] extra): it is imported only when this backend is asked for.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from phi3_edge.edge_runtime.decoder_config import DecoderConfig
from phi3_edge.errors import ArtifactError, Phi3EdgeError


def import_genai() -> Any:
    try:
        import onnxruntime_genai
    except ImportError:
        raise Phi3EdgeError("the genai backend needs onnxruntime-genai (pip install 'phi3-edge[genai]')") from None
    return onnxruntime_genai


def load_genai_model(folder: Path, intra_op_threads: int | None = None, cpu_only: bool = False) -> Any:
    """og.Model of the folder; intra_op_threads overrides og's default of (logical CPUs / 2), so a benchmark
    can run both runtimes with the same thread count (og assumes SMT: on 2 non-SMT cores it uses 1 thread).
    cpu_only drops genai_config.json's providers (a CUDA/DirectML artifact run with allow_cpu)."""
    og = import_genai()
    try:
        config = og.Config(str(folder))
        if cpu_only:
            config.clear_providers()
        if intra_op_threads is not None:
            options = {"model": {"decoder": {"session_options": {"intra_op_num_threads": intra_op_threads}}}}
            config.overlay(json.dumps(options))
        return og.Model(config)
    except Exception as exc:  # og raises RuntimeError with a multi-line message for a bad folder
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArtifactError(f"onnxruntime-genai cannot load it: {first_line}", folder) from exc


class GenaiDecoder:
    """An artifact folder opened with og.Model; start() gives one og.Generator per generation."""

    backend = "genai"

    def __init__(self, folder: Path, config: DecoderConfig, *, intra_op_threads: int | None = None,
                 cpu_only: bool = False) -> None:
        self.config = config
        self.model = load_genai_model(Path(folder), intra_op_threads, cpu_only)
        self._og = import_genai()

    def start(self, max_length: int) -> GenaiPass:
        return GenaiPass(self._og, self.model, max_length)


class GenaiPass:
    def __init__(self, og: Any, model: Any, max_length: int) -> None:
        params = og.GeneratorParams(model)
        # og's search never picks a token here (we never call generate_next_token); max_length sizes its buffer.
        params.set_search_options(do_sample=False, max_length=max_length)
        self._generator = og.Generator(model, params)
        self._length = 0  # tokens og holds

    def run(self, input_ids: list[int], total_length: int) -> np.ndarray:
        keep = total_length - len(input_ids)
        if self._length > keep:  # a conversation's shorter common prefix: og drops the rest itself
            self._generator.rewind_to(keep)
        self._generator.append_tokens(input_ids)
        self._length = total_length
        logits = self._generator.get_logits()  # (B, 1, V): og keeps only the last position's
        last: np.ndarray = logits.reshape(-1, logits.shape[-1])[-1]  # (B, 1, V) -> (B, V) -> (V,)
        return last

    def reset(self) -> None:
        self._generator.rewind_to(0)
        self._length = 0


def native_greedy_timings(model: Any, prompt_ids: list[int], new_tokens: int) -> tuple[float, float, list[int]]:
    """og's own greedy loop: (seconds to the first token, seconds for the rest, the tokens).

    min_length = max_length: like our benchmark, it always generates new_tokens (eos does not end it).
    """
    og = import_genai()
    started = time.perf_counter()
    params = og.GeneratorParams(model)
    total = len(prompt_ids) + new_tokens
    params.set_search_options(do_sample=False, max_length=total, min_length=total)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt_ids)
    generator.generate_next_token()  # picks from the prefill's logits
    tokens = [int(generator.get_next_tokens()[0])]
    first = time.perf_counter()
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return first - started, time.perf_counter() - first, tokens

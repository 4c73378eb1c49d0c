"""llama.cpp as a peer on the same checkpoint: build it, convert to GGUF, quantize, time, and read its logits.

    build       `pip download --no-deps --no-binary :all: llama_cpp_python` (the sdist vendors llama.cpp), then
                cmake Release with -march=native (GGML_NATIVE) and only the targets we run: llama-bench,
                llama-quantize, llama-perplexity and libllama (the shared library read_logits() calls)
    convert     the vendored convert_hf_to_gguf.py, outtype bf16 (our checkpoints are bf16: no rounding);
                a locally trained byte-level BPE tokenizer has no entry in its pre-tokenizer hash table, so
                an unrecognized one is forced to "gpt-2" (the same byte-level regex), and a Phi-3 folder
                without tokenizer.model is marked GPT2Tokenizer (the Phi-4 path, which reads tokenizer.json)
    quantize    llama-quantize BF16 -> Q4_0 / Q4_K_M / Q8_0 with its default per-tensor choices (output.weight
                gets Q6_K under Q4_0 and Q4_K_M: that is what users of those files run)
    time        llama-bench: pp<prompt> at depth 0 (TTFT = prompt / pp t/s) and tg<gen> at depth <prompt>
                (decode after the prompt, as our bench decodes), JSON output
    logits      through libllama's C API (the sdist's ctypes bindings, only the llama_cpp.llama_cpp module):
                every position's logits for token ids WE choose, so KL is computed on exactly the ids our
                runtime sees, against the same fp32 reference
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SDIST = "llama_cpp_python"
TOOLS = ("llama-bench", "llama-quantize", "llama-perplexity")
QUANT_TYPES = ("Q4_0", "Q4_K_M", "Q8_0")
FORCED_PRE_TOKENIZER = "gpt-2"  # byte-level BPE with GPT-2's split regex: what tokenizers' ByteLevel() does


@dataclass(frozen=True)
class LlamaCpp:
    root: Path  # the llama.cpp source tree (vendor/llama.cpp of the sdist)
    bin: Path  # build/bin: the tools and libllama.so

    def tool(self, name: str) -> Path:
        return self.bin / name


def find_or_build(llamacpp_dir: Path | None, work: Path, log: Path) -> LlamaCpp:
    """An existing build (--llamacpp-dir: a llama.cpp tree or its build/), else download the sdist and build."""
    if llamacpp_dir is not None:
        for root in (llamacpp_dir, llamacpp_dir.parent):
            found = LlamaCpp(root, root / "build" / "bin")
            if all(found.tool(t).is_file() for t in TOOLS):
                return found
        raise SystemExit(f"error: {llamacpp_dir}: no build/bin/{{{','.join(TOOLS)}}} there")
    source = _download_sdist(work / "llamacpp-src", log)
    built = LlamaCpp(source, source / "build" / "bin")
    if not all(built.tool(t).is_file() for t in TOOLS):
        _build(source, log)
    return built


def _download_sdist(folder: Path, log: Path) -> Path:
    existing = sorted(folder.glob(f"{SDIST}-*/vendor/llama.cpp"))
    if existing:
        return existing[-1]
    folder.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SDIST, "-d", str(folder)],
         log)
    archive = sorted(folder.glob(f"{SDIST}-*.tar.gz"))[-1]
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    return sorted(folder.glob(f"{SDIST}-*/vendor/llama.cpp"))[-1]


def _build(source: Path, log: Path) -> None:
    build = source / "build"
    _run(["cmake", "-S", str(source), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON",
          "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF"], log)
    _run(["cmake", "--build", str(build), "-j", str(os.cpu_count() or 1), "--target", *TOOLS, "llama"], log)


def _run(command: list[str], log: Path, env: dict[str, str] | None = None) -> None:
    """Run a step, appending its output to `log`; a failure names the step and the log."""
    with log.open("a", encoding="utf-8") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"error: {Path(command[0]).name} {command[1] if len(command) > 1 else ''} failed "
                         f"(exit {done.returncode}); see {log}")


# --- GGUF conversion and quantization ------------------------------------------------------------------------

_CONVERT = """
import sys
sys.path.insert(0, {root!r})
sys.argv = ["convert_hf_to_gguf.py", *{argv!r}]
import convert_hf_to_gguf
from conversion.base import TextModel

_original = TextModel.get_vocab_base_pre

def _pre(self, tokenizer):
    try:
        return _original(self, tokenizer)
    except NotImplementedError:  # a tokenizer trained here has no hash in llama.cpp's table
        print("pre-tokenizer not recognized: forcing {forced}", file=sys.stderr)
        return {forced!r}

TextModel.get_vocab_base_pre = _pre
convert_hf_to_gguf.main()
"""


def convert(llama: LlamaCpp, checkpoint: Path, out: Path, log: Path) -> Path:
    """checkpoint (HF folder) -> BF16 GGUF at `out` (kept: later runs reuse it)."""
    if out.is_file():
        return out
    view = _conversion_view(checkpoint, out.parent / (out.stem + ".view"))
    partial = out.with_suffix(".partial")
    script = _CONVERT.format(root=str(llama.root), argv=[str(view), "--outtype", "bf16", "--outfile", str(partial)],
                             forced=FORCED_PRE_TOKENIZER)
    _run([sys.executable, "-c", script], log)
    partial.rename(out)
    shutil.rmtree(view)
    return out


def _conversion_view(checkpoint: Path, view: Path) -> Path:
    """Symlinks to the checkpoint's files; tokenizer_config.json copied and marked GPT2Tokenizer when the
    folder has no sentencepiece tokenizer.model (convert's Phi-3 class reads tokenizer.json only on that path)."""
    shutil.rmtree(view, ignore_errors=True)
    view.mkdir(parents=True)
    for item in checkpoint.iterdir():
        if item.name != "tokenizer_config.json":
            (view / item.name).symlink_to(item.resolve())
    config_path = checkpoint / "tokenizer_config.json"
    config: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    if not (checkpoint / "tokenizer.model").is_file():
        config["tokenizer_class"] = "GPT2Tokenizer"
    (view / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return view


def quantize(llama: LlamaCpp, source: Path, kind: str, log: Path, threads: int, work: Path) -> Path:
    """source (BF16, or an already quantized GGUF: requantized from its dequantized weights) -> `kind`."""
    stem = source.stem.replace("-BF16", "")
    out = work / f"{stem}-{kind}.gguf"
    if not out.is_file():
        partial = out.with_suffix(".partial")
        requantize = [] if "BF16" in source.name else ["--allow-requantize"]
        _run([str(llama.tool("llama-quantize")), *requantize, str(source), str(partial), kind, str(threads)], log)
        partial.rename(out)
    return out


# --- speed: llama-bench --------------------------------------------------------------------------------------

def bench(llama: LlamaCpp, gguf: Path, threads: int, prompt: int, gen: int, repeats: int) -> dict[str, float]:
    """TTFT (prompt / pp t/s at depth 0) and decode t/s (tg at depth `prompt`), best of llama-bench's runs.

    llama-bench's JSON lists every repetition's t/s (samples_ts); we keep the fastest, as our bench keeps the
    best run (noise on a shared machine only slows a run down), and also its mean.
    """
    common = [str(llama.tool("llama-bench")), "-m", str(gguf), "-t", str(threads), "-r", str(repeats), "-o", "json"]
    pp = _bench_json(common + ["-p", str(prompt), "-n", "0", "-d", "0"])
    tg = _bench_json(common + ["-p", "0", "-n", str(gen), "-d", str(prompt)])
    pp_best, tg_best = max(pp["samples_ts"]), max(tg["samples_ts"])
    return {"ttft_s": prompt / pp_best, "prefill_tps": pp_best, "decode_tps": tg_best,
            "decode_tps_mean": float(tg["avg_ts"])}


def _bench_json(command: list[str]) -> dict[str, Any]:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["failed"])[-1]
        raise RuntimeError(f"llama-bench exit {done.returncode}: {tail}")
    results = json.loads(done.stdout)
    return dict(results[0])


# --- logits through libllama -----------------------------------------------------------------------------------

def _bindings(llama: LlamaCpp) -> Any:
    """The sdist's llama_cpp.llama_cpp module alone (its package __init__ pulls in diskcache & co)."""
    package_dir = llama.root.parent.parent / "llama_cpp"
    os.environ["LLAMA_CPP_LIB_PATH"] = str(llama.bin)
    package = types.ModuleType("llama_cpp")
    package.__path__ = [str(package_dir)]
    sys.modules.setdefault("llama_cpp", package)
    spec = importlib.util.spec_from_file_location("llama_cpp.llama_cpp", package_dir / "llama_cpp.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["llama_cpp.llama_cpp"] = module
    spec.loader.exec_module(module)
    return module


_QUIET: Any = None


def read_logits(llama: LlamaCpp, gguf: Path, sequences: list[list[int]], threads: int) -> list[np.ndarray]:
    """Logits (S, V) float32 at every position of each id sequence, one llama_decode per sequence."""
    lib = _bindings(llama)
    global _QUIET  # the C side keeps the pointer: the callback object must outlive every libllama call
    _QUIET = lib.llama_log_callback(lambda *_: None)
    lib.llama_log_set(_QUIET, ctypes.c_void_p(0))  # its load log is long
    lib.llama_backend_init()
    model_params = lib.llama_model_default_params()
    model = lib.llama_model_load_from_file(str(gguf).encode(), model_params)
    if not model:
        raise RuntimeError(f"{gguf}: libllama could not load it")
    longest = max(len(ids) for ids in sequences)
    context_params = lib.llama_context_default_params()
    context_params.n_ctx = context_params.n_batch = context_params.n_ubatch = longest
    context_params.n_threads = context_params.n_threads_batch = threads
    context = lib.llama_init_from_model(model, context_params)
    vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(model))
    batch = lib.llama_batch_init(longest, 0, 1)
    out: list[np.ndarray] = []
    try:
        for ids in sequences:
            lib.llama_memory_clear(lib.llama_get_memory(context), True)
            batch.n_tokens = len(ids)
            for position, token in enumerate(ids):
                batch.token[position], batch.pos[position] = token, position
                batch.n_seq_id[position], batch.seq_id[position][0] = 1, 0
                batch.logits[position] = 1  # every position: KL needs each next-token distribution
            if lib.llama_decode(context, batch) != 0:
                raise RuntimeError(f"{gguf}: llama_decode failed")
            pointer = lib.llama_get_logits(context)
            out.append(np.ctypeslib.as_array(pointer, shape=(len(ids), vocab)).copy())  # (S, V)
    finally:
        lib.llama_batch_free(batch)
        lib.llama_free(context)
        lib.llama_model_free(model)
    return out

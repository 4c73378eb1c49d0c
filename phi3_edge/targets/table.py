"""The target table: frozen data, target name -> everything that differs between targets.

No `if ep == ...` anywhere else: code reads a named field here, and each field says why it exists.
This module imports no code of ours.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypedDict


@dataclass(frozen=True)
class Target:
    name: str
    execution_provider: str  # ORT EP name as onnxruntime-genai's provider_options spells it ("cpu", "cuda", "dml")
    weight_format: str  # "fp32" | "fp16" | "int8" | "int4"
    io_dtype: str  # activations, logits and KV cache: "float32" | "float16"
    logits_atol: float  # max |logits - cpu-fp32 logits| on the tiny test checkpoints (measured, ~2x margin)
    notes: str
    # Lowest Pearson correlation of each position's prompt logits with cpu-fp32's (centered per row) on the
    # tiny checkpoints. logits_atol alone is blind at int4: its 9.0 exceeds the logits' own range (RMS ~1.6),
    # so all-zero logits passed it; they have correlation 0 here. Figures measured below with each target.
    logits_min_corr: float = 0.9999
    bits: int | None = None  # MatMulNBits weight width; None = float weights and plain MatMul
    block_size: int | None = None  # MatMulNBits quantization block along K (quantized formats only)
    accuracy_level: int | None = None  # MatMulNBits compute precision: 4 = int8 activations on CPU (fast, mobile)
    symmetric: bool = True  # RTN without zero points (kernel uses 2^(bits-1)): smaller; asymmetric: ~6% lower error
    fused_rotary: bool = True  # GQA do_rotary=1; DirectML needs a separate RotaryEmbedding with position_ids
    packed_qkv: bool = True  # one QKV MatMul; DirectML's GQA wants separate Q/K/V
    allow_if_node: bool = True  # DirectML graph capture cannot run an If node (LongRoPE cache switch)
    ort_format: bool = False  # mobile: also emit model.ort + required_operators.config
    # genai_config.json's provider_options: onnxruntime-genai runs on CPU when no provider is listed (the
    # builder writes an empty list for CPU), so a CPU target lists none unless the caller passes options.
    genai_lists_provider: bool = True
    # Measured per-tensor choices (figures above TARGETS). lm_head_bits: the head's (and a tied table's)
    # width when --lm-head is not given (None: as the body). block_overrides: (Linear stem, block size) for the
    # body Linears that trade a coarser block for speed; a stem listed more than once takes the first block
    # that divides the hidden size (block_overrides_for). quantize_embeddings: an untied embedding table is
    # stored as GatherBlockQuantized in the head's format when --embeddings is not given.
    lm_head_bits: int | None = None
    # The RTN default (above calibrate_up_to_params, no --quant-algo or --mixed-precision of the user's) also
    # widens llama.cpp's use_more_bits MLP down projections to int8: data-free, no calibration pass. The
    # calibrated default measures its own widening instead (figures above TARGETS).
    rtn_int8_down: bool = False
    block_overrides: tuple[tuple[str, int], ...] = ()
    quantize_embeddings: bool = False
    # The quantization algorithm an export runs when --quant-algo is not given, for a checkpoint of at most
    # calibrate_up_to_params parameters (counted from its tensor shapes); larger ones, and a target with None
    # here, get "rtn". The calibrated pass costs time in proportion to the parameters (figures above TARGETS).
    calibrated_algo: str | None = None
    calibrate_up_to_params: int = 0
    # With the calibrated default (and no --mixed-precision of the user's): measured mixed precision within this
    # factor of the plain export's weight bytes, from the same calibration pass (figures above TARGETS).
    calibrated_size_budget: float | None = None

    def block_overrides_for(self, hidden_size: int) -> dict[str, int]:
        """Each overridden Linear stem's block for this hidden size: the first listed block that divides it (a
        padded block would add bytes instead of saving them), none for a stem no listed block divides."""
        chosen: dict[str, int] = {}
        for stem, block in self.block_overrides:
            if stem not in chosen and hidden_size % block == 0:
                chosen[stem] = block
        return chosen


# The target every other one is measured against (parity, the accuracy gate, `eval --ref`).
REFERENCE_TARGET = "cpu-fp32"

# The CPU EP is onnxruntime-genai's default: genai_config.json lists no provider for it.
class _Flags(TypedDict, total=False):
    genai_lists_provider: bool
    fused_rotary: bool
    packed_qkv: bool
    allow_if_node: bool


_CPU: _Flags = {"genai_lists_provider": False}

# DirectML: separate rotary, separate Q/K/V and no If node (see the field comments above).
_DML: _Flags = {"fused_rotary": False, "packed_qkv": False, "allow_if_node": False}

# logits_atol: 2x the largest max-abs prompt-logit difference to cpu-fp32 measured over all tiny test
# variants (tests/targets/test_table.py; CUDA/DML graphs measured on the CPU EP). Those checkpoints have
# K = 64..256, i.e. 2..8 blocks per row, and logits of RMS ~1.6: int4 errors there are far larger than on
# real models, so these bound regressions, not quality (quality is measured by KL / top-1 in `eval`).
# Quantization figures on real weights (bench/quant_fidelity.py --real smollm2:135m; SmolLM2-135M, tied table,
# Q4_1 source dequantized to fp32; 2 x 1022 held-out tokens of English prose / Python; ppl gap to fp32):
#   cpu-int4 as today (RTN symmetric, int4 table)   +31.7 % / +36.6 %   KL 0.349   84.0 MB
#   the table alone at int4 (fp32 body)              +5.7 % /  +7.5 %   KL 0.071   (a fifth of the params)
#   RTN + int8 table                                +23.7 % / +25.5 %   KL 0.269   98.2 MB
#   GPTQ (act-order) + int4 / int8 table            +21.1 / +29.1 %, +14.6 / +18.9 %   KL 0.245, 0.172
#   AWQ + RTN + int4 / int8 table                   +19.1 / +27.4 %, +11.7 / +18.2 %   KL 0.219, 0.141
#   HQQ (float zero points) + int4 table             +5.9 % /  +7.6 %   97.3 MB: re-finds the Q4_1 grid exactly,
#                                                    an artifact of this source; float zero points leave ORT's fast path
#   AWQ + GPTQ + int8 table                         +13.6 % / +18.3 %   KL 0.148   (no gain over AWQ + RTN here)
#   HQQ (float zero points) + int8 table             +0.1 % /  +0.1 %   KL 0.0004  111.5 MB (Q4_1 grid re-found)
#   onnxruntime MatMulNBitsQuantizer RTN / HQQ      +30.4 / +35.5 %, +10.4 / +9.9 %   (int4 head, fp32 Gather)
#   cpu-int8 (RTN int8 + int8 table)                 +0.2 % /  +0.2 %   KL 0.0014  151.3 MB   (goal < 1 %: met)
#   llama.cpp Q4_0 / Q4_K_M / Q8_0 (own F32 base)   +22.1 / +29.1 %, +6.7 / +7.2 %, -0.0 / -0.6 %
#                                                    at 91.7 / 105.5 / 144.8 MB
#   (Q4_K_M here is mostly q5_0/q5_1 + q8_0 table: 576 columns do not divide into K-quant super-blocks.)
# The symmetric int4 grid (no zero points, the fast kernel path) stays the cpu-int4 format; once the export
# runs the calibration pass (reference/export_calibration.py; the default below), AWQ + an int8 tied table is the
# measured best at 98.2 MB (< Q4_K_M's bytes), and the int8 table is the largest single gain per byte.
# cpu-int4 / mobile-int4 per-tensor defaults, measured (bench/block_tradeoff.py; KL on smollm2:135m through the
# layer-streamed reference, speed as MatMulNBits ratios at Phi-3-mini shapes, 2 threads, spinning off):
#   int8 lm_head + tied table          KL 0.321 -> 0.255, +14 MB on SmolLM2 (+49 MB untied Phi-3-mini, ~2 %),
#                                      decode +1 %: the largest accuracy gain per byte of any single choice
#   gate_up at block 64                +0.023 KL, -21 % of Phi-3-mini decode MatMul time (gate_up is 56 % of it),
#                                      -11 % prefill MatMul, -10 % of gate_up's bytes: 7-20x cheaper in KL per
#                                      % of decode than any other group (qkv b64 +0.017 KL for 2.3 %; down b128
#                                      +0.073; block 128 everywhere +0.335 KL, ppl +98 %)
#   both together                      KL 0.274 at 94.9 MB (today's default 0.321 at 84.0 MB)
#   untied embeddings quantized        lookup-only KL cost <= +0.0002; a Gather of one row 5-13 us vs a 557 ms
#                                      decode step; Phi-3-mini's table 394 MB -> 111 MB (int8)
#   accuracy_level 4 kept              level 0 measured 1.3-3.9x slower in every shape
_GATE_UP_64 = (("mlp.gate_up_proj", 64),)
# cpu-int4's first token (issue 13): prefill is 92 % MatMulNBits, and on x86 MLAS's int8 kernels at M=128 block 64
# runs no faster than 32 (135.5 vs 136.8 ms, K=3072 N=8192 x4, 2 threads), block 128 does: 101.5 ms. So gate_up
# (35 % of prefill) goes to block 128 where 128 divides the hidden size (else 64, as before), and the RTN default
# (above calibrate_up_to_params) buys the KL back with llama.cpp's int8 down projections (rtn_int8_down), which
# cost prefill nothing measurable. One run (bench/vs_llamacpp.py --layers 8 --passes 4, Phi-3-mini shapes,
# random weights, 1.1B params so RTN; TTFT and decode as ratios to llama.cpp Q4_0 in the same run):
#   RTN, gate_up 64 (before)                     KL 0.2111   764.5 MB   TTFT 1.08-1.15x   decode 1.15-1.26x
#   RTN, gate_up 128                             KL 0.2207   751.9 MB   TTFT 0.94-0.98x   decode 1.32-1.39x
#   RTN, gate_up 128 + int8 down (4/8 layers)    KL 0.2070   802.2 MB   TTFT 0.92x        decode 1.36x
#   block 128 everywhere                         KL 0.2714   686.2 MB   TTFT 0.77x
#   llama.cpp Q4_0                               KL 0.2637   646.7 MB
# On real weights (bench/artifact_ppl.py, SmolLM2-135M, whose 576 columns keep gate_up at 64) the int8 down
# projections take RTN from +24.6 / +29.5 % ppl gap, KL 0.342, 97.4 MB to +16.7 / +29.6 %, KL 0.219, 103.5 MB.
# Not taken: uint zero points on the RTN body. They cost MLAS nothing (0.91-0.99x the time) and lowered KL on
# random weights (0.2038 with gate_up 128), but on SmolLM2 they raised it: KL 0.391 vs 0.342 (+32.5 / +30.0 %),
# and 0.362 with zero points that never clip a block's extremes. mobile-int4 keeps block 64 and no widening: no
# ARM prefill was measured here.
_GATE_UP_COARSE = (("mlp.gate_up_proj", 128), ("mlp.gate_up_proj", 64))

# The default calibrated algorithm (calibrated_algo, issue 16): AWQ (scale search + per-block clip search on
# block Grams, over the built-in calibration text) on SmolLM2-135M real weights, cpu-int4 as shipped:
#   manifest fidelity   KL 0.108, top-1 87 %      vs RTN's KL ~0.29, top-1 72 %     (same bytes)
#   ppl gap to fp32     +8.2 % / +9.9 %           vs RTN's +24.6 % / +28.2 %
#   export wall         45 s                      vs RTN's ~20 s (2 cores)
# Its cost scales with the parameters: one Phi-3-mini-shaped layer (113 M params) takes 135 s vs 4 s for RTN
# (bench/export_memory.py --shape mini --layers 1 --precision int4 awq), so a 3.8B export would take about an
# hour on 2 cores. Up to 1B parameters (~20 min at that rate, a few minutes for the small models this targets)
# the calibration is the default; above it an export stays RTN unless --quant-algo awq asks for the hour.
_CALIBRATE_UP_TO = 1_000_000_000
# The calibrated default also widens the measured most-sensitive tensors to int8 within 1.08 x the plain bytes
# (bench/artifact_ppl.py, SmolLM2-135M exported and run by onnxruntime, ppl gap prose / Python to cpu-fp32):
#   awq                           +8.2 % / +9.7 %   KL 0.108   97.4 MB   export 39 s
#   awq + measured int8 x1.08     +5.8 % / +7.0 %   KL 0.080  104.8 MB   export 81 s
#   awq + measured int8 x1.253    +3.5 % / +2.9 %   KL 0.047  121.2 MB
#   llama.cpp Q4_K_M              +7.1 % / +7.1 %             105.5 MB   (the goal: its gap at no more bytes)
# so the default meets Q4_K_M's gap within its bytes; the sensitivity pass roughly doubles the export time.
_CALIBRATED_BUDGET = 1.08

TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(REFERENCE_TARGET, "cpu", "fp32", "float32", 1e-4,
               "the reference every other target is measured against", **_CPU),
        Target("cpu-int8", "cpu", "int8", "float32", 1.2,  # measured 0.57; corr >= 0.9990 measured
               "int8 weights and int8 activations: at accuracy_level 0, ORT 1.32's CPU 8-bit MatMulNBits "
               "measured 26x slower than at level 4 (one 3072x8192 decode step, 2-core x86)",
               bits=8, block_size=32, accuracy_level=4, logits_min_corr=0.995, **_CPU),
        # int4 corr measured 0.896 (hqq, longrope_partial) .. 0.949 (hqq, partial_tied_wide), rtn >= 0.909, awq
        # (the default on the tiny checkpoints) >= 0.911 (gqa), with the int8 head / table and gate_up b64
        # defaults (0.852 before them); 0.80 fails zero/shuffled logits (~0)
        Target("cpu-int4", "cpu", "int4", "float32", 9.0,  # measured 4.72 (rtn; awq 3.78, hqq 3.78; 4.88 before
               # the per-tensor defaults)
               "the default edge target", bits=4, block_size=32, accuracy_level=4, logits_min_corr=0.80, **_CPU,
               lm_head_bits=8, block_overrides=_GATE_UP_COARSE, rtn_int8_down=True, quantize_embeddings=True,
               calibrated_algo="awq", calibrate_up_to_params=_CALIBRATE_UP_TO,
               calibrated_size_budget=_CALIBRATED_BUDGET),
        Target("cuda-fp16", "cuda", "fp16", "float16", 0.08,  # measured 0.037
               "fp16 weights and activations"),
        Target("cuda-int4", "cuda", "int4", "float16", 9.0,  # measured 4.95; corr >= 0.849 measured
               "fp16 activations into MatMulNBits (accuracy_level 0: no activation quantization)",
               bits=4, block_size=32, accuracy_level=0, logits_min_corr=0.80),
        Target("dml-fp16", "dml", "fp16", "float16", 0.08,  # measured 0.037
               "fp16; graph shaped for DirectML (separate Q/K/V and rotary, no If)", **_DML),
        Target("dml-int4", "dml", "int4", "float16", 10.0,  # measured 4.56; corr >= 0.886 measured
               "int4 block 128 (design table); graph shaped as dml-fp16",
               bits=4, block_size=128, accuracy_level=0, logits_min_corr=0.80, **_DML),
        # measured as cpu-int4: rtn 4.72, corr >= 0.909; awq (the default on the tiny checkpoints) 3.78, >= 0.911
        Target("mobile-int4", "cpu", "int4", "float32", 9.0,
               "ARM/x86 phones and IoT boards; + ORT format and a reduced-ops config",
               bits=4, block_size=32, accuracy_level=4, ort_format=True, logits_min_corr=0.80, **_CPU,
               lm_head_bits=8, block_overrides=_GATE_UP_64, quantize_embeddings=True,
               calibrated_algo="awq", calibrate_up_to_params=_CALIBRATE_UP_TO,
               calibrated_size_budget=_CALIBRATED_BUDGET),
    )
}


def get_target(name: str) -> Target:
    """Look a target up by name; unknown names raise KeyError listing the valid ones (callers wrap it)."""
    try:
        return TARGETS[name]
    except KeyError:
        raise KeyError(f"unknown target {name!r}; valid targets: {', '.join(TARGETS)}") from None


# The default edge target: `export`'s default and the one `targets` marks as such.
DEFAULT_TARGET = "cpu-int4"

# onnxruntime's name for each execution_provider value (what get_available_providers() lists): how
# `run MODEL` tells which targets this machine can run, and what a session is asked to use.
ORT_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "dml": "DmlExecutionProvider"}

# `run MODEL` exports for the first of these whose provider onnxruntime offers here: int4 (the smallest
# weights that keep quality) on the fastest device; the CPU, in every onnxruntime build, last.
AUTO_TARGETS = ("cuda-int4", "dml-int4", DEFAULT_TARGET)


def ort_provider(target: Target) -> str:
    """onnxruntime's provider name for a target (e.g. "CUDAExecutionProvider")."""
    return ORT_PROVIDERS[target.execution_provider]


def best_target(available_providers: Iterable[str]) -> Target:
    """The first AUTO_TARGETS entry whose provider is among `available_providers` (the CPU one if none is)."""
    available = set(available_providers)
    for name in AUTO_TARGETS:
        if ort_provider(TARGETS[name]) in available:
            return TARGETS[name]
    return TARGETS[DEFAULT_TARGET]

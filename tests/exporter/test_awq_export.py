"""AWQ through the exporter: scales folded on read (exporter/scaled_store.py) leave the function unchanged, the
`--quant-algo awq` export holds the target's parity bound, beats RTN on planted outlier channels, and never
carries a GGUF tensor whose weights it changed.

The fold check is the strong one: any positive scales folded into an fp32 export must give the unscaled
export's logits (up to fp32 rounding), for the packed plan and the separate-Q/K/V plan's row ranges, for a
Phi-3 checkpoint and a Llama-layout one (separate q/k/v and gate/up tensors behind packed views).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from fixtures.llama_gguf import llama_model, make_llama_checkpoint, write_gguf
from fixtures.reference import hf_full_logits, ort_incremental
from fixtures.tokenizer import write_tiny_tokenizer
from phi3_edge import api
from phi3_edge.exporter.build import export_graph
from phi3_edge.exporter.config import Phi3Spec, load_spec
from phi3_edge.exporter.scaled_store import ScaledStore
from phi3_edge.exporter.weights import WeightStore
from phi3_edge.quantize.awq import AwqScales
from phi3_edge.targets.table import TARGETS

PROMPT = [3, 17, 42, 7, 99, 5, 12, 64, 23, 8, 31, 2, 150, 77, 201, 9]
FP32_ATOL = 1e-4  # the exporter's fp32 parity bar


def random_scales(spec: Phi3Spec, seed: int = 0) -> AwqScales:
    """Positive scales spanning ~e^-1.5 .. e^1.5 on every foldable input: any s must leave the function as is."""
    rng = np.random.default_rng(seed)
    found = AwqScales({})
    for layer in range(spec.num_layers):
        prefix = f"model.layers.{layer}"
        for name, width in ((f"{prefix}.self_attn.qkv_proj.weight", spec.hidden_size),
                            (f"{prefix}.mlp.gate_up_proj.weight", spec.hidden_size),
                            (f"{prefix}.mlp.down_proj.weight", spec.intermediate_size)):
            found.scales[name] = np.exp(rng.uniform(-1.5, 1.5, width)).astype(np.float32)
    return found


def prompt_logits(folder: Path, spec: Phi3Spec) -> np.ndarray:
    got = ort_incremental(folder / "model.onnx", PROMPT, 0, spec.num_layers, spec.num_kv_heads, spec.head_dim)
    return got.prompt_logits  # (S, V)


def correlation(logits: np.ndarray, reference: np.ndarray) -> float:
    """Pearson correlation of row-centred (S, V) logits (softmax ignores shifts); as tests/targets/test_table.py."""
    a = logits - logits.mean(axis=-1, keepdims=True)
    b = reference - reference.mean(axis=-1, keepdims=True)
    return float((a * b).sum() / np.sqrt(np.square(a).sum() * np.square(b).sum()))


@pytest.fixture(scope="module")
def llama_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_llama_checkpoint(tmp_path_factory.mktemp("llama") / "gqa", "gqa")


@pytest.mark.parametrize("layout", ["phi3", "llama"])
@pytest.mark.parametrize("packed_qkv", [True, False])
def test_folded_scales_leave_the_fp32_export_unchanged(tiny_checkpoint, llama_checkpoint, tmp_path, layout: str,
                                                       packed_qkv: bool) -> None:
    checkpoint = tiny_checkpoint("gqa") if layout == "phi3" else llama_checkpoint
    spec = load_spec(checkpoint / "config.json")
    files = tuple(sorted(checkpoint.glob("*.safetensors")))
    target = dataclasses.replace(TARGETS["cpu-fp32"], packed_qkv=packed_qkv)
    (tmp_path / "plain").mkdir()
    (tmp_path / "folded").mkdir()
    export_graph(spec, target, files, tmp_path / "plain")
    export_graph(spec, target, files, tmp_path / "folded", scales=random_scales(spec))
    plain, folded = prompt_logits(tmp_path / "plain", spec), prompt_logits(tmp_path / "folded", spec)
    np.testing.assert_allclose(folded, plain, atol=FP32_ATOL, rtol=0)
    with WeightStore(files) as store, ScaledStore(files, random_scales(spec)) as scaled:
        name = "model.layers.0.mlp.gate_up_proj.weight"
        info = store.info(name, (2 * spec.intermediate_size, spec.hidden_size))
        assert not np.allclose(scaled.read_rows(info, 0, 4), store.read_rows(info, 0, 4))  # weights did change


def test_row_and_column_reads_fold_alike(llama_checkpoint) -> None:
    """NBitsLinear reads rows, FloatLinear column blocks, a separate-Q/K/V plan row ranges: one fold for all."""
    spec = load_spec(llama_checkpoint / "config.json")
    files = tuple(sorted(llama_checkpoint.glob("*.safetensors")))
    scales = random_scales(spec, seed=3)
    inter, hidden = spec.intermediate_size, spec.hidden_size
    with WeightStore(files) as store, ScaledStore(files, scales) as scaled:
        gate_up = store.info("model.layers.1.mlp.gate_up_proj.weight", (2 * inter, hidden))
        w = store.read_rows(gate_up, 0, 2 * inter)  # (2I, H) gate rows then up rows
        s_mlp = scales.scales["model.layers.1.mlp.gate_up_proj.weight"]
        s_down = scales.scales["model.layers.1.mlp.down_proj.weight"]
        expected = w * s_mlp
        expected[inter:] /= s_down[:, None]
        np.testing.assert_allclose(scaled.read_rows(gate_up, 0, 2 * inter), expected, rtol=1e-6)
        rows = (inter - 5, inter + 7)  # across the gate | up boundary
        np.testing.assert_allclose(scaled.read_columns(gate_up, 10, 30, rows), expected[rows[0]:rows[1], 10:30],
                                   rtol=1e-6)
        norm = store.info("model.layers.1.input_layernorm.weight", (hidden,))
        np.testing.assert_allclose(scaled.read_rows(norm, 0, hidden), store.read_rows(norm, 0, hidden)
                                   / scales.scales["model.layers.1.self_attn.qkv_proj.weight"], rtol=1e-6)


def test_awq_export_holds_the_int4_parity_bound(tiny_checkpoint, tmp_path) -> None:
    folder = tiny_checkpoint("gqa")
    spec = load_spec(folder / "config.json")
    api.export(str(folder), "cpu-int4", tmp_path / "awq", quant_algo="awq", progress=False, fidelity=False)
    api.export(str(folder), "cpu-int4", tmp_path / "rtn", quant_algo="rtn", progress=False, fidelity=False)
    reference = hf_full_logits(folder, PROMPT)  # (S, V) transformers, fp32
    awq = prompt_logits(tmp_path / "awq", spec)
    target = TARGETS["cpu-int4"]
    assert float(np.abs(awq - reference).max()) <= target.logits_atol
    assert correlation(awq, reference) >= target.logits_min_corr
    assert not np.array_equal(awq, prompt_logits(tmp_path / "rtn", spec))  # the scales changed the weights
    recipe = json.loads((tmp_path / "awq" / "manifest.json").read_text(encoding="utf-8"))["recipe"]
    assert recipe["quant_algo"] == "awq"
    body = recipe["quantization"]["body"]
    assert body["algo"] == "awq" and body["symmetric"] and body["bits"] == 4
    assert all(recipe["quantization"][key]["algo"] == "rtn" for key in ("lm_head",))  # the layers only
    calibration = recipe["calibration"]
    assert calibration["source"] == "built-in" and calibration["algo"] == "awq" and calibration["tokens"] > 0
    assert len(calibration["awq"]["alphas"]) == 3 * spec.num_layers
    assert all(ratio <= 1.0 for ratio in calibration["awq"]["error_ratio"].values())  # alpha 0 is RTN
    clip = calibration["awq"]["clip_error_ratio"]  # every Linear clip-searched; f = 1 is RTN
    assert len(clip) == 4 * spec.num_layers and all(ratio <= 1.0 for ratio in clip.values())
    assert min(clip.values()) < 1.0, clip


def planted_outliers(source: Path, folder: Path, gain: float = 16.0) -> Path:
    """The same function with a few input channels made loud: norm gain * gain, the Linear's columns / gain.

    RTN then rounds those columns (tiny next to their block's maximum) to almost nothing while large
    activations flow through them: the case AWQ exists for."""
    shutil.copytree(source, folder)
    path = next(folder.glob("*.safetensors"))
    weights = {k: v.copy() for k, v in load_file(str(path)).items()}
    channels = np.array([3, 17, 40])
    for name in sorted(weights):
        for norm, linear in (("input_layernorm", "self_attn.qkv_proj"), ("post_attention_layernorm",
                                                                           "mlp.gate_up_proj")):
            if name.endswith(f".{norm}.weight"):
                prefix = name[: -len(f"{norm}.weight")]
                weights[name][channels] *= gain
                weights[f"{prefix}{linear}.weight"][:, channels] /= gain
    save_file(weights, str(path))
    return folder


def test_awq_beats_rtn_on_outlier_channels(tiny_checkpoint, tmp_path) -> None:
    folder = planted_outliers(tiny_checkpoint("gqa"), tmp_path / "outliers")
    spec = load_spec(folder / "config.json")
    api.export(str(folder), "cpu-fp32", tmp_path / "fp32", progress=False)
    reference = prompt_logits(tmp_path / "fp32", spec)
    errors = {}
    for algo in ("rtn", "awq"):
        api.export(str(folder), "cpu-int4", tmp_path / algo, quant_algo=algo, progress=False, fidelity=False)
        errors[algo] = float(np.square(prompt_logits(tmp_path / algo, spec) - reference).mean())
    assert errors["awq"] < errors["rtn"], errors


def test_gguf_awq_carries_no_folded_tensor(tmp_path) -> None:
    """Q4_0 blocks hold the unscaled weights: the body's Linears come ready-made from the calibration pass
    (folded, clip-searched) and none is carried, only the head's tensors; the export stays within the int4
    bound of the file's fp32 export."""
    tokenizer = tmp_path / "tok"
    tokenizer.mkdir()
    write_tiny_tokenizer(tokenizer)
    path = write_gguf(tmp_path / "q4.gguf", llama_model("gqa"), "llama", "Q4_0", tokenizer_folder=tokenizer)
    spec = load_spec(path)
    api.export(str(path), "cpu-fp32", tmp_path / "fp32", progress=False)
    api.export(str(path), "cpu-int4", tmp_path / "awq", quant_algo="awq", progress=False, fidelity=False)
    recipe = json.loads((tmp_path / "awq" / "manifest.json").read_text(encoding="utf-8"))["recipe"]
    log = recipe["gguf_blocks"]
    assert "re-quantized" not in log and log.endswith("Q4_0 carried as they are"), log
    assert int(log.split()[0]) <= 2, log  # the table and lm_head at most: no body Linear
    reference, awq = prompt_logits(tmp_path / "fp32", spec), prompt_logits(tmp_path / "awq", spec)
    assert correlation(awq, reference) >= TARGETS["cpu-int4"].logits_min_corr

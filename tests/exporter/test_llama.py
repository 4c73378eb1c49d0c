"""Llama-layout Hugging Face checkpoints through the Phi-3 graph: q/k/v and gate/up presented as the packed
projections by row ranges. Parity against LlamaForCausalLM as for phi3 (1e-4, greedy tokens over 16 KV-cache
decode steps): GQA untied, MHA tied, rope_theta 500000; and the clear refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fixtures.llama_gguf import make_llama_checkpoint
from fixtures.reference import hf_reference, ort_incremental
from phi3_edge.api import export
from phi3_edge.errors import CheckpointError
from phi3_edge.exporter.config import load_spec


@pytest.fixture(scope="module")
def llama_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("llama")
    return {v: make_llama_checkpoint(root / v, v) for v in ("gqa", "mha_tied", "theta")}


@pytest.mark.parametrize("variant", ["gqa", "mha_tied", "theta"])
@pytest.mark.parametrize("target", ["cpu-fp32"])
def test_llama_parity(llama_checkpoints: dict[str, Path], tmp_path: Path, variant: str, target: str) -> None:
    checkpoint = llama_checkpoints[variant]
    ids = np.random.default_rng(5).integers(0, 352, size=20).tolist()
    export(str(checkpoint), target=target, output=tmp_path / "art", progress=False)
    spec = load_spec(checkpoint / "config.json")
    ours = ort_incremental(tmp_path / "art" / "model.onnx", ids, 16, spec.num_layers, spec.num_kv_heads,
                           spec.head_dim)
    ref = hf_reference(checkpoint, ids, 16)
    np.testing.assert_allclose(ours.prompt_logits, ref.prompt_logits, atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours.step_logits, ref.step_logits, atol=1e-4, rtol=0)
    assert ours.tokens == ref.tokens


def test_llama_unpacked_qkv_target(llama_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    """A target with separate Q/K/V MatMuls reads row ranges of the packed view: each part exactly once."""
    from phi3_edge.exporter.weights import WeightStore

    checkpoint = llama_checkpoints["gqa"]
    with WeightStore(tuple(checkpoint.glob("*.safetensors"))) as store:
        info = store.info("model.layers.0.self_attn.qkv_proj.weight", (128, 64))
        k_rows = store.read_rows(info, 64, 96)  # rows of k_proj inside the packed view
        across = store.read_columns(info, 3, 7, rows=(60, 100))  # spans q | k | v
        assert store.unused().count("model.layers.0.self_attn.k_proj.weight") == 0
    from safetensors.numpy import load_file

    weights = load_file(str(next(checkpoint.glob("*.safetensors"))))
    packed = np.concatenate([weights[f"model.layers.0.self_attn.{n}_proj.weight"] for n in "qkv"])
    np.testing.assert_array_equal(k_rows, packed[64:96])
    np.testing.assert_array_equal(across, packed[60:100, 3:7])


@pytest.mark.parametrize(("change", "says"), [
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0}}, "llama3"),
    ({"attention_bias": True}, "attention_bias"),
    ({"model_type": "mistral", "sliding_window": 4096}, "sliding_window"),
])
def test_llama_refusals(llama_checkpoints: dict[str, Path], tmp_path: Path, change: dict[str, object],
                        says: str) -> None:
    config = json.loads((llama_checkpoints["gqa"] / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(CheckpointError, match=says):
        load_spec(tmp_path / "config.json")

"""The whole job end to end on a tiny model: checkpoint -> `phi3-edge export` -> `phi3-edge run`.

Until a trained demo checkpoint lands, the model is a random Phi-3 (2 layers, hidden 64), so the completion
is gibberish; what the demo shows is that every step works and how fast the loop runs. The checkpoint is
written with numpy alone (tools/safetensors_writer.py): the main job must not need torch.

    python tools/demo.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tools"), str(ROOT / "tests")]  # our writer, and the tests' tiny tokenizer

from fixtures.tokenizer import EOS, TINY_VOCAB, write_tiny_tokenizer  # noqa: E402  (tokenizers only, no torch)
from safetensors_writer import save_file  # noqa: E402

CHECKPOINT = Path("build/demo-checkpoint")  # relative to ROOT: the commands below print as a user would type them
ARTIFACT = Path("build/demo-fp32")
PROMPT = "def fibonacci(n):"
SEED = 0
WEIGHT_GAIN = 1.6  # std gain / sqrt(fan_in), as tests/fixtures/checkpoints.py: enough to make greedy decoding vary
NORM_STD = 0.1

CONFIG = {
    "architectures": ["Phi3ForCausalLM"],
    "model_type": "phi3",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": TINY_VOCAB,
    "max_position_embeddings": 512,
    "original_max_position_embeddings": 512,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "sliding_window": None,
    "bos_token_id": 1,
    "torch_dtype": "float32",
}


def weight_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor of Phi3ForCausalLM, named as transformers names them."""
    hidden, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = hidden // heads
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(config["num_hidden_layers"]):
        layer = f"model.layers.{i}"
        shapes[f"{layer}.input_layernorm.weight"] = (hidden,)
        shapes[f"{layer}.self_attn.qkv_proj.weight"] = ((heads + 2 * kv_heads) * head_dim, hidden)  # Q, K, V rows
        shapes[f"{layer}.self_attn.o_proj.weight"] = (hidden, heads * head_dim)
        shapes[f"{layer}.post_attention_layernorm.weight"] = (hidden,)
        shapes[f"{layer}.mlp.gate_up_proj.weight"] = (2 * inter, hidden)  # gate rows, then up rows
        shapes[f"{layer}.mlp.down_proj.weight"] = (hidden, inter)
    shapes["model.norm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def random_weights(config: dict, seed: int) -> dict[str, np.ndarray]:
    """Seeded noise: norms 1 + NORM_STD * randn, matrices WEIGHT_GAIN / sqrt(fan_in) * randn, all float32."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in weight_shapes(config).items():
        noise = rng.standard_normal(shape, dtype=np.float32)
        scale = NORM_STD if len(shape) == 1 else WEIGHT_GAIN / np.sqrt(shape[-1])
        weights[name] = (1.0 if len(shape) == 1 else 0.0) + np.float32(scale) * noise
    return weights


def write_checkpoint(folder: Path) -> None:
    """config.json + model.safetensors + the tiny Phi-3-style tokenizer, as a Hugging Face folder."""
    folder.mkdir(parents=True, exist_ok=True)
    write_tiny_tokenizer(folder)
    vocab = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    eos = next(token["id"] for token in vocab["added_tokens"] if token["content"] == EOS)
    config = {**CONFIG, "eos_token_id": eos, "pad_token_id": eos}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file(random_weights(config, SEED), folder / "model.safetensors")


def phi3_edge(*args: str) -> None:
    """Run the CLI as a user would (same interpreter); stop the demo with its exit code if it fails."""
    print(f"\n$ phi3-edge {' '.join(_quoted(arg) for arg in args)}", flush=True)
    code = subprocess.run([sys.executable, "-m", "phi3_edge.cli", *args], cwd=ROOT).returncode
    if code:
        sys.exit(code)


def _quoted(arg: str) -> str:
    return f'"{arg}"' if " " in arg or "(" in arg else arg


def main() -> None:
    write_checkpoint(ROOT / CHECKPOINT)
    print(f"wrote a random tiny Phi-3 checkpoint to {CHECKPOINT}/ (untrained: expect gibberish)")
    phi3_edge("export", "--model", str(CHECKPOINT), "--target", "cpu-fp32", "--output", str(ARTIFACT), "--force")
    # `run` streams the completion to stdout and ends with its stats line (tokens, tok/s) on stderr.
    phi3_edge("run", str(ARTIFACT), PROMPT, "--max-new-tokens", "32")


if __name__ == "__main__":
    main()

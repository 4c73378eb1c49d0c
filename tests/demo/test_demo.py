"""The bundled demo checkpoint (phi3_edge/demo/checkpoint, written by tools/train_demo.py) is complete and loads."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from phi3_edge.demo import CHECKPOINT_DIR

REPO = Path(__file__).resolve().parents[2]
MAX_WEIGHTS_BYTES = 20 * 1024 * 1024
SPECIAL_TOKENS = ("<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|' + message['role'] + '|>' + '\n' + message['content'] + '<|end|>\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
SNIPPET = '''\
def mean(values: list[float]) -> float:
    """Arithmetic mean; raises on an empty list."""
    if not values:
        raise ValueError("mean() of an empty list")
\treturn sum(values) / len(values)  # tab-indented, ünïcode, emoji 🐍


class Point:
    x: int = 0
'''

PLAIN_PYTHON = '''\
import os
import sys


def read_lines(path, encoding="utf-8"):
    """Return the lines of the file at *path*, without line endings."""
    with open(path, encoding=encoding) as f:
        return [line.rstrip("\\n") for line in f]


class Counter:
    def __init__(self, start=0):
        self.value = start

    def increment(self, step=1):
        self.value += step
        return self.value
'''


def _json(name: str) -> dict:
    return json.loads((CHECKPOINT_DIR / name).read_text(encoding="utf-8"))


def test_checkpoint_folder_is_complete():
    assert CHECKPOINT_DIR.is_dir(), "run: python tools/train_demo.py --out phi3_edge/demo/checkpoint"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json", "corpus.json", "training.json"):
        assert (CHECKPOINT_DIR / name).is_file(), name


def test_config_is_phi3():
    config = _json("config.json")
    assert config["model_type"] == "phi3"
    assert config["architectures"] == ["Phi3ForCausalLM"]
    assert config["tie_word_embeddings"] is False
    assert config["num_attention_heads"] % config["num_key_value_heads"] == 0
    assert config["num_key_value_heads"] < config["num_attention_heads"]  # exercises grouped-query attention
    assert config["vocab_size"] % 64 == 0
    assert config["bos_token_id"] is None


def test_single_small_safetensors_file():
    weights = sorted(p.name for p in CHECKPOINT_DIR.glob("*.safetensors*"))
    assert weights == ["model.safetensors"]
    assert (CHECKPOINT_DIR / "model.safetensors").stat().st_size <= MAX_WEIGHTS_BYTES
    pickles = [p.name for p in CHECKPOINT_DIR.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
    assert pickles == []


def test_tokenizer_files():
    config = _json("tokenizer_config.json")
    assert config["chat_template"] == PHI3_CHAT_TEMPLATE
    assert config["eos_token"] == config["pad_token"] == "<|endoftext|>"
    assert config["bos_token"] is None and config["add_bos_token"] is False
    tokenizer = _json("tokenizer.json")
    added = {token["content"]: token for token in tokenizer["added_tokens"]}
    assert set(SPECIAL_TOKENS) <= set(added)
    assert all(added[token]["special"] for token in SPECIAL_TOKENS)
    ids = [added[token]["id"] for token in SPECIAL_TOKENS]
    vocab = len(tokenizer["model"]["vocab"])
    assert ids == list(range(vocab, vocab + len(SPECIAL_TOKENS)))  # appended after the BPE vocabulary, in order
    assert vocab + len(SPECIAL_TOKENS) <= _json("config.json")["vocab_size"]
    generation = _json("generation_config.json")
    assert set(generation["eos_token_id"]) == {added["<|endoftext|>"]["id"], added["<|end|>"]["id"]}


def test_tokenizers_round_trip():
    tokenizers = pytest.importorskip("tokenizers")
    tokenizer = tokenizers.Tokenizer.from_file(str(CHECKPOINT_DIR / "tokenizer.json"))
    ids = tokenizer.encode(SNIPPET, add_special_tokens=False).ids
    assert tokenizer.decode(ids, skip_special_tokens=False) == SNIPPET
    assert len(ids) < len(SNIPPET.encode()) / 2  # trained merges compress Python source well below bytes
    text = "<|user|>\nhi<|end|>\n"
    assert tokenizer.encode(text).ids[0] == tokenizer.token_to_id("<|user|>")
    assert tokenizer.decode(tokenizer.encode(text).ids, skip_special_tokens=False) == text


def test_transformers_tokenizer_and_chat_template():
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(CHECKPOINT_DIR)
    ids = tokenizer(SNIPPET)["input_ids"]
    assert tokenizer.decode(ids) == SNIPPET
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.bos_token is None
    prompt = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        tokenize=False, add_generation_prompt=True,
    )
    assert prompt == "<|system|>\nBe brief.<|end|>\n<|user|>\nhi<|end|>\n<|assistant|>\n"


def test_transformers_loads_the_model():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(CHECKPOINT_DIR, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(CHECKPOINT_DIR)
    assert type(model).__name__ == "Phi3ForCausalLM"
    ids = torch.tensor([tokenizer(PLAIN_PYTHON)["input_ids"]])
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert math.isfinite(loss)
    # Trained, not random: far below the uniform loss ln(vocab) ~ 8.3 on unseen Python (the shipped model: ~2.6).
    assert loss < 0.5 * math.log(model.config.vocab_size)


def test_corpus_and_training_records():
    corpus = _json("corpus.json")
    assert corpus["train"] == sorted(corpus["train"]) and corpus["heldout"] == sorted(corpus["heldout"])
    assert not set(corpus["train"]) & set(corpus["heldout"])
    spec = importlib.util.spec_from_file_location("demo_corpus", REPO / "tools" / "demo_corpus.py")
    if spec is not None and (REPO / "tools" / "demo_corpus.py").is_file():  # a source checkout, not a wheel
        demo_corpus = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(demo_corpus)
        assert corpus["train"] == list(demo_corpus.TRAIN_MODULES)
        assert corpus["heldout"] == list(demo_corpus.HELDOUT_MODULES)
    training = _json("training.json")
    for key in ("steps", "seconds", "final_train_loss", "heldout_perplexity", "torch", "transformers", "seed"):
        assert key in training, key
    assert 1 < training["heldout_perplexity"] < 100


def test_resolves_as_demo():
    from phi3_edge.exporter.checkpoint import DEMO_DIR, resolve_checkpoint

    assert DEMO_DIR == CHECKPOINT_DIR
    checkpoint = resolve_checkpoint("demo")
    assert checkpoint.root == CHECKPOINT_DIR and checkpoint.source == "demo"
    assert [p.name for p in checkpoint.weight_files] == ["model.safetensors"]

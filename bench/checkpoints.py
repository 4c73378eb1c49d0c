"""Random Phi-3 checkpoints of real shapes, written with bounded memory (numpy only, no torch).

The safetensors file is written by hand: an 8-byte little-endian header length, the JSON header, then each
tensor's raw little-endian bf16 bits (the upper 16 bits of float32 values), generated a few rows at a time
and appended. Peak memory is one chunk (CHUNK_ELEMENTS float32), never a whole tensor.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CHUNK_ELEMENTS = 1 << 24  # 64 MiB of float32 per generated chunk
WEIGHT_STD = 0.02
FORMAT_VERSION = 1  # bump when the written files change, so cached checkpoints are regenerated
BOS, EOS, UNK = 1, 2, 0


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    max_positions: int
    sliding_window: int | None

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


SHAPES: dict[str, Shape] = {
    "medium": Shape(5120, 17920, 40, 10, 32064, 4096, 2047),  # Phi-3-medium-4k-instruct
    "mini": Shape(3072, 8192, 32, 32, 32064, 4096, 2047),  # Phi-3-mini-4k-instruct (MHA: 32 KV heads, head_dim 96)
    "tiny": Shape(256, 512, 8, 2, 1024, 4096, 2047),  # for smoke-testing the bench itself
}


def tensor_shapes(shape: Shape, layers: int) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes exactly as transformers' Phi3ForCausalLM saves them (untied lm_head)."""
    h, d = shape.hidden, shape.head_dim
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (shape.vocab, h)}
    for i in range(layers):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = (h,)
        out[p + "self_attn.qkv_proj.weight"] = ((shape.heads + 2 * shape.kv_heads) * d, h)
        out[p + "self_attn.o_proj.weight"] = (h, shape.heads * d)
        out[p + "post_attention_layernorm.weight"] = (h,)
        out[p + "mlp.gate_up_proj.weight"] = (2 * shape.intermediate, h)
        out[p + "mlp.down_proj.weight"] = (h, shape.intermediate)
    out["model.norm.weight"] = (h,)
    out["lm_head.weight"] = (shape.vocab, h)
    return out


def _header(shapes: dict[str, tuple[int, ...]]) -> bytes:
    """The safetensors JSON header, padded with spaces to a multiple of 8 bytes."""
    entries: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dims in shapes.items():
        size = 2 * int(np.prod(dims))
        entries[name] = {"dtype": "BF16", "shape": list(dims), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(entries, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)


def _bf16_chunks(dims: tuple[int, ...], rng: np.random.Generator, is_norm: bool) -> Iterator[bytes]:
    """Row chunks of one tensor as little-endian bf16 bytes (float32 bit pattern >> 16)."""
    cols = dims[-1]
    rows = int(np.prod(dims[:-1])) if len(dims) > 1 else 1
    step = max(1, CHUNK_ELEMENTS // cols)
    for start in range(0, rows, step):
        values = rng.standard_normal((min(step, rows - start), cols), dtype=np.float32)
        values *= WEIGHT_STD
        if is_norm:
            values += 1.0
        yield (values.view(np.uint32) >> 16).astype("<u2").tobytes()


def write_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    header = _header(shapes)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        for name, dims in shapes.items():
            for chunk in _bf16_chunks(dims, rng, is_norm=name.endswith("norm.weight")):
                f.write(chunk)


def config_json(shape: Shape, layers: int) -> dict[str, object]:
    return {
        "architectures": ["Phi3ForCausalLM"],
        "model_type": "phi3",
        "torch_dtype": "bfloat16",
        "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "vocab_size": shape.vocab,
        "max_position_embeddings": shape.max_positions,
        "original_max_position_embeddings": shape.max_positions,
        "sliding_window": shape.sliding_window,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "embd_pdrop": 0.0,
        "resid_pdrop": 0.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
        "use_cache": True,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "pad_token_id": EOS,
    }


def write_tokenizer(folder: Path) -> None:
    """A tiny word-level tokenizer that AutoTokenizer (transformers 5) and `tokenizers` both load."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = "the quick brown fox jumps over lazy dog hello world".split()
    vocab = {"<unk>": UNK, "<s>": BOS, "</s>": EOS, **{w: i + 3 for i, w in enumerate(words)}}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
              "unk_token": "<unk>", "pad_token": "</s>", "model_max_length": 4096}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def ensure_checkpoint(work: Path, layers: int, shape_name: str = "medium", seed: int = 0) -> Path:
    """The cached checkpoint folder under `work`, written first if missing or incomplete."""
    shape = SHAPES[shape_name]
    folder = work / f"checkpoint-{shape_name}-L{layers}-s{seed}-v{FORMAT_VERSION}"
    if (folder / ".complete").is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    write_safetensors(folder / "model.safetensors", tensor_shapes(shape, layers), seed)
    (folder / "config.json").write_text(json.dumps(config_json(shape, layers), indent=2) + "\n", encoding="utf-8")
    generation = {"bos_token_id": BOS, "eos_token_id": EOS, "pad_token_id": EOS}
    (folder / "generation_config.json").write_text(json.dumps(generation) + "\n", encoding="utf-8")
    write_tokenizer(folder)
    (folder / ".complete").touch()
    return folder


# --- Phi-3-mini shapes with a real (byte-level BPE) tokenizer, for bench/quant_fidelity.py -------------------

FIDELITY_SHAPE = Shape(3072, 8192, 32, 32, 32064, 4096, 2047)  # Phi-3-mini-4k-instruct, head_dim 96
FIDELITY_VERSION = 1  # bump when write_fidelity_checkpoint's files change


def write_bpe_tokenizer(folder: Path, vocab_size: int = 2048) -> None:
    """A byte-level BPE tokenizer trained on the built-in evaluation prompts.

    The 13-word tokenizer of write_tokenizer() would turn the prompts into <unk> runs; fidelity numbers need
    varied token sequences. Loads with `tokenizers` and with AutoTokenizer (the genai builder saves it through
    transformers). Its ids only reach a few thousand of the model's 32064 rows; with random weights the rows
    a token selects do not matter, only that consecutive positions differ.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from phi3_edge.evaluate.texts import PROMPTS

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([line for text in PROMPTS for line in text.splitlines(keepends=True)], trainer)
    tokenizer.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>",
              "pad_token": "<|endoftext|>", "bos_token": None, "unk_token": None, "model_max_length": 4096}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def write_fidelity_checkpoint(work: Path, layers: int, seed: int = 0) -> Path:
    """Cached random bf16 checkpoint of Phi-3-mini shapes (untied, MHA 32/32) with write_bpe_tokenizer()."""
    folder = work / f"fidelity-checkpoint-mini-L{layers}-s{seed}-v{FIDELITY_VERSION}"
    if (folder / ".complete").is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    write_safetensors(folder / "model.safetensors", tensor_shapes(FIDELITY_SHAPE, layers), seed)
    config = config_json(FIDELITY_SHAPE, layers)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    generation = {"bos_token_id": BOS, "eos_token_id": EOS, "pad_token_id": EOS}
    (folder / "generation_config.json").write_text(json.dumps(generation) + "\n", encoding="utf-8")
    write_bpe_tokenizer(folder)
    (folder / ".complete").touch()
    return folder

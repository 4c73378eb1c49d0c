"""GGUF in: tiny files written with GGUFWriter (llama and phi3 layouts, float and block-quantized tensors),
exported to cpu-fp32 and checked against transformers' own GGUF loader on the same file (1e-4 logits over
the prompt and 16 KV-cache decode steps, identical greedy tokens); Ollama names; bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fixtures.llama_gguf import llama_model, load_gguf_model, model_reference, write_gguf
from fixtures.reference import ort_incremental
from fixtures.tokenizer import write_tiny_tokenizer
from phi3_edge.api import export
from phi3_edge.errors import CheckpointError, Phi3EdgeError
from phi3_edge.exporter.config import load_spec

ATOL = 1e-4
STEPS = 16


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gguf")
    write_tiny_tokenizer(folder)  # GGUF tokenizer metadata comes from this tiny BPE
    return folder


def _gguf(folder: Path, arch: str, qtype: str, variant: str = "gqa") -> Path:
    path = folder / f"{variant}-{arch}-{qtype}.gguf"
    if not path.exists():
        write_gguf(path, llama_model(variant), arch, qtype, tokenizer_folder=folder)
    return path


CASES = [("llama", "F32", "gqa"), ("llama", "Q8_0", "mha_tied"), ("llama", "Q4_0", "gqa"),
         ("phi3", "F16", "gqa"), ("phi3", "Q4_0", "mha_tied")]


@pytest.mark.parametrize(("arch", "qtype", "variant"), CASES, ids=["-".join(c) for c in CASES])
def test_gguf_parity_with_transformers(gguf_dir: Path, tmp_path: Path, arch: str, qtype: str, variant: str) -> None:
    path = _gguf(gguf_dir, arch, qtype, variant)
    ids = np.random.default_rng(3).integers(0, 352, size=12).tolist()
    export(str(path), target="cpu-fp32", output=tmp_path / "art", progress=False)
    spec = load_spec(path)
    ours = ort_incremental(tmp_path / "art" / "model.onnx", ids, STEPS, spec.num_layers, spec.num_kv_heads,
                           spec.head_dim)
    ref = model_reference(load_gguf_model(path), ids, STEPS)
    np.testing.assert_allclose(ours.prompt_logits, ref.prompt_logits, atol=ATOL, rtol=0)
    np.testing.assert_allclose(ours.step_logits, ref.step_logits, atol=ATOL, rtol=0)
    assert ours.tokens == ref.tokens
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["source"]["source"] == str(path)


def test_gguf_spec_matches_the_model(gguf_dir: Path) -> None:
    spec = load_spec(_gguf(gguf_dir, "llama", "F32", "theta"))
    assert (spec.rope_theta, spec.num_kv_heads, spec.tie_word_embeddings, spec.raw_model_type) == (500000.0, 2,
                                                                                                   True, "llama")


def test_gguf_tokenizer_ids_match_transformers(gguf_dir: Path, tmp_path: Path) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    path = _gguf(gguf_dir, "llama", "F32")
    export(str(path), target="cpu-fp32", output=tmp_path / "art", progress=False)
    ours = Tokenizer.from_file(str(tmp_path / "art" / "tokenizer.json"))
    theirs = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    for text in ["def f(x):\n    return x + 1", "  two  spaces", "<|user|>\nhi<|end|>", "import os, sys"]:
        assert ours.encode(text).ids == theirs(text)["input_ids"], text
    config = json.loads((tmp_path / "art" / "tokenizer_config.json").read_text())
    assert "<|assistant|>" in config["chat_template"]


def _fake_ollama(root: Path, blob_source: Path | None, name: str = "tiny", tag: str = "latest") -> None:
    digest = "sha256:" + "ab" * 32
    manifest = root / "manifests" / "registry.ollama.ai" / "library" / name / tag
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"layers": [
        {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "cd" * 32},
        {"mediaType": "application/vnd.ollama.image.model", "digest": digest}]}))
    (root / "blobs").mkdir()
    if blob_source is not None:
        shutil.copyfile(blob_source, root / "blobs" / digest.replace(":", "-"))


def test_ollama_name_resolves_to_the_blob(gguf_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_ollama(tmp_path / "ollama", _gguf(gguf_dir, "llama", "Q8_0", "mha_tied"))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "ollama"))
    result = export("ollama:tiny", target="cpu-fp32", output=tmp_path / "art", progress=False)
    assert (result.output / "model.onnx").is_file() and (result.output / "tokenizer.json").is_file()
    assert json.loads((result.output / "manifest.json").read_text())["source"]["source"] == "ollama:tiny"


@pytest.mark.parametrize("problem", ["not-pulled", "blob-missing"])
def test_ollama_problems_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, problem: str) -> None:
    _fake_ollama(tmp_path / "ollama", None)
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "ollama"))
    name = "ollama:phi3:mini" if problem == "not-pulled" else "ollama:tiny"
    with pytest.raises(CheckpointError) as caught:
        export(name, target="cpu-fp32", output=tmp_path / "art", progress=False)
    message = str(caught.value)
    assert "\n" not in message and name in message and "ollama pull" in message
    assert not (tmp_path / "art").exists()


def _bad_file(gguf_dir: Path, tmp_path: Path, problem: str) -> Path:
    import gguf

    path = tmp_path / f"{problem}.gguf"
    model = llama_model("gqa")
    if problem == "truncated":
        return write_gguf(path, model, "llama", "F32", tokenizer_folder=gguf_dir, truncate=True)
    if problem == "not-gguf":
        path.write_bytes(b"PK\x03\x04 not a gguf at all")
        return path
    if problem == "architecture":
        writer = gguf.GGUFWriter(str(path), "mamba")
        writer.add_block_count(1)
        writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    else:  # a tensor type we do not read
        writer = gguf.GGUFWriter(str(path), "llama")
        writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float64))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(("problem", "says"), [("truncated", "truncated"), ("not-gguf", "not a GGUF"),
                                               ("architecture", "mamba"), ("tensor-type", "F64")])
def test_bad_gguf_is_one_line_and_writes_nothing(gguf_dir: Path, tmp_path: Path, problem: str, says: str) -> None:
    path = _bad_file(gguf_dir, tmp_path, problem)
    with pytest.raises(Phi3EdgeError) as caught:
        export(str(path), target="cpu-fp32", output=tmp_path / "art", progress=False)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and says in message
    assert not (tmp_path / "art").exists()


def _sentencepiece_gguf(path: Path, arch: str) -> Path:
    """A SentencePiece-style vocabulary (tokenizer.ggml.model llama): scores, byte tokens, no merges."""
    import gguf

    words = ["\u2581hello", "\u2581world", "\u2581the", "\u2581tokens", "ing", "\u2581\u2581"]
    pieces = sorted({w[i:j] for w in words for i in range(len(w)) for j in range(i + 2, len(w) + 1)},
                    key=lambda piece: (len(piece), piece))
    chars = sorted({c for w in words for c in w})
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + chars + pieces
    types = [2, 3, 3] + [6] * 256 + [1] * (len(chars) + len(pieces))
    scores = [0.0] * (3 + 256) + [-float(i) for i in range(len(chars) + len(pieces))]
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_tensor("token_embd.weight", np.zeros((len(tokens), 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("arch", ["llama", "phi3"])
def test_sentencepiece_tokenizer_ids_match_transformers(tmp_path: Path, arch: str) -> None:
    """Merges rebuilt from scores, byte fallback, BOS added, the prefix space as each architecture puts it."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from phi3_edge.exporter.gguf.reader import GgufFile
    from phi3_edge.exporter.gguf.tokenizer import write_tokenizer_files

    path = _sentencepiece_gguf(tmp_path / f"spm-{arch}.gguf", arch)
    main, _ = write_tokenizer_files(GgufFile(path), tmp_path / "out")
    ours = Tokenizer.from_file(str(main))
    theirs = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    for text in ["hello world", "the tokens", "hello  the world", "héllo wörld", "thing"]:
        assert ours.encode(text).ids == theirs(text)["input_ids"], text

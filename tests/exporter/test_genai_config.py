"""genai_config.json contents, onnxruntime-genai's parser accepting them, and tokenizer file handling."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from phi3_edge import io_spec
from phi3_edge.errors import CheckpointError
from phi3_edge.exporter import genai_config as gc
from phi3_edge.exporter.config import spec_from_dict
from phi3_edge.targets.table import TARGETS

CPU = TARGETS["cpu-fp32"]
TINY = {
    "model_type": "phi3",
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    "bos_token_id": 1,
    "eos_token_id": 60,
    "pad_token_id": 60,
}
TOKENIZER = {
    "added_tokens": [
        {"id": 0, "content": "<unk>"},
        {"id": 1, "content": "<s>"},
        {"id": 60, "content": "<|endoftext|>"},
        {"id": 61, "content": "<|assistant|>"},
        {"id": 62, "content": "<|end|>"},
    ],
    "model": {"type": "BPE", "vocab": {"<unk>": 0, "<s>": 1, "a": 2}},
}


def tiny_spec(**changes):
    return spec_from_dict({**TINY, **changes})


def write_tokenizer(folder: Path, generation_eos=None, config=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps(TOKENIZER))
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    if generation_eos is not None:
        (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": generation_eos}))
    return folder


def test_structure_matches_the_io_contract():
    config = gc.genai_config(tiny_spec(), CPU, eos_token_ids=[62])
    model, decoder = config["model"], config["model"]["decoder"]
    assert model["type"] == "phi3"
    assert model["context_length"] == 128 and model["vocab_size"] == 64
    assert model["eos_token_id"] == [60, 62] and model["bos_token_id"] == 1 and model["pad_token_id"] == 60
    assert decoder["filename"] == "model.onnx"
    assert (decoder["head_size"], decoder["hidden_size"]) == (8, 32)
    assert (decoder["num_attention_heads"], decoder["num_key_value_heads"], decoder["num_hidden_layers"]) == (4, 2, 2)
    assert decoder["inputs"] == {
        "input_ids": "input_ids",
        "attention_mask": "attention_mask",
        "past_key_names": "past_key_values.%d.key",
        "past_value_names": "past_key_values.%d.value",
    }
    assert "position_ids" not in decoder["inputs"]
    assert decoder["outputs"]["present_key_names"] % 3 == io_spec.present_key(3)
    assert decoder["inputs"]["past_value_names"] % 3 == io_spec.past_value(3)
    assert decoder["session_options"]["provider_options"] == []
    search = config["search"]
    assert search["past_present_share_buffer"] is True and search["max_length"] == 128
    assert (search["do_sample"], search["top_k"], search["top_p"], search["temperature"]) == (False, 50, 1.0, 1.0)
    assert search["repetition_penalty"] == 1.0


def test_single_eos_is_a_number_and_duplicates_collapse():
    assert gc.genai_config(tiny_spec(), CPU, eos_token_ids=[60])["model"]["eos_token_id"] == 60


def test_missing_ids_fall_back_instead_of_null():
    model = gc.genai_config(tiny_spec(bos_token_id=None, pad_token_id=None), CPU, eos_token_ids=[62])["model"]
    assert "bos_token_id" not in model  # onnxruntime-genai rejects null
    assert model["pad_token_id"] == 60  # first EOS stands in
    model = gc.genai_config(tiny_spec(), CPU, bos_token_id=5, pad_token_id=7)["model"]
    assert (model["bos_token_id"], model["pad_token_id"]) == (5, 7)


def test_no_eos_anywhere_is_an_error():
    with pytest.raises(CheckpointError, match="no eos_token_id"):
        gc.genai_config(tiny_spec(eos_token_id=None), CPU)


def test_sliding_window_adds_no_runtime_block():
    config = gc.genai_config(tiny_spec(sliding_window=32), CPU)
    assert "sliding_window" not in config["model"]["decoder"]


def test_non_cpu_provider_is_listed_with_its_options():
    # genai_lists_provider: the table's field for "genai_config names this EP" (False only for CPU targets)
    dml = dataclasses.replace(CPU, name="dml-fp16", execution_provider="dml", genai_lists_provider=True)
    config = gc.genai_config(tiny_spec(), dml, provider_options={"enable_graph_capture": "1"})
    assert config["model"]["decoder"]["session_options"]["provider_options"] == [{"dml": {"enable_graph_capture": "1"}}]
    cuda = dataclasses.replace(CPU, execution_provider="cuda", genai_lists_provider=True)
    assert gc.genai_config(tiny_spec(), cuda)["model"]["decoder"]["session_options"]["provider_options"] == [
        {"cuda": {}}
    ]


def test_tokenizer_ids(tmp_path):
    folder = write_tokenizer(tmp_path, generation_eos=[60, 61, 62], config={"bos_token": "<s>", "pad_token": {
        "content": "<|endoftext|>", "special": True}})
    assert gc.eos_token_ids_from_tokenizer(folder) == [60, 62]
    assert gc.collect_eos_token_ids(folder) == [60, 61, 62]
    assert gc.special_token_ids(folder) == {"bos": 1, "pad": 60}
    assert gc.eos_token_ids_from_tokenizer(tmp_path / "empty") == []
    assert gc.special_token_ids(tmp_path / "empty") == {}


def test_write_genai_config_reads_the_tokenizer(tmp_path):
    write_tokenizer(tmp_path, generation_eos=61, config={"bos_token": "<s>", "pad_token": "<unk>"})
    path = gc.write_genai_config(tmp_path, tiny_spec(bos_token_id=None, pad_token_id=None), CPU)
    model = json.loads(path.read_text())["model"]
    assert model["eos_token_id"] == [60, 61, 62]
    assert (model["bos_token_id"], model["pad_token_id"]) == (1, 0)


@pytest.mark.parametrize("sliding_window", [None, 16])
def test_onnxruntime_genai_parses_the_written_config(tmp_path, sliding_window):
    # og.Config parses genai_config.json only (no model.onnx needed) and rejects unknown keys and nulls.
    og = pytest.importorskip("onnxruntime_genai")
    write_tokenizer(tmp_path, generation_eos=[60, 62])
    gc.write_genai_config(tmp_path, tiny_spec(sliding_window=sliding_window, pad_token_id=None), CPU)
    og.Config(str(tmp_path))
    dml = dataclasses.replace(CPU, execution_provider="dml")
    gc.write_genai_config(tmp_path, tiny_spec(), dml, provider_options={"enable_graph_capture": "1"})
    og.Config(str(tmp_path))


def test_copy_tokenizer_files_folds_the_jinja_template(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    write_tokenizer(src, generation_eos=[60], config={"chat_template": "old", "bos_token": "<s>"})
    (src / "chat_template.jinja").write_text("{{ messages }}<|end|>")
    dest.mkdir()
    names = ["tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja"]
    written = gc.copy_tokenizer_files(tuple(src / n for n in names), dest)
    assert sorted(p.name for p in written) == sorted(names[:3])
    assert sorted(p.name for p in dest.iterdir()) == sorted(names[:3])
    config = json.loads((dest / "tokenizer_config.json").read_text())
    assert config == {"chat_template": "{{ messages }}<|end|>", "bos_token": "<s>"}
    assert json.loads((src / "tokenizer_config.json").read_text())["chat_template"] == "old"  # source untouched


def test_copy_tokenizer_files_json_template_creates_config(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    write_tokenizer(src)
    (src / "chat_template.json").write_text(json.dumps({"chat_template": "T"}))
    dest.mkdir()
    written = gc.copy_tokenizer_files((src / "chat_template.json", src / "tokenizer.json"), dest)
    assert {p.name for p in written} == {"tokenizer.json", "tokenizer_config.json"}
    assert json.loads((dest / "tokenizer_config.json").read_text()) == {"chat_template": "T"}


def test_copy_tokenizer_files_keeps_inline_template_and_dereferences_symlinks(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    write_tokenizer(src, config={"chat_template": "inline"})
    blob = tmp_path / "blob"
    blob.write_text(json.dumps(TOKENIZER))
    (src / "tokenizer.json").unlink()
    (src / "tokenizer.json").symlink_to(blob)  # the HF cache stores snapshot files as symlinks to blobs
    dest.mkdir()
    gc.copy_tokenizer_files((src / "tokenizer.json", src / "tokenizer_config.json"), dest)
    assert not (dest / "tokenizer.json").is_symlink()
    assert json.loads((dest / "tokenizer_config.json").read_text())["chat_template"] == "inline"


def test_bad_template_json_is_a_checkpoint_error(tmp_path):
    (tmp_path / "chat_template.json").write_text(json.dumps({"other": 1}))
    (tmp_path / "dest").mkdir()
    with pytest.raises(CheckpointError, match="chat_template"):
        gc.copy_tokenizer_files((tmp_path / "chat_template.json",), tmp_path / "dest")

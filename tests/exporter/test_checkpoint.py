"""Checkpoint discovery and validation on tiny fake folders (the weights are never parsed here)."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub
import pytest

from phi3_edge.errors import CheckpointError
from phi3_edge.exporter import checkpoint as ck

# The smallest tokenizer.json the tokenizers library accepts: resolve_checkpoint parses it up front.
MINIMAL_TOKENIZER = json.dumps({"version": "1.0", "model": {"type": "WordLevel", "vocab": {"<unk>": 0},
                                                             "unk_token": "<unk>"}})


def make_folder(root: Path, *, weights=("model.safetensors",), tokenizer=True, extras=(), index=None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"model_type": "phi3"}))
    for name in weights:
        (root / name).write_bytes(b"\0")
    if tokenizer:
        (root / "tokenizer.json").write_text(MINIMAL_TOKENIZER)
    for name in extras:
        (root / name).write_text("{}")
    if index is not None:
        (root / ck.INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": index}))
    return root


def test_local_folder_is_validated_and_described(tmp_path):
    root = make_folder(tmp_path / "m", extras=("tokenizer_config.json", "generation_config.json"))
    checkpoint = ck.resolve_checkpoint(str(root))
    assert checkpoint.root == root
    assert checkpoint.source == str(root)
    assert checkpoint.config_path == root / "config.json"
    assert checkpoint.weight_files == (root / "model.safetensors",)
    assert checkpoint.index_path is None
    assert [p.name for p in checkpoint.tokenizer_files] == [
        "tokenizer.json", "tokenizer_config.json", "generation_config.json"
    ]
    assert checkpoint.revision is None
    assert checkpoint.all_files()[0] == root / "config.json"


def test_unindexed_shards_are_sorted(tmp_path):
    root = make_folder(tmp_path / "m", weights=("b.safetensors", "a.safetensors"))
    assert [p.name for p in ck.resolve_checkpoint(str(root)).weight_files] == ["a.safetensors", "b.safetensors"]


def test_index_lists_shards_in_shard_order_and_ignores_strays(tmp_path):
    shards = ("model-00002-of-00002.safetensors", "model-00001-of-00002.safetensors", "stray.safetensors")
    index = {"lm_head.weight": shards[0], "model.embed_tokens.weight": shards[1], "x": shards[0]}
    root = make_folder(tmp_path / "m", weights=shards, index=index)
    checkpoint = ck.resolve_checkpoint(str(root))
    assert [p.name for p in checkpoint.weight_files] == [shards[1], shards[0]]
    assert checkpoint.index_path == root / ck.INDEX_NAME
    assert checkpoint.all_files()[1] == checkpoint.index_path


@pytest.mark.parametrize(
    "index, message",
    [
        ({"w": "missing.safetensors"}, "missing from the folder"),
        ({"w": "../outside.safetensors"}, "unsafe"),
        ({"w": "/etc/passwd"}, "unsafe"),
        ({"w": "model.bin"}, "non-safetensors"),
        ({}, "weight_map"),
    ],
)
def test_bad_index_is_refused(tmp_path, index, message):
    root = make_folder(tmp_path / "m", index=index)
    with pytest.raises(CheckpointError, match=message) as info:
        ck.resolve_checkpoint(str(root))
    assert ck.INDEX_NAME in str(info.value)


def test_index_that_is_not_json(tmp_path):
    root = make_folder(tmp_path / "m")
    (root / ck.INDEX_NAME).write_text("{nope")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        ck.resolve_checkpoint(str(root))


def test_missing_config_is_an_error(tmp_path):
    root = make_folder(tmp_path / "m")
    (root / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json not found") as info:
        ck.resolve_checkpoint(str(root))
    assert str(root) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["pytorch_model.bin", "pytorch_model-00001-of-00002.bin", "m.pt", "m.pth", "m.ckpt"])
def test_pickle_only_checkpoints_are_refused(tmp_path, name):
    root = make_folder(tmp_path / "m", weights=(name,))
    with pytest.raises(CheckpointError, match="pickle checkpoints are refused .* convert to safetensors first"):
        ck.resolve_checkpoint(str(root))


def test_pickles_beside_safetensors_are_ignored(tmp_path):
    root = make_folder(tmp_path / "m", weights=("model.safetensors", "pytorch_model.bin"))
    assert [p.name for p in ck.resolve_checkpoint(str(root)).weight_files] == ["model.safetensors"]


def test_no_weights_at_all(tmp_path):
    root = make_folder(tmp_path / "m", weights=())
    with pytest.raises(CheckpointError, match="no weights found"):
        ck.resolve_checkpoint(str(root))


def test_missing_tokenizer_suggests_no_tokenizer(tmp_path):
    root = make_folder(tmp_path / "m", tokenizer=False, extras=("tokenizer_config.json",))
    with pytest.raises(CheckpointError, match="--no-tokenizer") as info:
        ck.resolve_checkpoint(str(root))
    assert str(root) in str(info.value)
    checkpoint = ck.resolve_checkpoint(str(root), require_tokenizer=False)
    assert [p.name for p in checkpoint.tokenizer_files] == ["tokenizer_config.json"]


@pytest.mark.parametrize("arg", ["./nope", "/definitely/not/here", "a/b/c", "~/not-here-either"])
def test_missing_paths_say_does_not_exist(tmp_path, monkeypatch, arg):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", _never_called)
    with pytest.raises(CheckpointError, match="does not exist"):
        ck.resolve_checkpoint(arg)


def test_unknown_word_lists_short_names(monkeypatch):
    monkeypatch.setattr(huggingface_hub, "snapshot_download", _never_called)
    with pytest.raises(CheckpointError, match="phi3:mini"):
        ck.resolve_checkpoint("phi9000")


def test_short_name_resolves_through_the_cache_first(tmp_path, monkeypatch):
    snapshot = make_folder(tmp_path / "models--microsoft--Phi-3-mini-4k-instruct" / "snapshots" / "abc123")
    calls = []

    def fake(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    checkpoint = ck.resolve_checkpoint("phi3:mini")
    assert checkpoint.source == "microsoft/Phi-3-mini-4k-instruct"
    assert checkpoint.revision == "abc123"
    expected = {"allow_patterns": ck.HUB_PATTERNS, "local_files_only": True}
    assert calls == [("microsoft/Phi-3-mini-4k-instruct", expected)]
    assert "config.json" in ck.HUB_PATTERNS and "*.safetensors" in ck.HUB_PATTERNS


def test_hub_id_downloads_after_a_cache_miss(tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "dl")
    calls = []

    def fake(repo_id, **kwargs):
        calls.append(kwargs.get("local_files_only", False))
        if kwargs.get("local_files_only"):
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    checkpoint = ck.resolve_checkpoint("org/tiny-phi3")
    assert calls == [True, False]
    assert checkpoint.source == "org/tiny-phi3" and checkpoint.revision is None


def test_hub_failure_is_one_line_naming_the_id(monkeypatch):
    def fake(repo_id, **kwargs):
        raise OSError("no network\nsecond line")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    with pytest.raises(CheckpointError) as info:
        ck.resolve_checkpoint("org/not-cached")
    message = str(info.value)
    assert message.startswith("org/not-cached: not in the local Hugging Face cache and could not be downloaded")
    assert "no network" in message and "\n" not in message


def test_existing_folder_wins_over_hub_lookup(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_folder(tmp_path / "org" / "model")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", _never_called)
    assert ck.resolve_checkpoint("org/model").root == Path("org/model")


def test_demo_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(ck, "DEMO_DIR", tmp_path / "absent")
    with pytest.raises(CheckpointError, match="demo checkpoint is not bundled"):
        ck.resolve_checkpoint("demo")
    monkeypatch.setattr(ck, "DEMO_DIR", make_folder(tmp_path / "demo"))
    checkpoint = ck.resolve_checkpoint("demo")
    assert checkpoint.source == "demo" and checkpoint.root == tmp_path / "demo"


def test_file_instead_of_folder(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="is not a folder"):
        ck.resolve_checkpoint(str(path))


def test_short_names_table_lists_every_name():
    table = ck.short_names_table()
    for name, hub_id in ck.SHORT_NAMES.items():
        assert any(line.split() == [name, hub_id] for line in table.splitlines())
    assert ck.SHORT_NAMES["phi4:mini"] == "microsoft/Phi-4-mini-instruct"


def _never_called(*args, **kwargs):
    raise AssertionError("snapshot_download must not be called")

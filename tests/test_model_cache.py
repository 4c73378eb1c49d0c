"""The model cache: first use exports the demo for this machine's target, later uses reuse it; list and rm."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from phi3_edge import api
from phi3_edge.errors import ArtifactError, Phi3EdgeError
from phi3_edge.model_cache import (
    CACHE_ENV,
    ExportRecipe,
    auto_target,
    cache_key,
    cache_root,
    list_entries,
    remove,
    resolve_model,
)
from phi3_edge.targets.table import DEFAULT_TARGET

FAST = ExportRecipe(fidelity=False)  # the accuracy gate has its own tests; here it would only double the time


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(root))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # integrity stamps stay out of ~/.cache
    return root


@pytest.fixture(scope="module")
def demo_int4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("demo") / "cpu-int4"
    api.export("demo", DEFAULT_TARGET, folder, progress=False, fidelity=False)
    return folder


class CopyExport:
    """Stands in for api.export by copying a real demo export (counts calls; one real export per module)."""

    def __init__(self, source: Path) -> None:
        self.source, self.calls = source, []  # type: ignore[var-annotated]

    def __call__(self, model: str, target: str, output: Path, **options: Any) -> None:
        self.calls.append((model, target, options))
        if output.exists():
            shutil.rmtree(output)
        shutil.copytree(self.source, output)


def test_first_use_exports_then_reuses(cache: Path) -> None:
    said: list[str] = []
    first = resolve_model("demo", export=api.export, recipe=FAST, progress=False, notify=said.append,
                          available_providers=["CPUExecutionProvider"])
    assert first.exported and first.target == DEFAULT_TARGET and first.folder.parent == cache
    assert first.folder.name == first.key and first.key.startswith("demo-cpu-int4-")
    assert said[0] == f"demo: first use, exporting for cpu-int4 into {first.folder}"
    assert said[1].startswith("demo: exported in ") and "cached for later runs" in said[1]
    assert api.load(first.folder).generate("def f(", 4).token_ids  # an artifact that runs

    said.clear()
    again = resolve_model("demo", export=_must_not_export, recipe=FAST, notify=said.append,
                          available_providers=["CPUExecutionProvider"])
    assert again.folder == first.folder and not again.exported and said == []
    [entry] = list_entries()
    assert (entry.key, entry.model, entry.target) == (first.key, "demo", "cpu-int4")
    assert entry.size_bytes == sum(p.stat().st_size for p in first.folder.iterdir())
    assert entry.last_used >= entry.created


def _must_not_export(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("the cached artifact should have been reused")


def test_an_artifact_folder_is_used_as_it_is(cache: Path, demo_int4: Path) -> None:
    resolved = resolve_model(str(demo_int4), export=_must_not_export)
    assert resolved.folder == demo_int4 and resolved.key is None and not cache.exists()


def test_a_damaged_entry_is_exported_again(cache: Path, demo_int4: Path) -> None:
    export = CopyExport(demo_int4)
    first = resolve_model("demo", export=export, recipe=FAST, notify=lambda _: None,
                          available_providers=["CPUExecutionProvider"])
    weights = first.folder / "model.onnx.data"
    weights.write_bytes(weights.read_bytes()[:-8])  # truncated
    said: list[str] = []
    again = resolve_model("demo", export=export, recipe=FAST, notify=said.append,
                          available_providers=["CPUExecutionProvider"])
    assert again.exported and len(export.calls) == 2 and export.calls[1][2]["force"] is True
    assert said[0].startswith("cached artifact is damaged (") and "model.onnx.data" in said[0]
    assert said[1].startswith("demo: exporting it again for cpu-int4")


def test_the_target_follows_the_providers_onnxruntime_offers() -> None:
    assert auto_target(["CPUExecutionProvider"]) == DEFAULT_TARGET
    assert auto_target(["AzureExecutionProvider", "CPUExecutionProvider"]) == DEFAULT_TARGET
    assert auto_target(["CUDAExecutionProvider", "CPUExecutionProvider"]) == "cuda-int4"
    assert auto_target(["DmlExecutionProvider", "CPUExecutionProvider"]) == "dml-int4"
    import onnxruntime

    assert auto_target() == auto_target(onnxruntime.get_available_providers())


def test_the_key_changes_with_target_recipe_and_checkpoint_files(tmp_path: Path) -> None:
    checkpoint = tmp_path / "my-model"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}", encoding="utf-8")
    key = cache_key(str(checkpoint), "cpu-int4", ExportRecipe())
    assert key.startswith("my-model-cpu-int4-")
    assert key == cache_key(str(checkpoint), "cpu-int4", ExportRecipe())
    assert key != cache_key(str(checkpoint), "cpu-int8", ExportRecipe())
    assert key != cache_key(str(checkpoint), "cpu-int4", ExportRecipe(quant_algo="hqq"))
    (checkpoint / "config.json").write_text('{"edited": 1}', encoding="utf-8")
    assert key != cache_key(str(checkpoint), "cpu-int4", ExportRecipe())
    assert cache_key("ollama:phi3/mini", "cpu-int4", ExportRecipe()).startswith("ollama-phi3-mini-cpu-int4-")


def test_rm_by_model_or_key_and_unknown_names(cache: Path, demo_int4: Path) -> None:
    export = CopyExport(demo_int4)
    providers = ["CPUExecutionProvider"]
    int4 = resolve_model("demo", export=export, recipe=FAST, notify=print, available_providers=providers)
    fp32 = resolve_model("demo", target="cpu-fp32", export=export, recipe=FAST, notify=print)
    assert {e.key for e in list_entries()} == {int4.key, fp32.key}
    assert [e.key for e in remove("demo", target="cpu-fp32")] == [fp32.key]
    assert not fp32.folder.exists() and [e.key for e in list_entries()] == [int4.key]
    with pytest.raises(Phi3EdgeError, match="no cached artifact matches 'nothing'"):
        remove("nothing")
    assert [e.key for e in remove(int4.key)] == [int4.key] and list_entries() == []
    assert sorted(os.listdir(cache)) == [".locks"]


def test_an_unknown_target_fails_before_anything_is_written(cache: Path) -> None:
    with pytest.raises(Phi3EdgeError, match="unknown target 'tpu-int2'"):
        resolve_model("demo", target="tpu-int2", export=_must_not_export)
    assert not cache.exists()


def test_two_runs_at_once_export_once(cache: Path, demo_int4: Path) -> None:
    export = CopyExport(demo_int4)
    results = []

    def run() -> None:
        results.append(resolve_model("demo", export=export, recipe=FAST, notify=lambda _: None,
                                     available_providers=["CPUExecutionProvider"]))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(export.calls) == 1 and sum(r.exported for r in results) == 1
    assert len({r.folder for r in results}) == 1


def test_cache_root_honours_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_root() == tmp_path / "phi3-edge" / "artifacts"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"


def test_folders_and_paths(cache: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()  # no config.json: not a checkpoint, so the loader gets it (and names what is missing)
    assert resolve_model(str(plain), export=_must_not_export).folder == plain
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}", encoding="utf-8")
    export = CopyExport(plain)
    with pytest.raises(ArtifactError, match="manifest.json not found"):  # the "export" copied an empty folder
        resolve_model(str(checkpoint), export=export, notify=lambda _: None,
                      available_providers=["CPUExecutionProvider"])
    assert export.calls and export.calls[0][:2] == (str(checkpoint), DEFAULT_TARGET)  # a checkpoint is exported
    with pytest.raises(Phi3EdgeError, match="not found"):
        resolve_model(str(tmp_path / "missing"), export=_must_not_export)

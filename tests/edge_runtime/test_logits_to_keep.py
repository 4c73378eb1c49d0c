"""The runtime feeds logits_to_keep where the graph has it (a prefill and a plain step: 1; a lookup verify pass:
every fed token) and runs a folder exported before the input existed exactly as before (every row computed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from phi3_edge import io_spec
from phi3_edge.api import load
from phi3_edge.artifact_contract import MANIFEST_FILE, MODEL_FILE
from phi3_edge.edge_runtime.decoder_config import read_decoder_config
from phi3_edge.edge_runtime.lookup import NgramIndex
from phi3_edge.edge_runtime.session import DecoderSession

ATOL = 1e-4  # the parity tolerance (test_session.py)


def prompt(length: int) -> list[int]:
    return np.random.default_rng(7).integers(0, 352, size=length).tolist()


def exported_before(folder: Path, target: Path) -> Path:
    """A copy of `folder` whose graph is the one exported before logits_to_keep: the final norm reads the last
    layer's values directly, no Neg/Slice, no input, no initializer; manifest.json's io_signature to match
    (its hashes no longer do: load with verify=False)."""
    shutil.copytree(folder, target)
    model = onnx.load(str(target / MODEL_FILE), load_external_data=False)  # weights stay in model.onnx.data
    graph = model.graph
    slices = [n for n in graph.node if io_spec.LOGITS_TO_KEEP in n.input or n.name.startswith("logits_to_keep/")]
    assert len(slices) >= 2, "not a graph with logits_to_keep"
    unsliced = {n.output[0]: n.input[0] for n in slices if n.op_type == "Slice"}  # (B, k, H) -> (B, S, H)
    for node in slices:
        graph.node.remove(node)
    for node in graph.node:
        node.input[:] = [unsliced.get(name, name) for name in node.input]
    orphans = {name for node in slices for name in node.input} - _reads(graph)  # the Slice's end constant
    graph.input.remove(next(v for v in graph.input if v.name == io_spec.LOGITS_TO_KEEP))
    kept = [t for t in graph.initializer if t.name not in orphans]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.save(model, str(target / MODEL_FILE))
    manifest = json.loads((target / MANIFEST_FILE).read_text(encoding="utf-8"))
    manifest["io_signature"] = [s for s in manifest["io_signature"] if s["name"] != io_spec.LOGITS_TO_KEEP]
    (target / MANIFEST_FILE).write_text(json.dumps(manifest), encoding="utf-8")
    return target

def _reads(graph: onnx.GraphProto) -> set[str]:
    """Every value a node reads, If/Loop bodies included (they read outer initializers too)."""
    names: set[str] = set()
    for node in graph.node:
        names.update(node.input)
        for attribute in node.attribute:
            for body in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                names |= _reads(body)
    return names


@pytest.fixture(scope="module")
def folders(tiny_artifact, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    new = tiny_artifact("gqa", "cpu-int4")
    return {"new": new, "old": exported_before(new, tmp_path_factory.mktemp("old") / "gqa-cpu-int4")}


def session(folder: Path, kv_cache: str) -> DecoderSession:
    return DecoderSession(folder, read_decoder_config(folder), kv_cache=kv_cache)


def test_detected_from_the_session(folders: dict[str, Path]) -> None:
    new, old = session(folders["new"], "shared"), session(folders["old"], "shared")
    assert new.layout.keeps_logits and not old.layout.keeps_logits
    ids = prompt(9)
    full, _ = old.forward(ids, keep=1)  # a graph without the input computes every row whatever is asked
    last, _ = new.forward(ids, keep=1)
    assert full.shape == (9, new.config.vocab_size) and last.shape == (1, new.config.vocab_size)
    np.testing.assert_allclose(last[0], full[-1], atol=ATOL)
    np.testing.assert_allclose(new.forward(ids)[0], full, atol=ATOL)  # the default: every position


@pytest.mark.parametrize("kv_cache", ["shared", "concat"])
@pytest.mark.parametrize("which", ["new", "old"])
def test_prefill_steps_and_verify_passes_give_the_full_forwards_rows(folders: dict[str, Path], kv_cache: str,
                                                                      which: str) -> None:
    """prefill (1 row kept), steps, a 3-token verify pass (3 rows), a 1-token verify pass, steps, a second
    prefill after reset: every row equals the full forward's, whatever the graph kept and the pass bound."""
    engine = session(folders[which], kv_cache)
    ids = prompt(16)
    full, _ = engine.forward(ids)  # (S, V)
    forward = engine.start(max_length=len(ids))
    last = forward.run(ids[:6], 6)
    np.testing.assert_allclose(last, full[5], atol=ATOL)
    rows = 1 if which == "new" else 6  # the prefill computed (and the pass bound) one row of logits, or all
    assert last.base is not None and last.base.shape == (1, rows, engine.config.vocab_size)  # (B, rows, V)
    np.testing.assert_allclose(forward.run([ids[6]], 7), full[6], atol=ATOL)
    np.testing.assert_allclose(forward.run_all(ids[7:10], 10), full[7:10], atol=ATOL)  # (3, V)
    np.testing.assert_allclose(forward.run_all(ids[8:9], 9), full[8:9], atol=ATOL)  # rolled back to 8 cached
    for position in range(9, 12):
        np.testing.assert_allclose(forward.run([ids[position]], position + 1), full[position], atol=ATOL)
    forward.reset()
    np.testing.assert_allclose(forward.run(ids[:14], 14), full[13], atol=ATOL)  # a re-prefill


def test_greedy_tokens_unchanged_by_the_input(folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    ids = prompt(12)
    plain = {which: load(folder, verify=False).generate_ids(ids, 24, ignore_eos=True).token_ids
             for which, folder in folders.items()}
    assert len(plain["new"]) == 24 and plain["new"] == plain["old"]
    assert plain["new"] == load(folders["new"], kv_cache="concat").generate_ids(ids, 24, ignore_eos=True).token_ids
    # Prompt lookup: a random tiny model never repeats itself, so drafts are the true continuation with every
    # third draft's last token wrong (test_lookup.py's oracle): verify passes accept some rows and reject others.
    sequence = ids + plain["new"]

    def draft(index: NgramIndex, limit: int) -> list[int]:
        future = sequence[len(index.tokens):len(index.tokens) + limit]
        if future and len(index.tokens) % 3 == 0:
            future[-1] = (future[-1] + 1) % 352
        return future

    monkeypatch.setattr(NgramIndex, "draft", draft)
    for folder in folders.values():
        fast = load(folder, verify=False).generate_ids(ids, 24, ignore_eos=True, lookup=4)
        assert fast.token_ids == plain["new"]
        assert fast.lookup is not None and 0 < fast.lookup.accepted < fast.lookup.drafted


def test_onnxruntime_genai_runs_both_folders(folders: dict[str, Path]) -> None:
    pytest.importorskip("onnxruntime_genai")
    ids = prompt(12)
    ours = load(folders["new"]).generate_ids(ids, 8, ignore_eos=True).token_ids
    for folder in folders.values():
        assert load(folder, backend="genai", verify=False).generate_ids(ids, 8, ignore_eos=True).token_ids == ours

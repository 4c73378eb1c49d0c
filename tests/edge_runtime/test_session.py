"""DecoderSession, the one runtime core: all-position forwards agree with the KV-cache passes, and the
LongRoPE switch comes from manifest.json's rope_switch_length field (not from the exporter's spec record)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fixtures.checkpoints import ORIGINAL_MAX_POSITIONS
from phi3_edge.api import load
from phi3_edge.artifact_contract import MANIFEST_FILE, ROPE_SWITCH_KEY
from phi3_edge.edge_runtime.decoder_config import read_decoder_config
from phi3_edge.edge_runtime.session import DecoderSession
from phi3_edge.errors import ArtifactError

ATOL = 1e-4  # the parity tolerance: a cached decode step vs the same position in one full forward


def prompt(length: int) -> list[int]:
    return np.random.default_rng(3).integers(0, 352, size=length).tolist()


@pytest.mark.parametrize("kv_cache", ["shared", "concat"])
def test_forward_gives_every_position_and_the_passes_agree(tiny_artifact, kv_cache: str) -> None:
    folder = tiny_artifact("gqa")
    session = DecoderSession(folder, read_decoder_config(folder), kv_cache=kv_cache)
    ids = prompt(12)
    full, present = session.forward(ids)  # (S, V), empty past
    assert full.shape == (len(ids), session.config.vocab_size)
    assert present[session.layout.past_names[0]].shape[2] == len(ids)  # (B, Hkv, total, D)
    head, past = session.forward(ids[:8])
    tail, _ = session.forward(ids[8:], past)  # continuing from a past = the same positions of one forward
    np.testing.assert_allclose(np.concatenate([head, tail]), full, atol=ATOL)
    forward = session.start(max_length=len(ids))
    np.testing.assert_allclose(forward.run(ids[:8], 8), full[7], atol=ATOL)  # prefill: last position
    for position in range(8, len(ids)):  # decode steps through this mode's KV cache
        np.testing.assert_allclose(forward.run([ids[position]], position + 1), full[position], atol=ATOL)


@pytest.mark.parametrize("kv_cache", ["shared", "concat"])
def test_steps_after_a_several_token_run_rebind_correctly(tiny_artifact, kv_cache: str) -> None:
    """prompt, one-token steps, a 3-token verify pass rolled back to 1, steps again: a one-token step reuses
    buffers bound once, a longer run binds its own, and every row still equals the full forward's."""
    folder = tiny_artifact("gqa")
    session = DecoderSession(folder, read_decoder_config(folder), kv_cache=kv_cache)
    ids = prompt(14)
    full, _ = session.forward(ids)  # (S, V)
    forward = session.start(max_length=len(ids))
    forward.run(ids[:6], 6)
    first = forward.run([ids[6]], 7)
    np.testing.assert_allclose(first, full[6], atol=ATOL)
    verify = forward.run_all(ids[7:10], 10)  # (3, V); the caller accepts only the first of them
    np.testing.assert_allclose(verify, full[7:10], atol=ATOL)
    for position in range(8, len(ids)):  # positions 8, 9 are rewritten: the pass dropped them (total = 9)
        step = forward.run([ids[position]], position + 1)
        np.testing.assert_allclose(step, full[position], atol=ATOL)
    if kv_cache == "shared":  # the step's logits row is the same bound buffer every time, no copy
        assert np.shares_memory(step, forward.run([ids[-1]], len(ids)))


def copy_with_manifest(source: Path, target: Path, edit) -> Path:
    shutil.copytree(source, target)
    path = target / MANIFEST_FILE
    manifest = json.loads(path.read_text(encoding="utf-8"))
    edit(manifest)
    path.write_text(json.dumps(manifest), encoding="utf-8")
    return target


def test_the_switch_is_the_manifest_field(tiny_artifact, tmp_path) -> None:
    folder = tiny_artifact("longrope")
    manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    assert manifest[ROPE_SWITCH_KEY] == ORIGINAL_MAX_POSITIONS
    assert json.loads((tiny_artifact("gqa") / MANIFEST_FILE).read_text(encoding="utf-8"))[ROPE_SWITCH_KEY] is None
    # The exporter's spec record is provenance only: the runtime does not read it.
    no_spec = copy_with_manifest(folder, tmp_path / "no-spec", lambda m: m.update(spec="garbage"))
    assert load(no_spec, verify=False).config.rope_switch_length == ORIGINAL_MAX_POSITIONS


@pytest.mark.parametrize("value", ["2048", 0, 1.5])
def test_a_malformed_switch_is_refused_not_ignored(tiny_artifact, tmp_path, value) -> None:
    bad = copy_with_manifest(tiny_artifact("longrope"), tmp_path / "bad", lambda m: m.update({ROPE_SWITCH_KEY: value}))
    with pytest.raises(ArtifactError, match=f"{ROPE_SWITCH_KEY} must be null or an integer") as info:
        load(bad, verify=False)
    assert MANIFEST_FILE in str(info.value) and "\n" not in str(info.value)
    missing = copy_with_manifest(tiny_artifact("longrope"), tmp_path / "missing", lambda m: m.pop(ROPE_SWITCH_KEY))
    with pytest.raises(ArtifactError, match=f"no {ROPE_SWITCH_KEY} field"):
        load(missing, verify=False)


def test_a_folder_without_our_manifest_runs_plain_rope(tiny_artifact, tmp_path) -> None:
    """What onnxruntime-genai does with the same folder: no switch, no re-run."""
    foreign = tmp_path / "foreign"
    shutil.copytree(tiny_artifact("longrope"), foreign)
    (foreign / MANIFEST_FILE).unlink()
    model = load(foreign, verify=False)
    assert model.config.rope_switch_length is None
    assert len(model.generate_ids(prompt(6), 4, ignore_eos=True).token_ids) == 4

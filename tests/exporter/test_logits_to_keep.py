"""logits_to_keep (io_spec.optional_inputs, exporter/decoder.py): fed k > 0, the graph computes the logits of the
last min(k, S) positions only; left out, it is the graph it always was (every position), which is all that
onnxruntime-genai and Optimum ever see. The default-path parity (every position vs transformers) is
test_parity.py's; here the kept rows are checked against the same graph's full logits and transformers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from fixtures.checkpoints import ORIGINAL_MAX_POSITIONS
from fixtures.reference import hf_full_logits
from phi3_edge import io_spec
from phi3_edge.api import export
from phi3_edge.exporter.config import Phi3Spec, load_spec

ATOL = 1e-4  # the parity tolerance against transformers (test_parity.py)
SAME_GRAPH_ATOL = 1e-6  # the same graph with fewer rows through the final norm and lm_head


def prompt(length: int) -> list[int]:
    return np.random.default_rng(5).integers(0, 352, size=length).tolist()


def session(folder: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the "initializer in graph inputs" notice is this input's very design
    return ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])


def prefill(run: ort.InferenceSession, spec: Phi3Spec, ids: list[int], keep: int | None) -> np.ndarray:
    """Logits (kept, V) of a prefill over `ids`; keep None: the input left out, as onnxruntime-genai does."""
    types = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
    past_type = {i.name: i.type for i in run.get_inputs()}[io_spec.past_key(0)]
    empty = np.zeros((1, spec.num_kv_heads, 0, spec.head_dim), dtype=types[past_type])  # (B, Hkv, 0, D)
    feeds = {io_spec.INPUT_IDS: np.asarray([ids], dtype=np.int64),  # (B=1, S)
             io_spec.ATTENTION_MASK: np.ones((1, len(ids)), dtype=np.int64)}  # (B=1, S)
    feeds.update({name: empty for i in range(spec.num_layers) for name in (io_spec.past_key(i), io_spec.past_value(i))})
    if keep is not None:
        feeds[io_spec.LOGITS_TO_KEEP] = np.asarray([keep], dtype=np.int64)  # [1]
    logits: np.ndarray = run.run([io_spec.LOGITS], feeds)[0][0]  # (B, kept, V) -> (kept, V)
    return logits.astype(np.float32)


def test_an_optional_input_backed_by_its_default(tiny_checkpoint, tmp_path: Path) -> None:
    export(str(tiny_checkpoint("gqa")), target="cpu-fp32", output=tmp_path / "art", progress=False)
    model = onnx.load(str(tmp_path / "art" / "model.onnx"), load_external_data=False)
    assert model.ir_version >= 4  # inputs with an initializer are defaults only since IR 4
    spec = load_spec(tiny_checkpoint("gqa") / "config.json")
    required = [s.name for s in io_spec.decoder_inputs(spec.num_layers, spec.num_kv_heads, spec.head_dim, "float32")]
    assert [i.name for i in model.graph.input] == [*required, io_spec.LOGITS_TO_KEEP]
    declared = model.graph.input[-1].type.tensor_type
    assert declared.elem_type == onnx.TensorProto.INT64 and [d.dim_value for d in declared.shape.dim] == [1]
    default = next(t for t in model.graph.initializer if t.name == io_spec.LOGITS_TO_KEEP)
    assert numpy_helper.to_array(default).tolist() == [io_spec.KEEP_ALL_LOGITS]
    run = session(tmp_path / "art")  # what onnxruntime-genai asks of the session: the same inputs as before
    assert [i.name for i in run.get_inputs()] == required
    assert [i.name for i in run.get_overridable_initializers()] == [io_spec.LOGITS_TO_KEEP]


CASES = [("gqa", "cpu-fp32", 20), ("mha", "cpu-fp32", 20), ("partial_tied", "cpu-fp32", 20),
         ("longrope", "cpu-fp32", ORIGINAL_MAX_POSITIONS + 8), ("gqa", "cpu-int4", 20),
         ("partial_tied_wide", "cpu-int4", 20)]


@pytest.mark.parametrize(("variant", "target", "length"), CASES, ids=[f"{v}-{t}-{n}" for v, t, n in CASES])
def test_kept_rows_are_the_full_logits_last_rows(tiny_checkpoint, tmp_path: Path, variant: str, target: str,
                                                 length: int) -> None:
    checkpoint = tiny_checkpoint(variant)
    export(str(checkpoint), target=target, output=tmp_path / "art", progress=False)
    spec, run, ids = load_spec(checkpoint / "config.json"), session(tmp_path / "art"), prompt(length)
    full = prefill(run, spec, ids, None)  # (S, V)
    assert full.shape == (length, spec.vocab_size)
    np.testing.assert_array_equal(prefill(run, spec, ids, io_spec.KEEP_ALL_LOGITS), full)
    for keep in (1, 3, length, length + 5):  # k >= S keeps every position
        kept = prefill(run, spec, ids, keep)
        assert kept.shape == (min(keep, length), spec.vocab_size)
        np.testing.assert_allclose(kept, full[-min(keep, length):], atol=SAME_GRAPH_ATOL, rtol=0)


@pytest.mark.parametrize(("variant", "length"), [("gqa", 20), ("partial_tied", 20),
                                                 ("longrope", ORIGINAL_MAX_POSITIONS + 8)])
def test_last_position_matches_transformers(tiny_checkpoint, tmp_path: Path, variant: str, length: int) -> None:
    checkpoint = tiny_checkpoint(variant)
    export(str(checkpoint), target="cpu-fp32", output=tmp_path / "art", progress=False)
    ids = prompt(length)
    ref = hf_full_logits(checkpoint, ids)  # (S, V)
    last = prefill(session(tmp_path / "art"), load_spec(checkpoint / "config.json"), ids, 1)  # (1, V)
    np.testing.assert_allclose(last, ref[-1:], atol=ATOL, rtol=0)
    assert int(last[0].argmax()) == int(ref[-1].argmax())

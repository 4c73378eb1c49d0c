"""Fuzz the two readers of untrusted checkpoint metadata: config.json -> Phi3Spec, and safetensors headers.

Whatever the input: a result or a CheckpointError, nothing else escapes; no example may take long (the
hypothesis deadline) and nothing is sized from a claim the file cannot back (a shape of 2**80 elements is
rejected by arithmetic, before any allocation). Kept to a few seconds.
"""

from __future__ import annotations

import json
import math
import struct
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from phi3_edge.errors import CheckpointError
from phi3_edge.exporter.config import LIMITS, MAX_ROPE_TABLE, Phi3Spec, load_spec, spec_from_dict
from phi3_edge.exporter.weights import read_header

# Deadline: a slow example is a finding (a hang, a huge allocation). Example counts keep the file near 10 s.
FUZZ = settings(max_examples=150, deadline=500, suppress_health_check=[HealthCheck.too_slow])

VALID = {
    "model_type": "phi3", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0, "eos_token_id": 5, "tie_word_embeddings": False, "sliding_window": None,
    "rope_scaling": {"type": "longrope", "short_factor": [1.0] * 8, "long_factor": [2.0] * 8,
                     "original_max_position_embeddings": 64},
}
KEYS = sorted({*VALID, "head_dim", "partial_rotary_factor", "hidden_act", "bos_token_id", "pad_token_id",
               "rope_parameters", "original_max_position_embeddings"})
ROPE_KEYS = ["type", "rope_type", "short_factor", "long_factor", "factor", "attention_factor", "rope_theta",
             "partial_rotary_factor", "original_max_position_embeddings"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 2, 3, 4, 8, 64, 2**31, 2**40, -1]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.sampled_from(["phi3", "longrope", "su", "default", "silu", "llama"]),
)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(ROPE_KEYS) | st.text(max_size=3), inner, max_size=3)),
    max_leaves=8)
rope_dicts = st.dictionaries(st.sampled_from(ROPE_KEYS), json_values | st.lists(scalars, min_size=8, max_size=8))
configs = st.one_of(
    st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), json_values, max_size=12),  # anything at all
    st.builds(lambda changes: {**VALID, **changes},  # a valid config with a few fields spoiled
              st.dictionaries(st.sampled_from(KEYS), json_values | rope_dicts, max_size=4)),
)


def check_bounded(spec: Phi3Spec) -> None:
    """What a config that passes may ask of the exporter: nothing a real Phi model would not."""
    for field, key in (("hidden_size", "hidden_size"), ("vocab_size", "vocab_size"),
                       ("num_layers", "num_hidden_layers"), ("head_dim", "head_dim"),
                       ("max_position_embeddings", "max_position_embeddings")):
        assert 0 < getattr(spec, field) <= LIMITS[key]
    assert spec.max_position_embeddings * spec.rotary_dim // 2 <= MAX_ROPE_TABLE
    assert math.isfinite(spec.rope_theta) and math.isfinite(spec.rms_norm_eps)
    if spec.longrope is not None:
        assert all(math.isfinite(x) for x in spec.longrope.short_factor + spec.longrope.long_factor)
        assert math.isfinite(spec.longrope.attention_factor)


@FUZZ
@given(configs)
@example(VALID)
@example({**VALID, "rope_scaling": {"type": "longrope", "short_factor": ["a"] * 8, "long_factor": [1] * 8,
                                    "original_max_position_embeddings": 64}})
@example({**VALID, "rope_scaling": {**VALID["rope_scaling"], "original_max_position_embeddings": 1}})
@example({**VALID, "rope_scaling": {**VALID["rope_scaling"], "factor": "2"}})
@example({**VALID, "partial_rotary_factor": "0.5", "rope_scaling": None})
@example({**VALID, "max_position_embeddings": 2**21, "head_dim": 1024, "rope_scaling": None})
def test_config_reader_raises_only_checkpoint_errors(config: dict) -> None:
    try:
        spec = spec_from_dict(config, "config.json")
    except CheckpointError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 400, str(exc)
    else:
        check_bounded(spec)


@pytest.mark.parametrize("text", ["[" * 200_000, '{"a": ' + "9" * 10_000 + "}", "\udcff", "NaN", ""],
                         ids=["deep nesting", "10k-digit number", "not utf-8", "NaN", "empty"])
def test_config_file_junk_is_one_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(CheckpointError) as caught:
        load_spec(path)
    assert "\n" not in str(caught.value)


# -- safetensors headers -------------------------------------------------------------------------------------

dtypes = st.sampled_from(["F32", "F16", "BF16", "I64", "F64", "", None, 3])
dims = st.integers(min_value=-2, max_value=2**41) | st.sampled_from([0, 1, 2, 3, 2**40]) | st.booleans()
entries = st.fixed_dictionaries({}, optional={
    "dtype": dtypes,
    "shape": st.lists(dims, max_size=10) | json_values,
    "data_offsets": st.lists(st.integers(min_value=-8, max_value=2**64) | st.sampled_from([0, 8, 16, 24]),
                             max_size=3) | json_values,
})
headers = st.dictionaries(st.text(max_size=10) | st.just("__metadata__"), entries | json_values, max_size=5)


def write_safetensors(path: Path, header: bytes, body: bytes, claimed: int | None = None) -> Path:
    path.write_bytes(struct.pack("<Q", len(header) if claimed is None else claimed) + header + body)
    return path


def check_header(path: Path) -> None:
    try:
        infos = read_header(path)
    except CheckpointError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 600, str(exc)
        return
    size = path.stat().st_size
    for info in infos:  # anything accepted lies inside the file: reading it can never run past the end
        assert 0 <= info.offset and info.offset + info.nbytes <= size


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "model.safetensors"


@FUZZ
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes(scratch: Path, data: bytes) -> None:
    scratch.write_bytes(data)
    check_header(scratch)


@FUZZ
@given(header=headers, body=st.binary(max_size=64), claimed=st.none() | st.integers(min_value=0, max_value=2**64 - 1))
@example(header={"t": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 0]}}, body=b"", claimed=None)
@example(header={"t": {"dtype": "F32", "shape": [2**40], "data_offsets": [0, 2**42]}}, body=b"", claimed=None)
@example(header={"t": {"dtype": "F32", "shape": [True, 4], "data_offsets": [0, 16]}}, body=b"\0" * 16, claimed=None)
@example(header={"t": {"dtype": "F32", "shape": [2] * 10_000, "data_offsets": [0, 0]}}, body=b"", claimed=None)
def test_structured_headers(scratch: Path, header: dict, body: bytes, claimed: int | None) -> None:
    encoded = json.dumps(header).encode()
    write_safetensors(scratch, encoded, body, claimed)
    check_header(scratch)


HOSTILE = {
    "deep nesting": b"[" * 500_000,  # past the recursion limit
    "50k-digit dim": b'{"t": {"dtype": "F32", "shape": [' + b"9" * 50_000 + b'], "data_offsets": [0, 4]}}',
    "2^80 elements": json.dumps({f"t{i}": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 0]}
                                 for i in range(3)}).encode(),
    "2^312 elements": json.dumps({"t": {"dtype": "BF16", "shape": [2**39] * 8,
                                        "data_offsets": [0, 2**63 - 1]}}).encode(),
}


@pytest.mark.parametrize("header", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_headers_cost_no_memory(tmp_path: Path, header: bytes) -> None:
    """Peak Python allocation stays within a few times the header's own size: nothing is sized by a claim."""
    path = write_safetensors(tmp_path / "model.safetensors", header, b"\0" * 64)
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError):
            read_header(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * len(header) + (8 << 20), peak

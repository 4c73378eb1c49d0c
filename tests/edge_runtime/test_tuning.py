"""threads.SessionTuning: every session option the bench A/B tries gives the default's greedy tokens, and the
affinity string is what onnxruntime expects (one 1-based CPU id per pool thread beyond the caller's)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from phi3_edge.edge_runtime.model import EdgeModel
from phi3_edge.edge_runtime.threads import SessionTuning, session_options, thread_affinities

VARIANTS = [
    SessionTuning(spinning=True),
    SessionTuning(spinning=True, spin_duration_us=100, dynamic_block_base=4, pin_threads=True),
    SessionTuning(cpu_arena=False, mem_pattern=False, optimization="extended"),
]


@pytest.mark.parametrize("tuning", VARIANTS, ids=["spin", "spin-dynamic-pinned", "no-arena-extended"])
def test_tuning_changes_speed_not_tokens(tiny_artifact, tuning: SessionTuning) -> None:
    folder = tiny_artifact("gqa", "cpu-int4")
    ids = np.random.default_rng(9).integers(0, 352, size=12).tolist()
    reference = EdgeModel.load(folder, intra_op_threads=2).generate_ids(ids, 16, ignore_eos=True).token_ids
    tuned = EdgeModel.load(folder, intra_op_threads=2, tuning=tuning)
    assert tuned.generate_ids(ids, 16, ignore_eos=True).token_ids == reference


def test_session_options_carry_the_tuning() -> None:
    options = session_options(2, SessionTuning(spinning=False, dynamic_block_base=4, cpu_arena=False))
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.dynamic_block_base") == "4"
    assert options.intra_op_num_threads == 2 and not options.enable_cpu_mem_arena


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux affinity masks only")
def test_thread_affinities_name_our_cpus_beyond_the_first() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    assert thread_affinities(1) is None
    assert thread_affinities(len(cpus) + 1) is None  # more threads than CPUs: leave placement to the OS
    if len(cpus) >= 2:
        assert thread_affinities(2) == str(cpus[1] + 1)


def test_sessions_log_errors_only_by_default() -> None:
    # The overridable logits_to_keep initializer makes onnxruntime warn on every load at level 2; errors (3) show.
    assert session_options(1).log_severity_level == 3
    assert session_options(1, SessionTuning(log_severity=2)).log_severity_level == 2

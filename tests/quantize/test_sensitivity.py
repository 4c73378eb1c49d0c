"""Sensitivity-based mixed precision: greedy by error removed per byte, within the budget."""

from __future__ import annotations

import numpy as np
import pytest

from phi3_edge.quantize.blockwise import dequantize, quantize_rtn
from phi3_edge.quantize.sensitivity import Candidate, budget_bytes, choose_wide, relative_output_error


def test_greedy_takes_the_best_gain_per_byte_that_fits() -> None:
    cands = [Candidate("table", 0.35, 0.27, 14_000_000),  # the smollm2 figures: KL 0.349 -> 0.269, +14.2 MB
             Candidate("down.3", 0.02, 0.01, 600_000), Candidate("q.1", 0.001, 0.0009, 300_000),
             Candidate("useless", 0.01, 0.01, 1)]
    assert choose_wide(cands, 15_000_000) == ["down.3", "table", "q.1"]  # 1.7e-8, 5.7e-9, 3.3e-10 per byte
    assert choose_wide(cands, 1_000_000) == ["down.3", "q.1"]  # the table does not fit: skipped, not a stop
    assert choose_wide(cands, 0) == []


def test_budget_is_a_factor_of_the_int4_size() -> None:
    assert budget_bytes(84_000_000, 1.05) == 4_200_000
    with pytest.raises(ValueError, match="size-budget"):
        budget_bytes(84_000_000, 0.9)


def test_relative_output_error_orders_int4_above_int8() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(32, 64)).astype(np.float32)
    x = rng.normal(size=(200, 64))
    h = x.T @ x
    e4 = relative_output_error(w, dequantize(quantize_rtn(w, 4, 32, True)), h)
    e8 = relative_output_error(w, dequantize(quantize_rtn(w, 8, 32, True)), h)
    # int4 symmetric RTN on N(0,1): ~0.0074 relative energy (RMS error 0.086 of the weights'); int8 ~256x less.
    assert 0.004 < e4 < 0.012 and e8 < e4 / 100

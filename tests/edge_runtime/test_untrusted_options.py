"""Sampling options from the command line or an API caller: NaN, infinities and negative seeds are one line."""

from __future__ import annotations

import math

import pytest

from phi3_edge.edge_runtime.generate import GenerationOptions
from phi3_edge.errors import Phi3EdgeError


@pytest.mark.parametrize("field,value", [("temperature", math.nan), ("temperature", math.inf),
                                         ("top_p", math.nan), ("repetition_penalty", math.nan),
                                         ("repetition_penalty", math.inf), ("seed", -1), ("seed", 2**64),
                                         ("seed", 1.5), ("top_k", 2.5)])
def test_a_bad_option_is_one_line(field: str, value: object) -> None:
    with pytest.raises(Phi3EdgeError, match=field) as caught:
        GenerationOptions(max_new_tokens=4, **{field: value})  # type: ignore[arg-type]
    assert "\n" not in str(caught.value)


def test_good_options_pass() -> None:
    options = GenerationOptions(max_new_tokens=4, temperature=0.7, top_p=0.9, seed=0).sampling
    assert options.seed == 0 and not options.greedy

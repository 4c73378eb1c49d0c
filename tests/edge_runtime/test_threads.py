"""One loaded model serves several threads at once; each gets exactly what it would get alone."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from phi3_edge.api import load

REQUESTS = [
    ({"temperature": 0.0}, 0),
    ({"temperature": 0.9, "top_p": 0.9, "seed": 1}, 1),
    ({"temperature": 1.2, "top_k": 20, "repetition_penalty": 1.2, "seed": 2}, 2),
]


def _prompt(seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, 352, size=12 + 7 * seed).tolist()


def test_three_threads_get_their_single_thread_outputs(tiny_artifact) -> None:
    model = load(tiny_artifact("longrope"))  # LongRoPE: one request crosses the switch and re-prefills
    alone = [model.generate_ids(_prompt(seed), 32, ignore_eos=True, **options).token_ids
             for options, seed in REQUESTS]
    start = threading.Barrier(len(REQUESTS) * 2)

    def run(index: int) -> list[int]:
        options, seed = REQUESTS[index % len(REQUESTS)]
        start.wait()  # all threads decode at the same time
        return model.generate_ids(_prompt(seed), 32, ignore_eos=True, **options).token_ids

    with ThreadPoolExecutor(max_workers=len(REQUESTS) * 2) as pool:
        together = list(pool.map(run, range(len(REQUESTS) * 2)))
    assert together == alone + alone

"""Shared pytest fixtures: tiny random Phi-3 checkpoints, built once per session per combination."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:  # `fixtures` importable under any pytest import mode
    sys.path.insert(0, _TESTS)

from fixtures.checkpoints import make_checkpoint  # noqa: E402

CheckpointFactory = Callable[..., Path]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long-running test (real-size models, many decode steps)")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> CheckpointFactory:
    """`tiny_checkpoint(variant, dtype="float32", sharded=False, config_style="transformers") -> Path`.

    Each combination is built once per session under one temporary folder; treat the folders as read-only.
    """
    root = tmp_path_factory.mktemp("tiny_checkpoints")
    built: dict[tuple[str, str, bool, str], Path] = {}

    def get(
        variant: str, dtype: str = "float32", sharded: bool = False, config_style: str = "transformers"
    ) -> Path:
        key = (variant, dtype, sharded, config_style)
        if key not in built:
            name = f"{variant}-{dtype}-{'sharded' if sharded else 'single'}-{config_style}"
            built[key] = make_checkpoint(
                root / name, variant, dtype=dtype, sharded=sharded, config_style=config_style
            )
        return built[key]

    return get

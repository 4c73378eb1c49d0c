"""Exported tiny artifacts shared by the runtime tests: each (variant, target) is exported once per session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from phi3_edge.api import export

ArtifactFactory = Callable[..., Path]


@pytest.fixture(scope="session")
def tiny_artifact(tiny_checkpoint, tmp_path_factory: pytest.TempPathFactory) -> ArtifactFactory:
    """`tiny_artifact(variant, target="cpu-fp32") -> Path` of an exported folder; treat it as read-only."""
    root = tmp_path_factory.mktemp("tiny_artifacts")
    built: dict[tuple[str, str], Path] = {}

    def get(variant: str, target: str = "cpu-fp32") -> Path:
        if (variant, target) not in built:
            folder = root / f"{variant}-{target}"
            export(str(tiny_checkpoint(variant)), target=target, output=folder, progress=False)
            built[variant, target] = folder
        return built[variant, target]

    return get

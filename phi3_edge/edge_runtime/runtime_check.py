"""Refuse an installed onnxruntime (or onnxruntime-genai) older than the artifact needs, in one line.

manifest.json's min_runtime record (phi3_edge.runtime_compat, written at export) names the oldest releases
that run the graph; an older one would fail deep inside session creation ("Unrecognized attribute: bits") or,
worse, run and answer differently (GroupQueryAttention's sliding window before 1.24). A folder without the
record (not ours, or exported before it existed) is not checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from phi3_edge.errors import ArtifactError
from phi3_edge.manifest import read_manifest
from phi3_edge.runtime_compat import MANIFEST_KEY, check_installed


def check_runtime(folder: Path, *, uses_genai: bool) -> None:
    record = min_runtime_record(folder)
    if record is None:
        return
    problem = check_installed(record, installed_versions(uses_genai))
    if problem is not None:
        raise ArtifactError(problem, folder)


def min_runtime_record(folder: Path) -> dict[str, Any] | None:
    try:
        record = read_manifest(folder).get(MANIFEST_KEY)
    except ArtifactError:
        return None  # no manifest of ours: nothing recorded to hold the runtime to
    return record if isinstance(record, dict) else None


def installed_versions(uses_genai: bool) -> dict[str, str | None]:
    """The versions in use: onnxruntime's own __version__ (its wheel may be onnxruntime-gpu, -directml, ...)."""
    import onnxruntime

    versions: dict[str, str | None] = {"onnxruntime": str(onnxruntime.__version__), "onnxruntime-genai": None}
    if uses_genai:
        try:
            import onnxruntime_genai
        except ImportError:
            return versions  # the genai backend reports its own missing install
        versions["onnxruntime-genai"] = str(getattr(onnxruntime_genai, "__version__", "")) or None
    return versions

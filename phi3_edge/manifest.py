"""The artifact manifest: what built a folder, from what, with which recipe, and the sha256 of every file.

manifest.json is written last into the staged folder, so a folder with a valid manifest of our format is a
finished export. The runtime imports this module too (to verify a folder before loading it), so it must
stay free of exporter code and of heavy imports: tool versions come from package metadata, not imports.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Iterable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from phi3_edge.artifact_contract import MANIFEST_FILE, ROPE_SWITCH_KEY, rope_switch_length
from phi3_edge.errors import ArtifactError, Phi3EdgeError

MANIFEST_NAME = MANIFEST_FILE
FORMAT = "phi3-edge-artifact/1"  # the "format" key's value: marks a folder as ours (and its layout version)
_CHUNK = 1 << 20  # 1 MiB: hashing multi-GB weight files must stream, never read whole
_TOOLS = ("phi3-edge", "onnx", "onnxruntime", "onnxruntime-genai", "numpy")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tool_versions() -> dict[str, str | None]:
    """Versions of the tools that shape an artifact; None for a tool that is not installed."""
    versions: dict[str, str | None] = {}
    for name in _TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    return versions


def source_record(source: str, revision: str | None, root: Path, files: Iterable[Path]) -> dict[str, Any]:
    """The checkpoint side of the manifest: what the user named, the hub revision, and hashes of its files.

    `files` are paths inside `root` (config, index, weight shards, tokenizer files); names are stored relative
    to `root` so a manifest does not leak or depend on the machine's cache layout.
    """
    return {
        "source": source,
        "revision": revision,
        "files": {_relative(path, root): _file_entry(path) for path in files},
    }


def build_manifest(
    *,
    source: dict[str, Any],
    spec_json: dict[str, Any],
    target: dict[str, Any],
    recipe: dict[str, Any],
    io_signature: list[dict[str, Any]],
    artifact_dir: Path,
    rope_switch_length: int | None,
) -> dict[str, Any]:
    """Assemble the manifest for a finished artifact folder (hashes every file in it except the manifest).

    rope_switch_length: a LongRoPE model's original_max_position_embeddings, None for plain RoPE; the runtime
    reads it back with read_rope_switch_length (phi3_edge.artifact_contract says why it lives here).
    """
    return {
        "format": FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        ROPE_SWITCH_KEY: rope_switch_length,
        "spec": spec_json,
        "target": target,
        "recipe": recipe,
        "io_signature": io_signature,
        "tools": tool_versions(),
        "files": artifact_files(artifact_dir),
    }


def artifact_files(folder: Path) -> dict[str, dict[str, Any]]:
    """{relative posix name: {sha256, bytes}} for every file under `folder` except manifest.json."""
    return {name: _file_entry(folder / name) for name in _listed_names(folder)}


def folder_names(folder: Path) -> list[str]:
    """Relative posix names of every file under `folder` except manifest.json, sorted (what a manifest lists)."""
    return _listed_names(folder)


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    path = Path(folder) / MANIFEST_NAME
    try:
        text = json.dumps(manifest, indent=2, sort_keys=False, allow_nan=False)  # NaN is not JSON
    except ValueError:
        raise Phi3EdgeError("a recorded measurement is NaN or infinite; refusing to write an invalid manifest",
                            path) from None
    path.write_text(text + "\n", encoding="utf-8")
    return path


def read_manifest(folder: Path) -> dict[str, Any]:
    """Load and sanity-check manifest.json; every problem is a one-line ArtifactError naming the file."""
    path = Path(folder) / MANIFEST_NAME
    data = _load_json(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else None
        raise ArtifactError(f"not a phi3-edge manifest (format {found!r}, expected {FORMAT!r})", path)
    if not isinstance(data.get("files"), dict):
        raise ArtifactError("manifest has no 'files' table", path)
    return data


def read_rope_switch_length(folder: Path) -> int | None:
    """The runtime's read of manifest.json: the LongRoPE switch length, or None for plain RoPE.

    A folder without a manifest of ours (no manifest.json, or another format) runs with plain RoPE, as
    onnxruntime-genai runs it; an unreadable manifest.json, or ours with a missing or malformed field, is an
    ArtifactError (guessing would run a LongRoPE model wrongly past the switch).
    """
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    data = _load_json(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    return rope_switch_length(data, path)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError("manifest.json not found (not a phi3-edge artifact folder?)", path.parent) from None
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, a 5000-digit number, absurd nesting
        raise ArtifactError(f"not valid JSON ({str(exc)[:120]})", path) from None
    except OSError as exc:
        raise ArtifactError(f"cannot be read ({exc.strerror or exc})", path) from None


def is_artifact(folder: Path) -> bool:
    """True when `folder` holds a manifest of our format (used before overwriting a folder)."""
    try:
        read_manifest(folder)
    except ArtifactError:
        return False
    return True


def _listed_names(folder: Path) -> list[str]:
    folder = Path(folder)
    names = (_relative(path, folder) for path in folder.rglob("*") if path.is_file())
    return sorted(name for name in names if name != MANIFEST_NAME)


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).name  # a file outside root (e.g. a resolved symlink target): keep its name only


def _file_entry(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": Path(path).stat().st_size}

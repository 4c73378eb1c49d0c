"""The model cache behind `phi3-edge run MODEL` / `chat MODEL`: name a model, get an artifact folder.

MODEL is an artifact folder (used as it is), or anything `export --model` takes (a checkpoint folder, a
short name, a hub id, a GGUF file, an Ollama name, `demo`). The first use exports it for the best target
this machine can run (the target table's choice among the execution providers onnxruntime offers here);
later uses reuse that folder after a fast integrity check, and a damaged one is exported again.

    ~/.cache/phi3-edge/artifacts/            ($PHI3_EDGE_CACHE replaces this path; $XDG_CACHE_HOME is honoured)
      demo-cpu-int4-3f2a9c1b7e0d/            an artifact folder, sealed (only what its manifest.json lists)
      demo-cpu-int4-3f2a9c1b7e0d.entry.json  what was asked for (model, target, recipe), created, last used
      .locks/demo-cpu-int4-3f2a9c1b7e0d      held while that key is being exported: two runs export it once

The key is a readable prefix (model, target) and a hash of everything that shapes the artifact: the model
(for a local folder or file, its absolute path and the size/mtime of its files, so an edited checkpoint is
exported again), the target and the export recipe.

The exporter is reached through the `export` callable the API passes in, so this module never imports the
API (which imports it) and the runtime never sees the exporter.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from phi3_edge.artifact_contract import GENAI_CONFIG_FILE, MANIFEST_FILE
from phi3_edge.errors import ArtifactError, Phi3EdgeError
from phi3_edge.targets.table import best_target, get_target

CACHE_ENV = "PHI3_EDGE_CACHE"  # the artifacts folder itself (tests point it at a temporary folder)
ENTRY_SUFFIX = ".entry.json"
CHECKPOINT_CONFIG_FILE = "config.json"  # what makes a folder a Hugging Face checkpoint
_KEY_VERSION = 1  # bump when the key's inputs change meaning: old entries then stay listed but are not reused
_SLUG = re.compile(r"[^A-Za-z0-9._]+")

Notify = Callable[[str], None]
ExportFunction = Callable[..., Any]  # api.export's signature: (model, target, output, *, force, progress, ...)


@dataclass(frozen=True)
class ExportRecipe:
    """The export options that shape a cached artifact (a different recipe is a different cache entry)."""

    quant_algo: str | None = None  # None: the export's default (the target's calibrated algorithm up to its size)
    mixed_precision: bool = False
    lm_head: str | None = None
    embeddings: str | None = None
    fidelity: bool = True  # measure KL / top-1 against cpu-fp32 and record it in manifest.json

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CacheEntry:
    """One cached artifact, as `phi3-edge list` shows it."""

    key: str
    folder: Path
    model: str  # what was asked for (`run MODEL`'s MODEL)
    target: str
    size_bytes: int
    created: str  # ISO 8601, UTC
    last_used: str

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "folder": str(self.folder)}


@dataclass(frozen=True)
class ResolvedModel:
    """Where MODEL's artifact is and how it got there."""

    folder: Path
    exported: bool  # exported just now (first use, or a damaged cache entry rebuilt)
    key: str | None  # the cache key; None for an artifact folder given directly
    target: str | None  # the target it was exported for; None for an artifact folder given directly


def cache_root() -> Path:
    """$PHI3_EDGE_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/phi3-edge/artifacts."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "phi3-edge" / "artifacts"


def is_artifact_folder(path: Path) -> bool:
    """A folder to load as it is: an artifact (ours, or one onnxruntime-genai would load), or a folder that is
    no checkpoint either (no config.json), which the loader then reports with its own one-line error."""
    if not path.is_dir():
        return False
    is_artifact = (path / MANIFEST_FILE).is_file() or (path / GENAI_CONFIG_FILE).is_file()
    return is_artifact or not (path / CHECKPOINT_CONFIG_FILE).is_file()


def auto_target(available_providers: Sequence[str] | None = None) -> str:
    """The target `run MODEL` exports for: the table's first choice whose provider onnxruntime offers here."""
    if available_providers is None:
        import onnxruntime

        available_providers = onnxruntime.get_available_providers()
    return best_target(available_providers).name


def cache_key(model: str, target: str, recipe: ExportRecipe) -> str:
    """`<model>-<target>-<12 hex>`: readable, and different whenever the artifact would differ."""
    identity = {"version": _KEY_VERSION, "model": _model_identity(model), "target": target,
                "recipe": recipe.to_json()}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()[:12]
    return f"{_slug(model)}-{target}-{digest}"


def resolve_model(model: str, *, export: ExportFunction, target: str | None = None,
                  recipe: ExportRecipe | None = None, progress: bool | None = None,
                  notify: Notify | None = None, available_providers: Sequence[str] | None = None) -> ResolvedModel:
    """MODEL -> an intact artifact folder, exporting it into the cache on first use (see the module docstring).

    `notify` gets one-line messages for a person (default: stderr); `progress` is the export's progress display
    (None: a bar on a terminal). `available_providers` stands in for onnxruntime's list (tests).
    """
    say = notify if notify is not None else _stderr
    recipe = recipe if recipe is not None else ExportRecipe()
    path = Path(model).expanduser()
    if is_artifact_folder(path):
        return ResolvedModel(path, exported=False, key=None, target=None)
    if not path.exists() and (path.is_absolute() or model.startswith((".", "~"))):
        raise ArtifactError("not found (no artifact folder, checkpoint or GGUF file there)", model)
    chosen = target if target is not None else auto_target(available_providers)
    try:
        get_target(chosen)  # an unknown target fails here, before any lock or folder exists
    except KeyError as exc:
        raise Phi3EdgeError(str(exc.args[0])) from None
    key = cache_key(model, chosen, recipe)
    root = cache_root()
    folder = root / key
    with _key_lock(root, key):
        if _reusable(folder, say):
            _write_entry(root, key, model, chosen, recipe, touch_only=True)
            return ResolvedModel(folder, exported=False, key=key, target=chosen)
        replace = folder.exists()
        say(f"{model}: {'exporting it again' if replace else 'first use, exporting'} for {chosen} into {folder}")
        result = export(model, chosen, folder, force=replace, progress=progress, quant_algo=recipe.quant_algo,
                        mixed_precision=recipe.mixed_precision, lm_head=recipe.lm_head,
                        embeddings=recipe.embeddings, fidelity=recipe.fidelity)
        _verify(folder)  # full hashes once; the stamp it leaves makes the load that follows cheap
        _write_entry(root, key, model, chosen, recipe)
        seconds = getattr(result, "seconds", None)
        took = f" in {seconds:.1f} s" if isinstance(seconds, float) else ""
        say(f"{model}: exported{took}, {_size(_folder_bytes(folder))}; cached for later runs "
            "(`phi3-edge list`, `phi3-edge rm`)")
    return ResolvedModel(folder, exported=True, key=key, target=chosen)


def list_entries() -> list[CacheEntry]:
    """Every cached artifact, most recently used first."""
    root = cache_root()
    if not root.is_dir():
        return []
    entries = [_entry(root, folder) for folder in sorted(root.iterdir())
               if folder.is_dir() and not folder.name.startswith(".")]
    return sorted(entries, key=lambda e: e.last_used, reverse=True)


def remove(selector: str, *, target: str | None = None) -> list[CacheEntry]:
    """Delete the entries whose key is `selector`, or whose model is `selector` (only `target`'s, if given).

    Nothing matching is a Phi3EdgeError naming the cache folder, so a typo never passes silently.
    """
    matches = [e for e in list_entries()
               if e.key == selector or (e.model == selector and (target is None or e.target == target))]
    if not matches:
        which = f"{selector!r}" + (f" for {target}" if target else "")
        raise Phi3EdgeError(f"no cached artifact matches {which} (`phi3-edge list` shows them)", cache_root())
    root = cache_root()
    for entry in matches:
        with _key_lock(root, entry.key):
            shutil.rmtree(entry.folder, ignore_errors=True)
            (root / f"{entry.key}{ENTRY_SUFFIX}").unlink(missing_ok=True)
            (root / ".locks" / entry.key).unlink(missing_ok=True)
    return matches


# -- keys -------------------------------------------------------------------------------------------------

def _model_identity(model: str) -> Any:
    """A name stands for itself; a local folder or file for its absolute path and its files' size/mtime."""
    path = Path(model).expanduser()
    if not path.exists():
        return model
    files: Iterable[Path] = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return {"path": str(path.resolve()), "files": stats}


def _slug(model: str) -> str:
    path = Path(model).expanduser()
    name = path.resolve().name if path.exists() else model  # a path: its last part; a name: all of it
    slug = _SLUG.sub("-", name).strip("-.").lower()
    return slug[:48] or "model"


# -- entries ----------------------------------------------------------------------------------------------

def _reusable(folder: Path, say: Notify) -> bool:
    if not folder.is_dir():
        return False
    try:
        _verify(folder)
    except ArtifactError as exc:
        say(f"cached artifact is damaged ({' '.join(str(exc).splitlines())}); exporting it again")
        return False
    return True


def _verify(folder: Path) -> None:
    from phi3_edge.integrity import verify_artifact

    verify_artifact(folder)


def _write_entry(root: Path, key: str, model: str, target: str, recipe: ExportRecipe, *,
                 touch_only: bool = False) -> None:
    path = root / f"{key}{ENTRY_SUFFIX}"
    now = _now()
    record = _read_json(path) if touch_only else None
    if not isinstance(record, dict):
        record = {"model": model, "target": target, "recipe": recipe.to_json(), "created": now}
    record["last_used"] = now
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        os.replace(temporary, path)  # a reader sees the old record or the new one, never half of one
    except OSError:
        temporary.unlink(missing_ok=True)  # a read-only cache still runs; `list` then falls back to the manifest


def _entry(root: Path, folder: Path) -> CacheEntry:
    record = _read_json(root / f"{folder.name}{ENTRY_SUFFIX}")
    record = record if isinstance(record, dict) else {}
    manifest = _read_json(folder / MANIFEST_FILE)
    manifest = manifest if isinstance(manifest, dict) else {}
    source = _section(manifest, "source")
    target = _section(manifest, "target")
    created = str(record.get("created") or manifest.get("created") or "?")
    return CacheEntry(
        key=folder.name, folder=folder, model=str(record.get("model") or source.get("source") or "?"),
        target=str(record.get("target") or target.get("name") or "?"), size_bytes=_folder_bytes(folder),
        created=created, last_used=str(record.get("last_used") or created))


def _section(record: dict[str, Any], key: str) -> dict[str, Any]:
    value = record.get(key)
    return value if isinstance(value, dict) else {}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


@contextmanager
def _key_lock(root: Path, key: str) -> Iterator[None]:
    """An exclusive lock per key (POSIX flock; where there is none, nothing: the export is atomic anyway)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    try:
        (root / ".locks").mkdir(parents=True, exist_ok=True)
        handle = open(root / ".locks" / key, "a+b")  # noqa: SIM115 - held for the whole block
    except OSError as exc:
        raise Phi3EdgeError(f"cannot use the model cache: {exc.strerror or exc}", root) from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def _size(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.1f} KiB"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)

"""Is an artifact folder intact? Checked before the runtime loads it, and by `phi3-edge verify`.

Three checks, all stdlib-only (a device installs onnxruntime, numpy and tokenizers, never onnx):
  1. files: each file manifest.json lists exists with the recorded size and sha256, and nothing else is in the
     folder (an artifact is sealed: a stray file could be an external-data target nobody hashed);
  2. graph: model.onnx is read with phi3_edge.onnx_wire, a small stdlib-only protobuf wire-format reader
     (only the fields we need, inline weights skipped by length), and its declared inputs/outputs must equal
     manifest.json's io_signature;
  3. external data: every `location` in model.onnx must be a relative name inside the folder that the manifest
     lists (no absolute paths, no `..`, no link out of the folder), and offset + length must fit that file.

  4. content (phi3_edge.artifact_guard, also run on every load, --no-verify or not): every path the artifact
     names resolves to a regular file inside the folder, and no genai_config.json option loads code or
     writes files unless allowed.

Hashing a multi-GB folder on every load would cost seconds, so `verify_artifact` hashes a folder fully the
first time and then keeps a stamp of each file's (size, mtime_ns, inode, ctime_ns, sha256) in the per-user
cache (${XDG_CACHE_HOME:-~/.cache}/phi3-edge/stamps/<sha256 of the folder's absolute path>.json), never inside
the artifact, which may be read-only on a device. A stamp skips a file's hash only when all five agree with
the file on disk and with manifest.json: mtime can be set back with `touch`, but ctime and the inode cannot
(any write, rename or copy changes them), and a forged stamp entry must also carry the manifest's hash of that
file, so it cannot stand in for a file it does not describe. The stamp trusts the filesystem's ctime and
whoever can write the user's cache folder (that user can run code as himself anyway).

Between the check and the load, check_before_load/LoadGuard stat every file again after the session is built:
a file swapped or rewritten while onnxruntime read it (its ctime or inode moves) is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phi3_edge import artifact_guard
from phi3_edge.artifact_contract import MODEL_FILE, ORT_FILE
from phi3_edge.errors import ArtifactError
from phi3_edge.manifest import MANIFEST_NAME, folder_names, read_manifest, sha256_file
from phi3_edge.onnx_wire import read_graph_io

STAMP_VERSION = 2  # 2: (size, mtime_ns, inode, ctime_ns, sha256) per file
DAMAGED = "artifact is damaged"


@dataclass(frozen=True)
class FileStatus:
    """One row of `phi3-edge verify`: a file the manifest lists, or one it does not."""

    name: str
    size: int | None  # on disk; None when missing
    recorded: int | None  # bytes in manifest.json; None for an unlisted file
    sha256: str | None  # recorded hash (shown shortened in the table)
    problem: str | None = None  # None: intact


@dataclass(frozen=True)
class Report:
    folder: Path
    files: tuple[FileStatus, ...]
    io_count: int  # graph inputs + outputs compared with the manifest
    locations: tuple[str, ...]  # external-data files model.onnx refers to
    graph_problems: tuple[tuple[str, str], ...]  # (file name, one-line problem)

    @property
    def problems(self) -> list[tuple[str, str]]:
        return [(f.name, f.problem) for f in self.files if f.problem] + list(self.graph_problems)

    @property
    def ok(self) -> bool:
        return not self.problems

    def error(self, *, hint: bool = True) -> ArtifactError:
        """The first problem as one line, naming the file; the count says whether there is more to see."""
        name, problem = self.problems[0]
        more = len(self.problems) - 1
        where = f"; see `phi3-edge verify {self.folder}`" if hint else ""
        suffix = f" (and {more} more problem{'s' * (more > 1)}{where})" if more else ""
        return ArtifactError(problem + suffix, self.folder / name)


def verify_artifact(folder: Path, *, use_stamp: bool = True, allow_unsafe_config: bool = False) -> None:
    """Raise a one-line ArtifactError unless `folder` is an intact artifact; fast when a stamp says unchanged."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError("artifact folder not found", folder)
    manifest = read_manifest(folder)  # a folder that is not ours fails here, with its own message
    if use_stamp and _stamp_matches(folder, manifest):
        return
    report = check_artifact(folder, allow_unsafe_config=allow_unsafe_config)
    if not report.ok:
        raise report.error()


def check_artifact(folder: Path, *, remember: bool = True, allow_unsafe_config: bool = False) -> Report:
    """Every check, no stamp; on success (and `remember`) the stamp is refreshed for later loads."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError("artifact folder not found", folder)
    before = _fingerprint(folder)  # taken first: a file changed during hashing must not be stamped as good
    manifest = read_manifest(folder)
    files = tuple(_check_files(folder, manifest["files"]))
    io_count, locations, graph_problems = _check_graph(folder, manifest)
    content = [p for p in artifact_guard.check_content(folder, allow_unsafe_config=allow_unsafe_config)
               if p not in graph_problems]
    report = Report(folder, files, io_count, tuple(locations), tuple(graph_problems + content))
    if report.ok and remember:
        _write_stamp(folder, before, files)
    return report


class LoadGuard:
    """What check_before_load saw; confirm() after the session is built refuses a folder that changed since."""

    def __init__(self, folder: Path, before: dict[str, list[int]]) -> None:
        self.folder, self._before = folder, before

    def confirm(self) -> None:
        if _fingerprint(self.folder) != self._before:
            raise ArtifactError("changed while it was being loaded (a file was rewritten or replaced); "
                                "refusing what was read", self.folder)


def check_before_load(folder: Path, *, verify: bool = True, allow_unsafe_config: bool = False) -> LoadGuard:
    """The loaders' one entry point (load(), run, chat, bench, eval, inspect): hashes (unless verify=False),
    then the content checks, which --no-verify does not skip. Call .confirm() once everything is loaded."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError("artifact folder not found", folder)
    before = _fingerprint(folder)
    if verify:
        verify_artifact(folder, allow_unsafe_config=allow_unsafe_config)
    problems = artifact_guard.check_content(folder, allow_unsafe_config=allow_unsafe_config)
    if problems:
        name, problem = problems[0]
        raise ArtifactError(problem, folder / name)
    return LoadGuard(folder, before)


# -- files -------------------------------------------------------------------------------------------------

def _check_files(folder: Path, listed: dict[str, Any]) -> Iterator[FileStatus]:
    for name, entry in sorted(listed.items()):
        yield _check_entry(folder, name, entry)
    for name in folder_names(folder):
        if name not in listed:
            yield FileStatus(name, _size(folder / name), None, None,
                             f"{DAMAGED}: not listed in {MANIFEST_NAME} (added after export?)")


def _check_entry(folder: Path, name: str, entry: Any) -> FileStatus:
    ok_entry = isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and _is_count(entry.get("bytes"))
    recorded, digest = (entry["bytes"], entry["sha256"]) if ok_entry else (None, None)
    if not _inside(folder, name):  # a manifest is data from disk: never let a name reach outside the folder
        where = "a link pointing" if _plain_name(name) else f"{MANIFEST_NAME} names a file"
        return FileStatus(name, None, recorded, digest, f"{DAMAGED}: {where} outside the artifact folder")
    path, size = folder / name, _size(folder / name)

    def status(problem: str | None) -> FileStatus:
        return FileStatus(name, size, recorded, digest, problem)

    if not ok_entry:
        return status(f"{DAMAGED}: malformed entry in {MANIFEST_NAME}")
    if size is None:
        return status(f"{DAMAGED}: listed in {MANIFEST_NAME} but missing")
    if size != recorded:
        shorter = recorded is not None and size < recorded
        hint = "truncated download or partial copy?" if shorter else "modified after export?"
        return status(f"{DAMAGED}: size {size} != {recorded} recorded in {MANIFEST_NAME} ({hint})")
    if sha256_file(path) != digest:
        return status(f"{DAMAGED}: sha256 differs from {MANIFEST_NAME} (corrupted or modified; export or copy again)")
    return status(None)


def _inside(folder: Path, name: str) -> bool:
    """`name` is relative, has no `..`, and (links followed) stays inside `folder`."""
    if not _plain_name(name):
        return False
    try:
        return (folder / name).resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError, ValueError):  # a link loop, a NUL byte in the name
        return False


_plain_name = artifact_guard.plain_name


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size if path.is_file() else None
    except OSError:
        return None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# -- graph: I/O signature and external data ----------------------------------------------------------------

def _check_graph(folder: Path, manifest: dict[str, Any]) -> tuple[int, list[str], list[tuple[str, str]]]:
    """(I/O entries compared, external-data locations, problems) for model.onnx."""
    if not (folder / MODEL_FILE).is_file():
        if MODEL_FILE in manifest["files"]:
            return 0, [], []  # _check_files reports it missing
        if ORT_FILE in manifest["files"]:
            return 0, [], []  # `--mobile-files ort`: the ORT-format graph holds its weights inline (flatbuffer)
        return 0, [], [(MODEL_FILE, f"{DAMAGED}: no decoder graph")]
    try:
        io, external = read_graph_io(folder / MODEL_FILE)
    except (OSError, ValueError) as exc:  # WireError is a ValueError
        return 0, [], [(MODEL_FILE, f"{DAMAGED}: not a readable ONNX model ({exc})")]
    problems = _compare_io(io, manifest.get("io_signature"))
    locations = sorted({location for location, _, _ in external})
    problems += [(MODEL_FILE, p) for p in _check_external(folder, manifest["files"], external)]
    return len(io), locations, problems


def _compare_io(graph: dict[str, tuple[str, list[Any]]], signature: Any) -> list[tuple[str, str]]:
    if not isinstance(signature, list) or not all(isinstance(s, dict) and "name" in s for s in signature):
        return [(MANIFEST_NAME, f"{DAMAGED}: no valid io_signature")]
    recorded = {str(s["name"]): (s.get("dtype"), list(s.get("shape") or [])) for s in signature}
    missing, extra = sorted(set(recorded) - set(graph)), sorted(set(graph) - set(recorded))
    if missing or extra:
        return [(MODEL_FILE, f"{DAMAGED}: graph I/O differs from {MANIFEST_NAME}'s io_signature "
                             f"(missing: {', '.join(missing[:3]) or '-'}; unexpected: {', '.join(extra[:3]) or '-'})")]
    return [(MODEL_FILE, f"{DAMAGED}: graph I/O {name!r} is {_describe(graph[name])}, {MANIFEST_NAME} records "
                         f"{_describe(recorded[name])}")
            for name in sorted(graph) if graph[name] != recorded[name]][:1]


def _describe(io: tuple[Any, list[Any]]) -> str:
    return f"{io[0]} [{', '.join(map(str, io[1]))}]"


def _check_external(folder: Path, listed: dict[str, Any], external: list[tuple[str, int, int]]) -> list[str]:
    """One line per external-data file that is unsafe, unlisted, or shorter than its tensors need."""
    ends: dict[str, int] = {}
    for location, offset, length in external:
        ends[location] = max(ends.get(location, 0), offset + length)
    problems = []
    for location, end in ends.items():
        name = location.replace("\\", "/")
        if artifact_guard.file_problem(folder, location, "external data file"):
            continue  # artifact_guard.check_content reports it (outside, a link out, not a regular file)
        if name not in listed:
            problems.append(f"{DAMAGED}: external data file {name!r} is not listed in {MANIFEST_NAME}")
        elif end > (_size(folder / name) or 0):
            problems.append(f"{DAMAGED}: tensors need {end} bytes of {name}, which has {_size(folder / name) or 0}")
    return problems


# -- the stamp cache -----------------------------------------------------------------------------------------

def stamp_path(folder: Path) -> Path | None:
    """Where the stamp of `folder` lives; None when no cache folder can be named (no HOME)."""
    try:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        key = hashlib.sha256(str(Path(folder).resolve()).encode("utf-8")).hexdigest()
    except (OSError, RuntimeError, KeyError):
        return None
    return base / "phi3-edge" / "stamps" / f"{key}.json"


def _fingerprint(folder: Path) -> dict[str, list[int]]:
    """{name: [size, mtime_ns, inode, ctime_ns]} of every file in the folder, manifest.json included."""
    prints = {}
    for name in [*folder_names(folder), MANIFEST_NAME]:
        try:
            stat = (folder / name).stat()
        except OSError:
            continue
        prints[name] = [stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns]
    return prints


def _stamp_matches(folder: Path, manifest: dict[str, Any]) -> bool:
    """The stamp vouches for every file: same stat now, and the sha256 it checked is the manifest's."""
    path = stamp_path(folder)
    try:
        stamp = json.loads(path.read_text(encoding="utf-8")) if path is not None else None
    except (OSError, ValueError, RecursionError):
        return False  # no stamp yet, or a damaged one: hash again
    if not isinstance(stamp, dict) or stamp.get("version") != STAMP_VERSION \
            or stamp.get("folder") != str(folder.resolve()) or not isinstance(stamp.get("files"), dict):
        return False
    stamped, now = stamp["files"], _fingerprint(folder)
    if set(stamped) != set(now) or set(manifest["files"]) | {MANIFEST_NAME} != set(now):
        return False
    for name, prints in now.items():
        entry = manifest["files"].get(name)
        recorded = entry.get("sha256") if isinstance(entry, dict) else None  # manifest.json: its stat alone
        if stamped[name] != [*prints, recorded]:
            return False
    return True


def _write_stamp(folder: Path, fingerprint: dict[str, list[int]], files: tuple[FileStatus, ...]) -> None:
    """Best effort: a device with a read-only home simply hashes on every load."""
    path = stamp_path(folder)
    if path is None:
        return
    hashes: dict[str, str | None] = {status.name: status.sha256 for status in files}
    prints = {name: [*values, hashes.get(name)] for name, values in fingerprint.items()}
    stamp = {"version": STAMP_VERSION, "folder": str(folder.resolve()), "files": prints}
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps(stamp), encoding="utf-8")
        os.replace(temporary, path)  # readers see the old stamp or the new one, never half a file
    except OSError:
        try:
            temporary.unlink(missing_ok=True)
        except OSError:
            pass  # the cache folder itself is unusable: nothing was written

"""Atomic artifact folders: build in a hidden sibling, rename into place only when complete.

An interrupted export (error, Ctrl-C, full disk) never leaves a folder that looks finished: the partial
folder is deleted on the way out, and one left by a killed process (SIGKILL, power loss) is swept by the
next export to the same place once its pid is gone. We only ever replace folders that carry our manifest.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from phi3_edge.errors import ArtifactError
from phi3_edge.manifest import is_artifact

_PARTIAL = "partial"  # .{name}.partial-<pid>-<random>: being written
_TRASH = "trash"  # .{name}.trash-<pid>-<random>: the replaced artifact, between the two renames


@contextmanager
def staged_artifact(output: Path, *, force: bool) -> Iterator[Path]:
    """Yield an empty temporary folder; on normal exit it becomes `output`, on any exception it is deleted."""
    output = Path(output)
    _check_replaceable(output, force)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(output)
        staging = _sibling(output, _PARTIAL)
        staging.mkdir()
    except OSError as exc:  # cannot even create the staging folder: a clean one-liner about the output
        raise ArtifactError(f"cannot prepare the output folder: {exc.strerror or exc}", output) from exc
    try:
        yield staging
        _check_replaceable(output, force)  # someone may have created it while we were exporting
        _fsync_tree(staging)
        _move_into_place(staging, output)
    except BaseException as exc:  # KeyboardInterrupt too: never leave a partial folder behind
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise _disk_full(exc, output) from exc
        raise


def sweep_stale(output: Path) -> list[Path]:
    """Delete partial/trash siblings of `output` left by processes that no longer run; returns what went."""
    removed = []
    for kind in (_PARTIAL, _TRASH):
        for path in Path(output).parent.glob(f".{Path(output).name}.{kind}-*"):
            pid = _pid_of(path, kind)
            if pid is not None and not _alive(pid):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def _check_replaceable(output: Path, force: bool) -> None:
    if not output.exists() and not output.is_symlink():
        return
    if output.is_dir() and not output.is_symlink() and not any(output.iterdir()):
        return  # an empty folder holds nothing to lose
    if not output.is_dir() or output.is_symlink() or not is_artifact(output):
        raise ArtifactError("exists and is not a phi3-edge artifact; refusing to overwrite", output)
    if not force:
        raise ArtifactError("already exists; pass --force to replace it", output)


def _move_into_place(staging: Path, output: Path) -> None:
    if output.is_dir() and not any(output.iterdir()):
        output.rmdir()
    if not output.exists():
        os.rename(staging, output)
        _fsync_dir(output.parent)
        return
    # Two renames: there is a moment with no `output`, but never one with a mixed or partial `output`.
    trash = _sibling(output, _TRASH)
    os.rename(output, trash)
    try:
        os.rename(staging, output)
    except BaseException:
        os.rename(trash, output)  # put the old artifact back rather than leave nothing
        raise
    _fsync_dir(output.parent)
    shutil.rmtree(trash, ignore_errors=True)


def _sibling(output: Path, kind: str) -> Path:
    return output.parent / f".{output.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def _pid_of(path: Path, kind: str) -> int | None:
    # The name after ".{name}.{kind}-" is "<pid>-<random>"; anything else is not ours to delete.
    tail = path.name.rsplit(f".{kind}-", 1)[-1]
    pid, _, rest = tail.partition("-")
    return int(pid) if pid.isdigit() and rest else None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return True  # cannot tell (e.g. a platform without kill): keep the folder
    return True


def _fsync_tree(folder: Path) -> None:
    """Flush file contents and directory entries so the rename never publishes data still in cache."""
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        elif path.is_dir():
            _fsync_dir(path)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # Windows cannot open directories; its renames are durable enough for us
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the file fsyncs above still happened
    finally:
        os.close(fd)


def _disk_full(exc: OSError, output: Path) -> ArtifactError:
    # Other OSErrors propagate unchanged: they are bugs or environment problems whose traceback matters.
    name = Path(exc.filename).name if exc.filename else output.name
    return ArtifactError(f"disk full while writing {name}; the partial export was removed", output)

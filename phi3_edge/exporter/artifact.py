"""Atomic artifact folders: build in a hidden sibling, rename into place only when complete.

An interrupted export (error, Ctrl-C, full disk) never leaves a folder that looks finished: the partial
folder is deleted on the way out, and one left by a killed process (SIGKILL, power loss) is swept by the
next export to the same place once its pid is gone. We only ever replace folders that carry our manifest.

Replacing an artifact (--force) swaps old and new in one renameat2(RENAME_EXCHANGE) call where the OS
offers it (Linux), so `output` is the old or the new artifact at every instant, even under SIGKILL. Elsewhere
two renames leave a moment with no `output`; the old artifact then waits in a trash sibling, and the next
export puts it back if the process died in between.

An export reports the points it passes to an optional `on_stage` callback (STAGES, in order; the caller
injects it): tests/exporter/test_atomic.py pauses a real `phi3-edge export` at one and kills it there.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import secrets
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from phi3_edge.errors import ArtifactError
from phi3_edge.manifest import MANIFEST_NAME, is_artifact, read_manifest

_PARTIAL = "partial"  # .{name}.partial-<pid>-<random>: being written
_TRASH = "trash"  # .{name}.trash-<pid>-<random>: the replaced artifact, between the two renames
# Write failures that mean "no room": a full disk, a quota, or a file size limit (RLIMIT_FSIZE, FAT32's 4 GiB).
_NO_ROOM = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EFBIG: "file too large"}

StageCallback = Callable[[str], None]  # called with each stage name as the export passes it
# staged: empty staging folder made; headers: checkpoint headers read (WeightStore); weights: first tensor in
# model.onnx.data (TensorWriter); complete: staging folder filled; swapped / between-renames: replacing --force.
STAGES = ("staged", "headers", "weights", "complete", "swapped", "between-renames")


@contextmanager
def staged_artifact(output: Path, *, force: bool, on_stage: StageCallback | None = None,
                    protected: Sequence[Path] = ()) -> Iterator[Path]:
    """Yield an empty temporary folder; on normal exit it becomes `output`, on any exception it is deleted.

    The whole export holds an exclusive lock on a file named after `output` (flock: released by the kernel
    when the process dies; see _lock_path), so the replaceability check and the swap are atomic together: a
    second export to the same `output` fails at once instead of replacing the first. `protected` folders (the --model
    checkpoint) are never replaced. SIGTERM is handled like Ctrl-C while the export runs.
    """
    output = Path(output)
    stage = on_stage or _no_stage
    with _output_lock(output), _sigterm_as_exit():
        try:
            if output.parent.is_dir():  # sweep first: it may put back an artifact a killed --force run displaced
                sweep_stale(output)
            _check_replaceable(output, force, protected)
            staging = _sibling(output, _PARTIAL)
            staging.mkdir()
        except OSError as exc:  # cannot even create the staging folder: a clean one-liner about the output
            raise ArtifactError(f"cannot prepare the output folder: {exc.strerror or exc}", output) from exc
        yield from _publish(staging, output, force, stage, protected)


def _publish(staging: Path, output: Path, force: bool, stage: StageCallback,
             protected: Sequence[Path]) -> Iterator[Path]:
    try:
        stage("staged")
        yield staging
        stage("complete")
        _check_replaceable(output, force, protected)  # a non-phi3-edge writer may have created it meanwhile
        _fsync_tree(staging)
        _move_into_place(staging, output, stage)
    except BaseException as exc:  # KeyboardInterrupt too: never leave a partial folder behind
        shutil.rmtree(staging, ignore_errors=True)
        no_room = _no_room_error(exc)
        if no_room is not None:
            raise _disk_full(*no_room, output) from exc
        raise


def _no_stage(stage: str) -> None:
    pass


def sweep_stale(output: Path) -> list[Path]:
    """Delete partial/trash siblings of `output` left by processes that no longer run; returns what went.

    A trash sibling holding our artifact while `output` is missing is the old artifact of a replace that was
    killed between its two renames: it is renamed back to `output` instead (and not listed).
    """
    output = Path(output)
    removed = []
    for kind in (_PARTIAL, _TRASH):
        for path in sorted(output.parent.glob(f".{output.name}.{kind}-*")):
            pid = _pid_of(path, kind)
            if pid is None or _alive(pid):
                continue
            if kind == _TRASH and not output.exists() and not output.is_symlink() and is_artifact(path):
                os.rename(path, output)
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _check_replaceable(output: Path, force: bool, protected: Sequence[Path] = ()) -> None:
    if any(_same_or_inside(path, output) for path in protected):
        raise ArtifactError("is (or holds) the checkpoint being exported; refusing to overwrite it", output)
    if not output.exists() and not output.is_symlink():
        return
    if output.is_dir() and not output.is_symlink() and not any(output.iterdir()):
        return  # an empty folder holds nothing to lose
    if not output.is_dir() or output.is_symlink() or not is_artifact(output):
        raise ArtifactError("exists and is not a phi3-edge artifact; refusing to overwrite", output)
    if not force:
        raise ArtifactError("already exists; pass --force to replace it", output)
    extra = _unlisted(output)
    if extra:  # a user's own file inside an old artifact: --force would delete it with the folder
        raise ArtifactError(f"holds {extra[0]!r}, which its manifest.json does not list; refusing to replace it "
                            "(move your files out first)", output)


def _same_or_inside(protected: Path, output: Path) -> bool:
    try:
        inner, outer = Path(protected).resolve(), output.resolve()
    except (OSError, RuntimeError):
        return True  # cannot tell: do not risk the checkpoint
    return inner == outer or inner.is_relative_to(outer)


def _unlisted(folder: Path) -> list[str]:
    """Entries under `folder` (links and folders included) that manifest.json does not account for."""
    listed = set(read_manifest(folder)["files"]) | {MANIFEST_NAME}
    found = []
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_symlink() or not (path.is_dir() or name in listed):
            found.append(name)
        elif path.is_dir() and not any(entry.startswith(name + "/") for entry in listed):
            found.append(name + "/")
    return found


@contextmanager
def _output_lock(output: Path) -> Iterator[None]:
    """Hold `.{name}.lock` beside `output` exclusively; fail at once if another export holds it."""
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArtifactError(f"cannot prepare the output folder: {exc.strerror or exc}", output) from exc
    lock = _lock_path(output)
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ArtifactError(f"cannot create the lock file: {exc.strerror or exc}", lock) from exc
        if not _try_lock(fd):
            os.close(fd)
            raise ArtifactError("another export to this folder is running; try again when it has finished", output)
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed the file we locked: lock the new one
    try:
        yield
    finally:
        try:
            os.unlink(lock)  # while still held: a waiter that opened the old file retries on the new one
        except OSError:
            pass
        os.close(fd)


def _lock_path(output: Path) -> Path:
    """In the per-user cache (a SIGKILLed export leaves no stray file beside --output), keyed by the output's
    absolute path; beside the output when no cache folder is usable."""
    key = hashlib.sha256(str(output.resolve()).encode("utf-8")).hexdigest()
    try:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "phi3-edge" / "locks"
        base.mkdir(parents=True, exist_ok=True)
        if os.access(base, os.W_OK):
            return base / f"{key}.lock"
    except (OSError, RuntimeError, KeyError):
        pass
    return output.parent / f".{output.name}.lock"


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows: msvcrt locks a byte range, enough for one writer at a time
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM (timeout, docker stop, CI cancel) raises SystemExit(143) here, so the staging folder is removed
    on the way out exactly as for Ctrl-C. Only the main thread may set handlers; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        yield
        return

    def terminate(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _move_into_place(staging: Path, output: Path, stage: StageCallback) -> None:
    if output.is_dir() and not any(output.iterdir()):
        output.rmdir()
    if not output.exists():
        os.rename(staging, output)
        _fsync_dir(output.parent)
        return
    if _exchange(staging, output):  # one atomic swap: `staging` now holds the old artifact
        _fsync_dir(output.parent)
        stage("swapped")
        shutil.rmtree(staging, ignore_errors=True)  # if killed here, sweep_stale removes it next time
        return
    # Two renames: there is a moment with no `output`, but never one with a mixed or partial `output`.
    trash = _sibling(output, _TRASH)
    os.rename(output, trash)
    try:
        stage("between-renames")
        os.rename(staging, output)
    except BaseException:
        os.rename(trash, output)  # put the old artifact back rather than leave nothing
        raise
    _fsync_dir(output.parent)
    shutil.rmtree(trash, ignore_errors=True)


def _exchange(first: Path, second: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False where the OS or filesystem cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # kernel or filesystem without the flag
        return False
    raise OSError(code, os.strerror(code), str(second))


_AT_FDCWD = -100  # <fcntl.h>: paths relative to the current directory
_RENAME_EXCHANGE = 2  # <linux/fs.h>


def _renameat2() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28, musl >= 1.2.2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


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


def _no_room_error(exc: BaseException) -> tuple[OSError, str | None] | None:
    """(the out-of-space OSError behind `exc`, the file being written), also when a writer wrapped the
    OSError in an ArtifactError `from None` (its __context__ still holds it)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    path = None
    while current is not None and id(current) not in seen:
        path = path or getattr(current, "path", None)  # a Phi3EdgeError names its file
        if isinstance(current, OSError) and current.errno in _NO_ROOM:
            return current, current.filename or path
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _disk_full(exc: OSError, filename: str | None, output: Path) -> ArtifactError:
    # Other OSErrors propagate unchanged: they are bugs or environment problems whose traceback matters.
    name = Path(filename).name if filename else output.name
    reason = _NO_ROOM[exc.errno]  # type: ignore[index]
    return ArtifactError(f"{reason} while writing {name} ({exc.strerror or exc}); the partial export was removed",
                         output)

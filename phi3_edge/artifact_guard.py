"""An artifact is untrusted input: what in it may name a file, load code or write somewhere, checked before loading.

Run by `verify` (as report rows) and by every load (integrity.check_before_load), with or without --no-verify:
hashes prove a folder is what its manifest says, but the manifest is not signed, so an attacker re-hashes
what he changed. These checks judge the content itself:
  - every path the artifact names (genai_config.json's filenames, model.onnx's external-data locations, the
    tokenizer files) must be a relative name that resolves, links followed, to a regular file inside the
    folder: absolute paths, `..`, links out, device files and FIFOs (an open() on a FIFO blocks forever)
    are refused;
  - genai_config.json options that load native code or write files (session_options.custom_ops_library,
    enable_profiling, ep_context_*, config_entries, provider options naming a path or a library) are refused
    unless the caller allows them explicitly (allow_unsafe_config; `--allow-unsafe-config`);
  - the JSON files the runtime parses are bounded in size and nesting (a 100k-deep list is a RecursionError
    in Python's json, a traceback instead of a line).
Stdlib only: the runtime imports it.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from phi3_edge import io_spec
from phi3_edge.artifact_contract import GENAI_CONFIG_FILE as GENAI_CONFIG
from phi3_edge.artifact_contract import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE
from phi3_edge.onnx_wire import ORT_MEMORY_TAG, WireError, read_graph_io

TOKENIZER_FILES = (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, "special_tokens_map.json", "generation_config.json",
                   "added_tokens.json")
MAX_JSON_BYTES = 256 * 2**20  # tokenizer.json of a 256k vocabulary is ~20 MB; genai_config.json is ~2 KB
MAX_JSON_DEPTH = 64  # ours nest 5 deep, tokenizer.json 6; Python's json recurses once per level
UNSAFE_FLAG = "--allow-unsafe-config"
# session_options keys onnxruntime-genai reads that neither load code nor write files.
SAFE_SESSION_OPTIONS = frozenset({
    "log_id", "log_severity_level", "intra_op_num_threads", "inter_op_num_threads", "enable_cpu_mem_arena",
    "enable_mem_pattern", "disable_cpu_ep_fallback", "disable_quant_qdq", "enable_quant_qdq_cleanup",
    "graph_optimization_level", "use_env_allocators", "provider_options",
})
# A provider option whose name or value looks like a file, a folder or a library (QNN's backend_path,
# TensorRT's engine cache path, OpenVINO's cache_dir, ...).
_FILE_LIKE_KEY = re.compile(r"path|file|dir|folder|librar|cache|dump|profil|\bso\b|dll", re.IGNORECASE)
_FILE_LIKE_VALUE = re.compile(r"[/\\]|\.(so|dll|dylib)(\.|$)", re.IGNORECASE)

Problem = tuple[str, str]  # (file name in the folder, one-line problem)


def plain_name(name: str) -> bool:
    """Relative, without `..`, on POSIX and Windows alike (an artifact may be built on one, run on the other)."""
    if not name or "\0" in name or name.startswith(("\\", "/")):
        return False
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or PureWindowsPath(name).drive:
        return False
    return ".." not in name.replace("\\", "/").split("/")


def file_problem(folder: Path, name: str, what: str) -> str | None:
    """None when `name` is a regular file inside `folder` (links followed); else why it is refused."""
    if name == ORT_MEMORY_TAG:  # onnxruntime would read raw process memory at `offset`
        return f"{what} {name!r} is onnxruntime's in-memory tag; refusing to load it"
    if not plain_name(name):
        return f"{what} {name[:80]!r} points outside the artifact folder; refusing to load it"
    path = Path(folder) / name.replace("\\", "/")
    try:
        resolved = path.resolve(strict=True)
        if not resolved.is_relative_to(Path(folder).resolve()):
            return f"{what} {name!r} is a link pointing outside the artifact folder; refusing to load it"
        mode = os.stat(resolved).st_mode
    except FileNotFoundError:
        return f"{what} {name!r} is missing"
    except (OSError, RuntimeError, ValueError) as exc:  # a link loop, a NUL byte, no permission
        return f"{what} {name!r} cannot be read ({getattr(exc, 'strerror', None) or exc})"
    if not stat.S_ISREG(mode):
        return f"{what} {name!r} is not a regular file (a device, FIFO or folder); refusing to open it"
    if not os.access(resolved, os.R_OK):
        return f"{what} {name!r} cannot be read (permission denied)"
    return None


def read_json(path: Path) -> Any:
    """Parse a JSON file the runtime needs; ValueError with a one-line reason for anything unusable."""
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise ValueError(f"is {size} bytes, more than the {MAX_JSON_BYTES} a config may have")
        text = path.read_bytes().decode("utf-8")
    except PermissionError:
        raise ValueError("cannot be read (permission denied)") from None
    except UnicodeDecodeError:
        raise ValueError("is not UTF-8 text") from None
    except OSError as exc:
        raise ValueError(f"cannot be read ({exc.strerror or exc})") from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"is not valid JSON ({str(exc)[:120] or 'nested too deeply'})") from None
    if _depth(data) > MAX_JSON_DEPTH:
        raise ValueError(f"nests deeper than {MAX_JSON_DEPTH} levels")
    return data


def _depth(data: Any) -> int:
    """Nesting depth, without recursion (our own walks over a config recurse once per level)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth)
            if deepest > MAX_JSON_DEPTH:
                return deepest
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def check_content(folder: Path, *, allow_unsafe_config: bool = False) -> list[Problem]:
    """Every refusal for the folder's content, empty when loadable."""
    folder = Path(folder)
    problems: list[Problem] = []
    for name in TOKENIZER_FILES:
        if (folder / name).exists() or (folder / name).is_symlink():
            problem = file_problem(folder, name, "tokenizer file")
            if problem is None and name.endswith(".json"):
                problem = _json_problem(folder / name)
            if problem:
                problems.append((name, problem))
    config = _genai_config(folder, problems)
    if config is None:
        return problems
    filenames = list(_filenames(config))
    for name in filenames:
        problem = file_problem(folder, name, f"{GENAI_CONFIG} filename")
        if problem:
            problems.append((GENAI_CONFIG, problem))
        elif name.endswith(".onnx"):
            problems += _graph_problems(folder, name, config)
    if not allow_unsafe_config:
        problems += [(GENAI_CONFIG, f"{option}: loads code or writes files; refusing it (pass {UNSAFE_FLAG} "
                                    "if you trust this artifact)") for option in unsafe_options(config)]
    return problems


def _json_problem(path: Path) -> str | None:
    try:
        read_json(path)
    except ValueError as exc:
        return str(exc)
    return None


def _genai_config(folder: Path, problems: list[Problem]) -> dict[str, Any] | None:
    path = folder / GENAI_CONFIG
    if not (path.exists() or path.is_symlink()):
        return None
    problem = file_problem(folder, GENAI_CONFIG, "config")
    if problem is None:
        try:
            config = read_json(path)
        except ValueError as exc:
            problem = str(exc)
        else:
            if isinstance(config, dict):
                return config
            problem = "is not a JSON object"
    problems.append((GENAI_CONFIG, problem))
    return None


def _filenames(config: Any) -> list[str]:
    """Every `filename` value in genai_config.json (decoder, embedding, vision, pipeline stages, ...)."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "filename" or key.endswith("_filename"):
                    found.append(value if isinstance(value, str) else repr(value))
                elif key != "session_options":
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(config)
    return found


def unsafe_options(config: dict[str, Any]) -> list[str]:
    """Dotted names of genai_config.json options that load code or write files."""
    found: list[str] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                here = f"{where}.{key}" if where else str(key)
                if key == "session_options":
                    found.extend(_session_unsafe(value, here))
                else:
                    walk(value, here)
        elif isinstance(node, list):
            for index, item in enumerate(node):
                walk(item, f"{where}[{index}]")

    walk(config, "")
    return found


def _session_unsafe(options: Any, where: str) -> list[str]:
    if not isinstance(options, dict):
        return []
    found = [f"{where}.{key}" for key in options if key not in SAFE_SESSION_OPTIONS]
    providers = options.get("provider_options")
    for index, provider in enumerate(providers if isinstance(providers, list) else []):
        for name, settings in (provider.items() if isinstance(provider, dict) else []):
            for key, value in (settings.items() if isinstance(settings, dict) else []):
                if _FILE_LIKE_KEY.search(str(key)) or _FILE_LIKE_VALUE.search(str(value)):
                    found.append(f"{where}.provider_options[{index}].{name}.{key}")
    return found


def _graph_problems(folder: Path, name: str, config: dict[str, Any]) -> list[Problem]:
    """External-data locations of the graph genai_config.json names (read as onnxruntime will read them), and
    the decoder shapes genai_config.json claims against the graph's declared I/O."""
    try:
        io, external = read_graph_io(folder / name)
    except (OSError, WireError) as exc:
        return [(name, f"not a readable ONNX model ({getattr(exc, 'strerror', None) or exc})")]
    problems = [(GENAI_CONFIG, p) for p in _shape_problems(io, config, name)]
    for location in sorted({location for location, _, _ in external}):
        what = "external data file" if plain_name(location) else "external data location"
        problem = file_problem(folder, location, what)
        if problem:
            problems.append((name, problem))
    return problems


def _shape_problems(io: dict[str, tuple[str, list[Any]]], config: dict[str, Any], graph: str) -> list[str]:
    """genai_config.json's layers / KV heads / head size / vocabulary against the graph (onnxruntime would
    otherwise fail mid-generation with a multi-line RuntimeError). Only the main decoder is compared."""
    model: dict[str, Any] = config["model"] if isinstance(config.get("model"), dict) else {}
    decoder: dict[str, Any] = model["decoder"] if isinstance(model.get("decoder"), dict) else {}
    if decoder.get("filename") != graph or io_spec.past_key(0) not in io:
        return []
    layers = 0
    while io_spec.past_key(layers) in io:
        layers += 1
    _, past = io[io_spec.past_key(0)]  # (B, Hkv, past, D)
    claims = [("num_hidden_layers", decoder.get("num_hidden_layers"), layers),
              ("num_key_value_heads", decoder.get("num_key_value_heads"), past[1] if len(past) == 4 else None),
              ("head_size", decoder.get("head_size"), past[3] if len(past) == 4 else None)]
    if io_spec.LOGITS in io and io[io_spec.LOGITS][1]:
        claims.append(("vocab_size", model.get("vocab_size"), io[io_spec.LOGITS][1][-1]))
    return [f"model.decoder {key} is {claimed!r} but {graph} has {actual}" if key != "vocab_size" else
            f"model.vocab_size is {claimed!r} but {graph}'s logits have {actual}"
            for key, claimed, actual in claims if isinstance(actual, int) and claimed != actual]

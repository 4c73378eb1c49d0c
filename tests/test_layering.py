"""The house's import rules, executable: every phi3_edge module's imports parsed (ast), checked per layer.

    cli (+ cli_*, chat_*) ─► api ─► {exporter, edge_runtime, evaluate, integrity, ...}
    exporter ─► {quantize, targets, io_spec, manifest, errors, artifact_contract, ...}   never the runtime side
    quantize ─► {targets, errors} + numpy                                              pure numpy, no graphs
    targets  ─► nothing of ours                                                        data
    edge_runtime ─► {io_spec, manifest, errors, artifact_contract, integrity, ...}     what a device installs

plus: no target or EP name literal outside targets/, and `import phi3_edge.edge_runtime` works with the
export-only packages (onnx, click, rich, huggingface_hub, gguf) made unimportable.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from phi3_edge.targets.table import TARGETS

PACKAGE = Path(__file__).resolve().parents[1] / "phi3_edge"
EXPORT_ONLY = ("onnx", "click", "rich", "huggingface_hub", "gguf")
NEVER = ("torch", "transformers")  # test-time references only


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of everything the module imports, at any depth (lazy imports count too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            found.add(base)
            # `from phi3_edge import io_spec` imports the submodule io_spec
            found |= {f"{base}.{alias.name}" for alias in node.names if base == "phi3_edge"}
    return found


MODULES: dict[str, set[str]] = {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _ours(imported: set[str]) -> set[str]:
    return {_layer(name) for name in imported if name.startswith("phi3_edge.")}


def _violations(layer: str, forbidden_ours: set[str], forbidden_third_party: tuple[str, ...] = ()) -> list[str]:
    bad = []
    for module, imported in MODULES.items():
        if _layer(module) != layer:
            continue
        for name in sorted(imported):
            top = name.split(".")[0]
            if (name.startswith("phi3_edge.") and _layer(name) in forbidden_ours) or top in forbidden_third_party:
                bad.append(f"{module} imports {name}")
    return bad


def test_modules_were_found() -> None:
    assert {"phi3_edge.cli", "phi3_edge.api", "phi3_edge.targets.table", "phi3_edge.edge_runtime"} <= set(MODULES)


def _front_end(layer: str) -> bool:
    """The command line: cli.py and its helpers (cli_output, cli_models, chat_io, chat_repl, ...)."""
    return layer.startswith(("cli", "chat_"))


def test_cli_calls_only_api() -> None:
    """cli -> api: the command line builds a request and calls phi3_edge.api, never a layer below it."""
    bad = sorted(f"{module} imports phi3_edge.{layer}" for module, imported in MODULES.items()
                 if _front_end(_layer(module)) for layer in _ours(imported)
                 if not (_front_end(layer) or layer in ("api", "errors")))
    assert not bad, bad


def test_nothing_below_imports_api_or_cli() -> None:
    below = {_layer(m) for m in MODULES} - {"api", ""} - {layer for layer in map(_layer, MODULES) if _front_end(layer)}
    front = {layer for layer in map(_layer, MODULES) if _front_end(layer)}
    bad = [v for layer in below for v in _violations(layer, {"api"} | front)]
    assert not bad, bad


def test_exporter_never_imports_the_runtime_side() -> None:
    """The gate and the runtime are injected by api; the exporter imports quantize, targets and the contracts."""
    bad = _violations("exporter", {"edge_runtime", "evaluate", "reference"}, NEVER)
    assert not bad, bad


def test_quantize_is_pure() -> None:
    """quantize/: numpy and the recipe as data; no exporter, no runtime, no onnx."""
    bad = _violations("quantize", {layer for layer in map(_layer, MODULES) if layer not in ("quantize", "targets",
                                                                                           "errors")},
                      (*EXPORT_ONLY, *NEVER, "onnxruntime"))
    assert not bad, bad


def test_targets_import_nothing_of_ours() -> None:
    bad = [f"{module} imports {name}" for module, imported in MODULES.items() if _layer(module) == "targets"
           for name in imported if name.startswith("phi3_edge") and _layer(name) != "targets"]
    assert not bad, bad


def test_edge_runtime_imports_no_export_side() -> None:
    bad = _violations("edge_runtime", {"exporter", "quantize", "targets", "evaluate", "reference"},
                      (*EXPORT_ONLY, *NEVER))
    assert not bad, bad


def test_no_package_module_imports_torch_or_transformers() -> None:
    bad = [f"{m} imports {n}" for m, imported in MODULES.items() for n in imported if n.split(".")[0] in NEVER]
    assert not bad, bad


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (allowed to name targets in prose)."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def test_no_target_or_ep_names_outside_targets() -> None:
    """`if ep == "cuda"` / `target == "cpu-int4"` belong in the table: no such literal anywhere else."""
    names = set(TARGETS) | {t.execution_provider for t in TARGETS.values()}
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if _layer(_module_name(path)) == "targets":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names
                    and id(node) not in docstrings):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.value!r}")
    assert not bad, bad


_BLOCKER = f"""
import sys
class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {EXPORT_ONLY + NEVER!r}:
            raise ImportError("blocked for the runtime-only install: " + name)
        return None
sys.meta_path.insert(0, _Blocked())
"""


@pytest.mark.parametrize("module", ["phi3_edge.edge_runtime", "phi3_edge.api"])
def test_runtime_import_closure_needs_no_export_packages(module: str) -> None:
    """What a device installs (the base install: onnxruntime, numpy, tokenizers, jinja2) imports the runtime;
    api imports its heavy layers inside the calls, so `api.load` is available there too."""
    code = _BLOCKER + f"""
import {module}
loaded = sorted(m for m in sys.modules if m.startswith(("phi3_edge.exporter.", "phi3_edge.evaluate")))
export_side = [m for m in loaded if m not in ("phi3_edge.exporter.request",)]
assert not export_side, export_side
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]

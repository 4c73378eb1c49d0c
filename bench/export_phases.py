"""Run one default `phi3_edge.api.export` and write where its time went (a child of bench/export_gate.py).

    python bench/export_phases.py CHECKPOINT TARGET OUTPUT PHASES.json [--no-fidelity]

Timers wrap a few functions of ours (looked up by name; a missing one is skipped, so the bench survives
refactors) and count *exclusive* time: a read inside a quantize call is read time, not quantize time. Reads
made while the accuracy gate runs are booked as "gate: read checkpoint".
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

_totals: dict[str, float] = defaultdict(float)
_stack: list[list[Any]] = []  # [label, start, child time]


def _timed(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        name = f"gate: {label}" if label != "gate" and any(f[0] == "gate" for f in _stack) else label
        frame = [name, time.perf_counter(), 0.0]
        _stack.append(frame)
        try:
            return fn(*args, **kwargs)
        finally:
            _stack.pop()
            spent = time.perf_counter() - frame[1]
            _totals[name] += spent - frame[2]
            if label == "gate":
                _totals["gate (inclusive)"] += spent
            if _stack:
                _stack[-1][2] += spent
    return wrapper


# (label, module, attribute path): the first import that works wins for each label/attribute pair.
PATCHES = [
    ("read checkpoint", "phi3_edge.exporter.weights", "WeightStore.read_rows"),
    ("read checkpoint", "phi3_edge.exporter.weights", "WeightStore.read_columns"),
    ("quantize", "phi3_edge.exporter.blocks.nbits", "NBitsLinear.quantize"),
    ("quantize", "phi3_edge.quantize.linear", "NBitsLinear.quantize"),
    ("write data file", "phi3_edge.exporter.tensor_writer", "TensorWriter._append"),
    ("save model.onnx", "onnx", "save_model"),
    ("gate", "phi3_edge.reference.fidelity", "compare_to_checkpoint"),
    ("gate", "phi3_edge.evaluate.gate", "measure_against_reference"),
    ("reference layers", "phi3_edge.reference.checkpoint_side", "CheckpointSide.run_layer"),
    ("candidate layers", "phi3_edge.reference.artifact_side", "ArtifactSide.run_layer"),
    ("streamed stats", "phi3_edge.reference.streamed", "TokenStats.update"),
    ("manifest hashes", "phi3_edge.manifest", "build_manifest"),
]


def install() -> list[str]:
    done = []
    for label, module_name, path in PATCHES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        owner: Any = module
        *parents, attr = path.split(".")
        for part in parents:
            owner = getattr(owner, part, None)
        if owner is None or not hasattr(owner, attr):
            continue
        setattr(owner, attr, _timed(label, getattr(owner, attr)))
        done.append(f"{module_name}.{path}")
    return done


def main() -> int:
    checkpoint, target, output, phases_path = sys.argv[1:5]
    fidelity = "--no-fidelity" not in sys.argv[5:]
    patched = install()
    from phi3_edge.api import export

    started = time.perf_counter()
    result = export(checkpoint, target=target, output=output, force=True, progress=False, fidelity=fidelity)
    wall = time.perf_counter() - started
    record = {"wall_s": wall, "phases": dict(_totals), "patched": patched,
              "fidelity": result.fidelity, "size_bytes": result.size_bytes}
    Path(phases_path).write_text(json.dumps(record, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

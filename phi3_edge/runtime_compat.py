"""The oldest onnxruntime / onnxruntime-genai that runs a graph, from the ops and attributes it uses.

    GraphFeatures (graph_features.py) ─► min_runtime() ─► MinRuntime(onnxruntime="1.22.0",
                                                                    onnxruntime_genai="0.8.0", reasons=(...))

Each REQUIREMENTS row names a graph feature, the first onnxruntime release that runs it on the CPU EP, and the
evidence: bench/min_runtime.py (every artifact of ours against ORT 1.17 .. 1.24, prefill logits compared with
the installed release) and the onnxruntime pull request that added it. onnxruntime-genai ships no kernels:
it loads the onnxruntime package, so its minimum is the oldest release built for (requiring) that onnxruntime
(GENAI_FOR_ORT, from each release's `Requires-Dist: onnxruntime>=...`).

Stdlib only: manifest.json records the result at export time and the runtime compares it with the installed
version before loading (check_installed), without importing the exporter.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from phi3_edge.graph_features import GraphFeatures, OpUse

MANIFEST_KEY = "min_runtime"
_UINT8 = 2  # TensorProto.DataType
_MS = "com.microsoft."
_VERSION = re.compile(r"^(\d+)(?:\.(\d+))?(?:\.(\d+))?")


@dataclass(frozen=True)
class Requirement:
    feature: str  # what the graph uses, as a reader says it
    onnxruntime: str  # the first release that runs it
    evidence: str
    applies: Callable[[OpUse], bool]


def _op(name: str, **attrs: int) -> Callable[[OpUse], bool]:
    def applies(use: OpUse) -> bool:
        return use.op == name and all(use.attr(key) == value for key, value in attrs.items())
    return applies


def _sliding_window(use: OpUse) -> bool:
    window = use.attr("local_window_size")
    return use.op == _MS + "GroupQueryAttention" and window is not None and window >= 0


def _table_with_bits(use: OpUse) -> bool:
    """GatherBlockQuantized reading a uint8 table through its `bits` attribute (the table shared with lm_head)."""
    return use.op == _MS + "GatherBlockQuantized" and use.attr("bits") is not None


# Ordered oldest first. "bench" = bench/min_runtime.py's table (refused below, ok from).
REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement("com.microsoft.MatMulNBits (4-bit, accuracy_level)", "1.17.0",
                "contrib op added in onnxruntime#17890 (first in 1.17.0)", _op(_MS + "MatMulNBits", bits=4)),
    Requirement("com.microsoft.GroupQueryAttention on CPU", "1.17.0",
                "CPU kernel first in 1.17.0", _op(_MS + "GroupQueryAttention")),
    Requirement("com.microsoft.GatherBlockQuantized (int4 table)", "1.20.0",
                "onnxruntime#21630 (Aug 2024, first in 1.20.0)",
                lambda use: use.op == _MS + "GatherBlockQuantized" and not _table_with_bits(use)),
    Requirement("com.microsoft.MatMulNBits with 8-bit weights", "1.22.0",
                "onnxruntime#24491 (x64 8-bit kernel, labelled release:1.22.0); bench: 1.21.1 refuses, 1.22.0 runs",
                _op(_MS + "MatMulNBits", bits=8)),
    Requirement("com.microsoft.GatherBlockQuantized with the `bits` attribute (uint8 table shared with lm_head)",
                "1.23.0", "bench: 1.22.1 refuses ('Unrecognized attribute: bits'), 1.23.0 runs; uint8 tables came "
                "with onnxruntime#24239", _table_with_bits),
    Requirement("GroupQueryAttention local_window_size counting the current token (transformers' sliding "
                "window)", "1.24.1",
                "onnxruntime#25927 (Sep 2025) made the window include the new token; bench: on a sequence longer "
                "than the window 1.23.2 differs from transformers (max |logit diff| 7.05), 1.24.1 matches",
                _sliding_window),
)
# IR version / default-domain opset -> the first onnxruntime that loads it (ORT's compatibility table).
IR_VERSIONS = {7: "1.10.0", 8: "1.11.0", 9: "1.15.0", 10: "1.18.0"}
ONNX_OPSETS = {15: "1.10.0", 16: "1.11.0", 17: "1.13.0", 18: "1.14.0", 19: "1.15.0", 20: "1.17.0", 21: "1.18.0"}
# onnxruntime-genai release -> the onnxruntime it requires (Requires-Dist), oldest first.
GENAI_FOR_ORT: tuple[tuple[str, str], ...] = (
    ("0.4.0", "1.19.0"), ("0.5.0", "1.20.0"), ("0.5.2", "1.20.1"), ("0.7.0", "1.21.0"), ("0.8.0", "1.22.0"),
    ("0.10.0", "1.23.0"), ("0.11.0", "1.23.2"), ("0.12.0", "1.24.1"), ("0.13.0", "1.24.4"), ("0.14.0", "1.26.0"),
    ("0.15.0", "1.28.0"), ("0.16.0", "1.30.0"), ("0.18.0", "1.31.0"),
)


@dataclass(frozen=True)
class MinRuntime:
    onnxruntime: str
    onnxruntime_genai: str | None  # None: no onnxruntime-genai release in the table requires that onnxruntime
    reasons: tuple[str, ...]  # the features that set the onnxruntime minimum (the highest rows)

    def to_json(self) -> dict[str, Any]:
        return {"onnxruntime": self.onnxruntime, "onnxruntime-genai": self.onnxruntime_genai,
                "reasons": list(self.reasons)}


class UnknownFeature(ValueError):
    """The graph uses an IR version or opset newer than the table knows: no minimum can be claimed."""


def min_runtime(features: GraphFeatures) -> MinRuntime:
    found: list[tuple[str, str]] = []  # (version, why)
    ir = _lookup(IR_VERSIONS, features.ir_version, "IR version")
    found.append((ir, f"ONNX IR version {features.ir_version}"))
    opset = features.opset("")
    if opset is not None:
        found.append((_lookup(ONNX_OPSETS, opset, "ONNX opset"), f"ONNX opset {opset}"))
    for requirement in REQUIREMENTS:
        if any(requirement.applies(use) for use in features.uses):
            found.append((requirement.onnxruntime, requirement.feature))
    best = max(parse_version(version) for version, _ in found)
    reasons = tuple(why for version, why in found if parse_version(version) == best)
    ort = format_version(best)
    return MinRuntime(ort, genai_for(ort), reasons)


def genai_for(ort: str) -> str | None:
    """The oldest onnxruntime-genai release built for (requiring) at least onnxruntime `ort`."""
    wanted = parse_version(ort)
    return next((genai for genai, needs in GENAI_FOR_ORT if parse_version(needs) >= wanted), None)


def check_installed(record: dict[str, Any], installed: dict[str, str | None]) -> str | None:
    """A one-line problem when an installed runtime is older than the manifest's min_runtime record, else None.

    `installed` maps "onnxruntime" / "onnxruntime-genai" to the installed version (None: not in use)."""
    for package in ("onnxruntime", "onnxruntime-genai"):
        needed, have = record.get(package), installed.get(package)
        if not isinstance(needed, str) or have is None:
            continue
        if parse_version(have) < parse_version(needed):
            why = "; ".join(str(r) for r in record.get("reasons", [])[:2]) if package == "onnxruntime" else ""
            return (f"needs {package} >= {needed}, installed {have}" + (f" ({why})" if why else "")
                    + f": pip install -U '{package}>={needed}'")
    return None


def parse_version(text: str) -> tuple[int, int, int]:
    """'1.22.1' -> (1, 22, 1); '1.23.0.dev20250101', '1.22' and '1.24.0rc1' parse by their leading numbers."""
    match = _VERSION.match(text.strip())
    if match is None:
        raise ValueError(f"not a version number: {text!r}")
    major, minor, patch = (int(group) if group else 0 for group in match.groups())
    return major, minor, patch


def format_version(version: tuple[int, int, int]) -> str:
    return ".".join(str(part) for part in version)


def _lookup(table: dict[int, str], value: int, what: str) -> str:
    if value in table:
        return table[value]
    if value < min(table):
        return table[min(table)]
    raise UnknownFeature(f"{what} {value} is newer than phi3_edge/runtime_compat.py knows")

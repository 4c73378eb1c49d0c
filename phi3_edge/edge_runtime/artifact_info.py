"""`phi3-edge inspect`: what is in an artifact folder, read without loading the weights.

The graph's op census and declared I/O come from the protobuf (census.py), file sizes from the folder, and
the build record from manifest.json. A folder without a manifest (not exported by us) is still inspectable:
the manifest part is then empty.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phi3_edge import io_spec
from phi3_edge.artifact_contract import ORT_FILE
from phi3_edge.edge_runtime.census import GraphInfo, TensorInfo, read_graph_info
from phi3_edge.edge_runtime.decoder_config import read_decoder_config
from phi3_edge.errors import ArtifactError
from phi3_edge.integrity import check_before_load
from phi3_edge.manifest import MANIFEST_NAME, read_manifest


@dataclass(frozen=True)
class ArtifactInfo:
    folder: Path
    graph: GraphInfo
    files: list[tuple[str, int]]  # (name relative to the folder, bytes), largest first
    manifest: dict[str, Any] = field(default_factory=dict)  # summary_rows() picks the fields to show

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

    def summary_rows(self) -> list[tuple[str, str]]:
        """Manifest summary: source, target, recipe and tool versions, one (key, value) per row."""
        if not self.manifest:
            return [("manifest", f"none ({MANIFEST_NAME} missing or not ours)")]
        source = self.manifest.get("source") or {}
        target = self.manifest.get("target") or {}
        rows = [("source", str(source.get("source", "?"))), ("created", str(self.manifest.get("created", "?")))]
        if source.get("revision"):
            rows.append(("revision", str(source["revision"])))
        rows.append(("target", f"{target.get('name', '?')} ({target.get('execution_provider', '?')})"))
        recipe = self.manifest.get("recipe") or {}
        rows.append(("recipe", ", ".join(f"{k}={v}" for k, v in recipe.items() if v is not None)))
        needs = self.manifest.get("min_runtime")
        if isinstance(needs, dict):  # the oldest runtimes that run the graph (phi3_edge.runtime_compat)
            genai = f", onnxruntime-genai >= {needs['onnxruntime-genai']}" if needs.get("onnxruntime-genai") else ""
            rows.append(("runtime", f"onnxruntime >= {needs.get('onnxruntime')}{genai}"))
        tools = self.manifest.get("tools") or {}
        rows.append(("tools", ", ".join(f"{k} {v}" for k, v in tools.items() if v is not None)))
        return rows


def inspect_artifact(folder: str | Path) -> ArtifactInfo:
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError("artifact folder not found", folder)
    # Paths the artifact names must stay inside it (inspect runs nothing, so unsafe options are only listed).
    check_before_load(folder, verify=False, allow_unsafe_config=True)
    config = read_decoder_config(folder)
    model_path = folder / config.model_file
    if not model_path.is_file():
        raise ArtifactError("not found (the decoder graph genai_config.json names)", model_path)
    files = sorted(((p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*") if p.is_file()),
                   key=lambda item: (-item[1], item[0]))
    try:
        manifest = read_manifest(folder)
    except ArtifactError:
        manifest = {}
    ort_format = model_path.name == ORT_FILE
    graph = _ort_format_info(manifest, config.num_layers) if ort_format else read_graph_info(model_path)
    return ArtifactInfo(folder, graph, files, manifest)


def _ort_format_info(manifest: dict[str, Any], num_layers: int) -> GraphInfo:
    """An ORT-format graph (`--mobile-files ort`) is a flatbuffer, not the protobuf census.py reads: no op
    census (required_operators.config lists its ops), the declared I/O from manifest.json's io_signature."""
    outputs = {io_spec.LOGITS} | {name for i in range(num_layers)
                                  for name in (io_spec.present_key(i), io_spec.present_value(i))}
    signature = manifest.get("io_signature")
    tensors = [TensorInfo(str(s.get("name")), str(s.get("dtype")), tuple(s.get("shape") or ()))
               for s in (signature if isinstance(signature, list) else []) if isinstance(s, dict)]
    optional = frozenset(spec.name for spec, _ in io_spec.optional_inputs()) & {t.name for t in tensors}
    return GraphInfo(Counter(), tuple(t for t in tensors if t.name not in outputs),
                     tuple(t for t in tensors if t.name in outputs), optional_inputs=optional)

"""What Python users import: `export()` builds an artifact folder, `load()` opens one for generation.

Heavy modules are imported inside the functions: `load()` on a device must not pull in the exporter
(onnx, huggingface_hub, rich), and `export()` must not pull in the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phi3_edge.errors import Phi3EdgeError

if TYPE_CHECKING:
    from phi3_edge.edge_runtime import EdgeModel


@dataclass(frozen=True)
class ExportResult:
    output: Path
    target: str
    size_bytes: int
    nodes: int
    seconds: float
    fused_rotary: bool

    def summary_rows(self) -> list[tuple[str, str]]:
        return [
            ("artifact", str(self.output)),
            ("target", self.target),
            ("size", f"{self.size_bytes / 2**20:.1f} MiB"),
            ("graph nodes", str(self.nodes)),
            ("rotary", "fused into GroupQueryAttention" if self.fused_rotary else "separate RotaryEmbedding"),
            ("time", f"{self.seconds:.1f} s"),
        ]


def export(model: str, target: str = "cpu-fp32", output: str | Path | None = None, *, force: bool = False,
           require_tokenizer: bool = True, progress: bool | None = None, quant_algo: str = "rtn") -> ExportResult:
    """Export a Phi-3 checkpoint (local folder, hub id, short name or "demo") to an artifact folder."""
    import time

    from phi3_edge.exporter.artifact import staged_artifact
    from phi3_edge.exporter.build import export_graph
    from phi3_edge.exporter.checkpoint import resolve_checkpoint
    from phi3_edge.exporter.config import load_spec
    from phi3_edge.exporter.progress import export_progress
    from phi3_edge.targets.table import get_target

    from phi3_edge.quantize import QUANT_ALGOS

    started = time.perf_counter()
    try:
        chosen = get_target(target)
    except KeyError as exc:
        raise Phi3EdgeError(str(exc.args[0])) from None
    if quant_algo not in QUANT_ALGOS:
        raise Phi3EdgeError(f"unknown quantization algorithm {quant_algo!r}; valid: {', '.join(QUANT_ALGOS)}")
    if output is None:
        raise Phi3EdgeError("an output folder is required (--output)")
    output = Path(output)
    checkpoint = resolve_checkpoint(model, require_tokenizer=require_tokenizer)
    spec = load_spec(checkpoint.config_path)
    total_bytes = sum(path.stat().st_size for path in checkpoint.weight_files)
    with staged_artifact(output, force=force) as folder:
        with export_progress(total_bytes, spec.num_layers, progress) as hooks:
            stats = export_graph(spec, chosen, checkpoint.weight_files, folder, quant_algo=quant_algo,
                                 on_tensor=hooks.on_tensor, on_layer=hooks.on_layer)
        _write_companions(folder, checkpoint, spec, chosen, stats, quant_algo)
    size = sum(path.stat().st_size for path in output.iterdir() if path.is_file())
    return ExportResult(output, chosen.name, size, stats.nodes, time.perf_counter() - started, stats.fused_rotary)


def _write_companions(folder: Path, checkpoint: Any, spec: Any, target: Any, stats: Any, quant_algo: str) -> None:
    """Tokenizer files, genai_config.json and, last, manifest.json (it hashes everything else)."""
    from dataclasses import asdict

    from phi3_edge import io_spec
    from phi3_edge.exporter.genai_config import copy_tokenizer_files, write_genai_config
    from phi3_edge.manifest import build_manifest, source_record, write_manifest

    copy_tokenizer_files(checkpoint.tokenizer_files, folder)
    write_genai_config(folder, spec, target)
    signature = [asdict(s) for s in io_spec.decoder_inputs(spec.num_layers, spec.num_kv_heads, spec.head_dim,
                                                             target.io_dtype)]
    signature += [asdict(s) for s in io_spec.decoder_outputs(spec.num_layers, spec.num_kv_heads, spec.head_dim,
                                                               spec.vocab_size, target.io_dtype)]
    source = source_record(checkpoint.source, checkpoint.revision, checkpoint.root, checkpoint.all_files())
    recipe = {"weights": target.weight_format, "io_dtype": target.io_dtype, "fused_rotary": stats.fused_rotary,
              "graph_nodes": stats.nodes, "bits": target.bits, "block_size": target.block_size,
              "accuracy_level": target.accuracy_level,
              "quant_algo": quant_algo if target.bits is not None else None}
    manifest = build_manifest(source=source, spec_json=spec.to_json(), target=asdict(target), recipe=recipe,
                              io_signature=signature, artifact_dir=folder)
    write_manifest(folder, manifest)


def load(folder: str | Path, **options: Any) -> "EdgeModel":
    """Open an artifact folder for generation (onnxruntime + tokenizers only)."""
    from phi3_edge.edge_runtime import EdgeModel

    return EdgeModel.load(Path(folder), **options)

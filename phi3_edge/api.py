"""What Python users import: `export()` builds an artifact folder, `load()` opens one for generation.

Heavy modules are imported inside the functions: `load()` on a device must not pull in the exporter
(onnx, huggingface_hub, rich), and `export()` must not pull in the runtime.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phi3_edge.errors import Phi3EdgeError

if TYPE_CHECKING:
    from phi3_edge.edge_runtime import EdgeModel
    from phi3_edge.evaluate import FidelityReport


@dataclass(frozen=True)
class ExportResult:
    output: Path
    target: str
    size_bytes: int
    nodes: int
    seconds: float
    fused_rotary: bool
    fidelity: dict[str, Any] | None = None  # manifest.json's "fidelity": KL / top-1 vs cpu-fp32, or None
    ort_format: str | None = None  # mobile targets: model.ort written, or skipped and why

    def summary_rows(self) -> list[tuple[str, str]]:
        rows = [
            ("artifact", str(self.output)),
            ("target", self.target),
            ("size", f"{self.size_bytes / 2**20:.1f} MiB"),
            ("graph nodes", str(self.nodes)),
            ("rotary", "fused into GroupQueryAttention" if self.fused_rotary else "separate RotaryEmbedding"),
            ("time", f"{self.seconds:.1f} s"),
        ] + ([("ORT format", self.ort_format)] if self.ort_format else [])
        if self.fidelity is not None:
            rows.append(("fidelity vs cpu-fp32",
                         f"KL {self.fidelity['kl']:.3g}, top-1 agreement {self.fidelity['top1']:.1%}"))
        return rows


def export(model: str, target: str = "cpu-fp32", output: str | Path | None = None, *, force: bool = False,
           require_tokenizer: bool = True, progress: bool | None = None, quant_algo: str = "rtn",
           mixed_precision: bool = False,
           lm_head: str | None = None, embeddings: str | None = None, max_kl: float | None = None,
           fidelity: bool = True) -> ExportResult:
    """Export a Phi-3 checkpoint (local folder, hub id, short name or "demo") to an artifact folder.

    A quantized export is then measured against a cpu-fp32 export of the same checkpoint (mean next-token KL
    and top-1 agreement on built-in prompts, recorded as manifest.json's "fidelity"); `fidelity=False` skips
    that (recorded as null). With `max_kl`, a KL above it fails the export and leaves nothing at `output`.
    """
    import time

    from phi3_edge.exporter.artifact import staged_artifact
    from phi3_edge.exporter.build import export_graph
    from phi3_edge.exporter.checkpoint import resolve_checkpoint
    from phi3_edge.exporter.config import load_spec
    from phi3_edge.exporter.heads import HeadOptions
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
    quantized = chosen.bits is not None or lm_head in ("int8", "int4") or embeddings == "quantized"
    gate = _accuracy_gate(checkpoint, quantized, output, measure=fidelity, max_kl=max_kl, progress=progress)
    total_bytes = sum(path.stat().st_size for path in checkpoint.weight_files)
    with staged_artifact(output, force=force) as folder:
        with export_progress(total_bytes, spec.num_layers, progress) as hooks:
            stats = export_graph(spec, chosen, checkpoint.weight_files, folder, quant_algo=quant_algo,
                                 mixed_precision=mixed_precision,
                                 head_options=HeadOptions(lm_head=lm_head, embeddings=embeddings),
                                 on_tensor=hooks.on_tensor, on_layer=hooks.on_layer)
        # Inside staged_artifact: a failed accuracy gate deletes the staging folder, nothing reaches `output`.
        recipe_name = quant_algo + ("+int8-mixed" if mixed_precision and chosen.bits == 4 else "")
        measured = _write_companions(folder, checkpoint, spec, chosen, stats, recipe_name, gate)
    size = sum(path.stat().st_size for path in output.iterdir() if path.is_file())
    return ExportResult(output, chosen.name, size, stats.nodes, time.perf_counter() - started, stats.fused_rotary,
                        measured, stats.ort_format)


def _accuracy_gate(checkpoint: Any, quantized: bool, output: Path, *, measure: bool, max_kl: float | None,
                   progress: bool | None) -> Callable[[Path], dict[str, Any]] | None:
    """The fidelity step of a quantized export, checked before any weight is read (None: not measured)."""
    import math
    import sys

    if max_kl is not None and (math.isnan(max_kl) or max_kl < 0):
        raise Phi3EdgeError(f"--max-kl must be a non-negative number, got {max_kl}")
    if max_kl is not None and not measure:
        raise Phi3EdgeError("--max-kl needs the fidelity measurement; drop --no-fidelity")
    if not quantized or not measure:
        return None  # float weights: nothing quantized to gate (a --max-kl passes trivially)
    if not any(path.name == "tokenizer.json" for path in checkpoint.tokenizer_files):
        if max_kl is not None:
            raise Phi3EdgeError("--max-kl: the accuracy gate tokenizes its prompts with the checkpoint's "
                                "tokenizer.json, which it lacks (or pass --no-fidelity)", checkpoint.root)
        return None
    from phi3_edge.evaluate.gate import enforce_max_kl, measure_against_reference

    def export_reference(folder: Path) -> None:
        export(str(checkpoint.root), "cpu-fp32", folder, progress=False)

    def gate(candidate: Path) -> dict[str, Any]:
        if progress is not False:
            print("measuring fidelity against a cpu-fp32 export of the same checkpoint", file=sys.stderr, flush=True)
        # The reference goes inside the staging folder: on the output's filesystem, and swept with the staging
        # folder by the next export if this process is killed mid-gate (nothing stale is left beside --output).
        record = measure_against_reference(candidate, export_reference, scratch_parent=candidate)
        enforce_max_kl(record, max_kl)
        return {**record, "max_kl": max_kl}

    return gate


def _write_companions(folder: Path, checkpoint: Any, spec: Any, target: Any, stats: Any, quant_algo: str,
                      gate: Callable[[Path], dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """Tokenizer files, genai_config.json, the accuracy gate (it runs the folder as it stands then) and, last,
    manifest.json (it hashes everything else). Returns the fidelity record (None: not measured)."""
    from dataclasses import asdict

    from phi3_edge import io_spec
    from phi3_edge.exporter.genai_config import copy_tokenizer_files, write_genai_config
    from phi3_edge.manifest import build_manifest, source_record, write_manifest

    copy_tokenizer_files(checkpoint.tokenizer_files, folder)
    write_genai_config(folder, spec, target)
    fidelity = gate(folder) if gate is not None else None
    signature = [asdict(s) for s in io_spec.decoder_inputs(spec.num_layers, spec.num_kv_heads, spec.head_dim,
                                                             target.io_dtype)]
    signature += [asdict(s) for s in io_spec.decoder_outputs(spec.num_layers, spec.num_kv_heads, spec.head_dim,
                                                               spec.vocab_size, target.io_dtype)]
    source = source_record(checkpoint.source, checkpoint.revision, checkpoint.root, checkpoint.all_files())
    recipe = {"weights": target.weight_format, "io_dtype": target.io_dtype, "fused_rotary": stats.fused_rotary,
              "graph_nodes": stats.nodes, "bits": target.bits, "block_size": target.block_size,
              "accuracy_level": target.accuracy_level,
              "quant_algo": quant_algo if target.bits is not None else None, **stats.heads,
              "ort_format": stats.ort_format}
    rope_switch = spec.longrope.original_max_position_embeddings if spec.longrope else None
    manifest = build_manifest(source=source, spec_json=spec.to_json(), target=asdict(target), recipe=recipe,
                              io_signature=signature, artifact_dir=folder, rope_switch_length=rope_switch)
    manifest["fidelity"] = fidelity
    write_manifest(folder, manifest)
    return fidelity


def load(folder: str | Path, **options: Any) -> "EdgeModel":
    """Open an artifact folder for generation (onnxruntime + tokenizers only)."""
    from phi3_edge.edge_runtime import EdgeModel

    return EdgeModel.load(Path(folder), **options)


def evaluate(artifact: str | Path, reference: str | Path, *, text_file: str | Path | None = None) -> "FidelityReport":
    """Mean next-token KL(reference || artifact) and top-1 agreement on the built-in prompts; with
    `text_file`, the perplexity of both on its text (onnxruntime + tokenizers only, like load())."""
    from phi3_edge.evaluate import compare_artifacts

    text = None
    if text_file is not None:
        try:
            text = Path(text_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
            raise Phi3EdgeError(f"cannot read the perplexity text ({reason})", text_file) from None
    return compare_artifacts(artifact, reference, text=text)

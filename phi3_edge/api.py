"""What Python users (and the CLI) call: export, load, evaluate, bench, inspect, verify, targets.

Each command is one frozen request: `run_export(ExportRequest(...))`, `bench(BenchRequest(...))`; `export()`
is the keyword form of an ExportRequest (an unknown keyword is a one-line Phi3EdgeError listing the valid ones).

Heavy modules are imported inside the functions: `load()` on a device must not pull in the exporter
(onnx, huggingface_hub, rich), and `export()` must not pull in the runtime.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from phi3_edge.edge_runtime.lookup import DEFAULT_DRAFT_TOKENS as LOOKUP_DRAFT_TOKENS
from phi3_edge.errors import Phi3EdgeError
from phi3_edge.exporter.request import ExportRequest, ExportResult
from phi3_edge.quantize.recipe import QuantOptions
from phi3_edge.targets.table import DEFAULT_TARGET, REFERENCE_TARGET, TARGETS, Target

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from phi3_edge.edge_runtime import EdgeModel
    from phi3_edge.edge_runtime.artifact_info import ArtifactInfo
    from phi3_edge.edge_runtime.bench import BenchReport
    from phi3_edge.edge_runtime.conversation import Conversation
    from phi3_edge.edge_runtime.ship_files import ShipList
    from phi3_edge.evaluate import FidelityReport
    from phi3_edge.exporter.pipeline import Calibrate
    from phi3_edge.integrity import Report
    from phi3_edge.model_cache import CacheEntry, ExportRecipe, ResolvedModel
    from phi3_edge.recipes import BuildReport
    from phi3_edge.recipes.push import PushResult


class ExportOptions(TypedDict, total=False):
    """export()'s keywords: ExportRequest's fields, with QuantOptions' fields flattened."""

    force: bool
    require_tokenizer: bool
    progress: bool | None
    quant_algo: str | None  # None: the target's calibrated default up to its parameter limit, else rtn
    calibration: str | Path | None  # gptq/awq (or the calibrated default): the user's UTF-8 text (None: built-in)
    mixed_precision: bool
    size_budget: float | None  # mixed_precision's byte budget: a factor of the plain export's weight bytes
    lm_head: str | None
    embeddings: str | None
    max_kl: float | None
    fidelity: bool
    layout: str | None
    command: str | None
    mobile_files: str | None


_QUANT_KEYWORDS = {"quant_algo": "algo", "mixed_precision": "mixed_precision", "size_budget": "size_budget",
                   "lm_head": "lm_head", "embeddings": "embeddings"}


def export_request(model: str, target: str = DEFAULT_TARGET, output: str | Path | None = None,
                   **options: Unpack[ExportOptions]) -> ExportRequest:
    """The ExportRequest export() runs; an unknown keyword is a one-line Phi3EdgeError, not a TypeError."""
    own = {f.name for f in fields(ExportRequest)} - {"model", "target", "output", "quant"}
    unknown = sorted(set(options) - own - set(_QUANT_KEYWORDS))
    if unknown:
        valid = ", ".join(sorted(own | set(_QUANT_KEYWORDS)))
        raise Phi3EdgeError(f"unknown export option {unknown[0]!r}; valid: {valid}")
    given: dict[str, Any] = dict(options)
    if given.get("calibration") is not None:
        given["calibration"] = Path(given["calibration"])
    quant = QuantOptions(**{_QUANT_KEYWORDS[k]: given.pop(k) for k in list(given) if k in _QUANT_KEYWORDS})
    return ExportRequest(model, target, None if output is None else Path(output), quant=quant, **given)


def export(model: str, target: str = DEFAULT_TARGET, output: str | Path | None = None,
           **options: Unpack[ExportOptions]) -> ExportResult:
    """Export a Phi-3 checkpoint (local folder, hub id, short name or "demo") to an artifact folder.

    `target` defaults to DEFAULT_TARGET, as `phi3-edge export` does (REFERENCE_TARGET is the float reference).

    A quantized export is then measured against a reference export of the same checkpoint (mean next-token
    KL and top-1 agreement on built-in prompts, recorded as manifest.json's "fidelity"); `fidelity=False`
    skips that (recorded as null). With `max_kl`, a KL above it fails the export and leaves nothing at `output`.
    """
    return run_export(export_request(model, target, output, **options))


def get_target(name: str) -> Target:
    """The target table's row; Phi3EdgeError listing the valid names."""
    from phi3_edge.targets.table import get_target as lookup

    try:
        return lookup(name)
    except KeyError as exc:
        raise Phi3EdgeError(str(exc.args[0])) from None


def run_export(request: ExportRequest, *, on_stage: Callable[[str], None] | None = None) -> ExportResult:
    """Run one ExportRequest (see export()); on_stage hears each stage the export passes (exporter/artifact.py's
    STAGES), for tests that interrupt an export at a known point."""
    from phi3_edge.exporter.pipeline import export_artifact

    def measure(candidate: Path, checkpoint: Path) -> dict[str, Any]:
        return _measure_fidelity(request, candidate, checkpoint)

    return export_artifact(request, get_target(request.target), measure, on_stage, _calibrator(request))


def _calibrator(request: ExportRequest) -> Calibrate | None:
    """GPTQ's or AWQ's calibration pass (reference/export_calibration.py), its text read and checked now; None for the
    algorithms that need none, and a one-line error for a --calibration they would ignore.

    Without --quant-algo the pipeline picks the target's calibrated algorithm or rtn once it has counted the
    checkpoint's parameters (recipe.resolve_algo), so a target with a calibrated default gets the pass ready (it
    costs nothing until called)."""
    from phi3_edge.quantize.recipe import CALIBRATED_ALGOS

    target = get_target(request.target)
    algo = request.quant.algo
    # --mixed-precision measures each tensor's int4/int8 error on the calibration text (any body algorithm).
    may_calibrate = (algo in CALIBRATED_ALGOS or request.quant.mixed_precision
                     or (algo is None and target.bits is not None and target.calibrated_algo is not None))
    if not may_calibrate:
        if request.calibration is not None:
            chosen = f"{target.name}'s default rtn" if algo is None else algo
            raise Phi3EdgeError(f"--calibration applies to --quant-algo {' or '.join(CALIBRATED_ALGOS)} and to "
                                f"--mixed-precision, not {chosen}", request.calibration)
        return None
    from phi3_edge.exporter.build import WEIGHT_DTYPES
    from phi3_edge.reference.export_calibration import calibrator

    # AWQ's clip search picks scales as the export stores them
    return calibrator(request.calibration, request.progress, WEIGHT_DTYPES.get(target.weight_format, target.io_dtype))


def _measure_fidelity(request: ExportRequest, candidate: Path, checkpoint: Path) -> dict[str, Any]:
    """The accuracy gate: `candidate` against the fp32 reference streamed layer by layer from the checkpoint
    (phi3_edge/reference): no reference artifact, no temporary disk, one layer's weights in memory."""
    from phi3_edge.evaluate.gate import enforce_max_kl
    from phi3_edge.reference.gate import measure_against_checkpoint

    record = measure_against_checkpoint(candidate, checkpoint, progress=request.progress)
    enforce_max_kl(record, request.max_kl)
    return {**record, "max_kl": request.max_kl}


def export_targets(request: ExportRequest, targets: list[str]) -> list[ExportResult]:
    """`export --targets a,b`: `request` for each target, into request.output/<target>, one after another (each
    folder atomic; the first failure stops the rest)."""
    from dataclasses import replace

    unknown = [name for name in targets if name not in TARGETS]
    if unknown or not targets:
        raise Phi3EdgeError(f"unknown target {unknown[0]!r}; valid targets: {', '.join(TARGETS)}" if unknown
                            else "--targets: name at least one target")
    if request.output is None:
        raise Phi3EdgeError("--targets needs --output (the folder that gets one artifact per target)")
    return [run_export(replace(request, target=name, output=request.output / name))
            for name in dict.fromkeys(targets)]


def build(recipe: str | Path, *, model: str | None = None, group: str | None = None, targets: tuple[str, ...] = (),
          report_dir: str | Path | None = None, push: bool = False, command: str | None = None,
          concurrent: bool = True) -> BuildReport:
    """Run a build recipe (phi3_edge/recipes): every selected model x target exported, gated and reported.

    A model's targets are exported side by side (concurrent, one thread each: they stream the checkpoint
    together, so the page cache serves each page read from disk to all of them), or one after another. A target
    that fails fails alone; report.exit_code says whether any did. With report_dir: report.json, junit.xml,
    summary.md there (and $GITHUB_STEP_SUMMARY when set)."""
    from phi3_edge.exporter.optimum_layout import OPTIMUM_LAYOUT
    from phi3_edge.recipes import TargetSpec, parse_recipe
    from phi3_edge.recipes.runner import Selection, run_build, write_reports

    parsed = parse_recipe(recipe)
    layout = OPTIMUM_LAYOUT if parsed.optimum_layout else None

    def export_one(source: str, spec: TargetSpec, folder: Path) -> None:
        export(source, spec.target, folder, force=True, progress=False, layout=layout, command=command,
               **spec.options.as_keywords())

    def push_one(folder: Path, repo_id: str) -> str:
        text = Path(recipe).read_text(encoding="utf-8")
        return publish(folder, repo_id, private=parsed.publish_private, recipe_text=text, command=command).url

    if push and parsed.publish_repo is None:
        raise Phi3EdgeError("--push: the recipe has no [publish] repo_id", parsed.path)
    report = run_build(parsed, export_one, selection=Selection(model, group, tuple(targets)),
                       push=push_one if push else None, concurrent=concurrent)
    if report_dir is not None:
        write_reports(report, Path(report_dir))
    return report


def build_matrix(recipe: str | Path) -> str:
    """The recipe's CI matrix (one job per model x target group) as one line of JSON."""
    from phi3_edge.recipes import matrix_json, parse_recipe

    return matrix_json(parse_recipe(recipe))


def recipe_output(recipe: str | Path) -> Path:
    """Where a recipe's artifacts go (<output>/<model>/<target>)."""
    from phi3_edge.recipes import parse_recipe

    return parse_recipe(recipe).output


def publish(folder: str | Path, repo_id: str, *, private: bool = True, token: str | None = None,
            endpoint: str | None = None, command: str | None = None, recipe_text: str | None = None) -> PushResult:
    """Upload an artifact folder to the Hugging Face Hub in one commit, with a generated model card."""
    from phi3_edge.recipes.push import push_artifact

    return push_artifact(folder, repo_id, private=private, token=token, endpoint=endpoint, command=command,
                         recipe_text=recipe_text)


def load(folder: str | Path, *, intra_op_threads: int | None = None, backend: str = "ort",
         kv_cache: str = "auto", verify: bool = True, allow_unsafe_config: bool = False,
         allow_cpu: bool = False) -> EdgeModel:
    """Open an artifact folder for generation (onnxruntime + tokenizers only; see EdgeModel.load).

    An artifact built for CUDA or DirectML on a machine whose onnxruntime lacks that provider is refused
    unless `allow_cpu` (then it runs on the CPU, and the model's provider_notice says so).

    `allow_unsafe_config` admits genai_config.json options that load code or write files (custom ops
    libraries, profiling paths); they are refused by default because an artifact is untrusted input."""
    from phi3_edge.edge_runtime import EdgeModel

    return EdgeModel.load(Path(folder), intra_op_threads=intra_op_threads, backend=backend, kv_cache=kv_cache,
                          verify=verify, allow_unsafe_config=allow_unsafe_config, allow_cpu=allow_cpu)



def conversation(model: EdgeModel, system: str | None = None, **defaults: Any) -> Conversation:
    """A multi-turn chat on a loaded model that keeps the KV cache between turns: a turn prefills only the
    tokens after the common prefix with what the cache holds (edge_runtime/conversation.py). `send(text)`
    keeps the messages itself; `stream(messages)` takes a whole conversation each turn (a REPL's history).
    Keyword options are GenerationOptions' fields, every turn's defaults."""
    from phi3_edge.edge_runtime.conversation import Conversation

    return Conversation(model, system, **defaults)

def evaluate(artifact: str | Path, reference: str | Path, *, text_file: str | Path | None = None) -> FidelityReport:
    """Mean next-token KL(reference || artifact) and top-1 agreement on the built-in prompts; with
    `text_file`, the perplexity of both on its text. `reference` is an artifact folder (onnxruntime +
    tokenizers only, like load()) or a checkpoint (folder, hub id, short name), streamed layer by layer."""
    from phi3_edge.evaluate import compare_artifacts
    from phi3_edge.reference.fidelity import compare_to_named_checkpoint, is_artifact_folder

    text = None
    if text_file is not None:
        try:
            text = Path(text_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
            raise Phi3EdgeError(f"cannot read the perplexity text ({reason})", text_file) from None
    if not is_artifact_folder(reference):
        return compare_to_named_checkpoint(artifact, str(reference), text=text)
    return compare_artifacts(artifact, reference, text=text)


@dataclass(frozen=True)
class BenchRequest:
    folder: Path
    prompt_len: int = 128
    gen_len: int = 128
    backend: str = "ort"  # "ort" | "genai"
    bandwidth_mb: int = 512  # the memory-bandwidth copy the roofline uses
    repeats: int = 1  # timed generations after the warm-up; the best is reported
    threads: int | None = None  # intra-op threads (None: the backend's default)
    verify: bool = True
    allow_cpu: bool = False  # a CUDA/DirectML artifact without its provider: bench it on the CPU
    lookup: int = 0  # prompt-lookup decoding's draft tokens per verify pass (0 = off; ort backend)


def bench(request: BenchRequest) -> BenchReport:
    """TTFT, prefill/decode tokens/s, peak RSS and the decode roofline of an artifact."""
    from phi3_edge.edge_runtime.bench import run_bench

    return run_bench(request.folder, request.prompt_len, request.gen_len, backend=request.backend,
                     bandwidth_mb=request.bandwidth_mb, repeats=request.repeats, intra_op_threads=request.threads,
                     verify=request.verify, allow_cpu=request.allow_cpu, lookup=request.lookup)


def inspect(folder: str | Path) -> ArtifactInfo:
    """Op census, I/O signature, file sizes and manifest summary of an artifact folder."""
    from phi3_edge.edge_runtime.artifact_info import inspect_artifact

    return inspect_artifact(folder)


def verify(folder: str | Path) -> Report:
    """Every file against manifest.json (full hashes), the graph's I/O and external data (see integrity)."""
    from phi3_edge.integrity import check_artifact

    return check_artifact(Path(folder))


def problem_status(problem: str | None) -> str:
    """One verify() problem as a table cell: "ok", or the problem without the common "damaged" prefix."""
    from phi3_edge.integrity import DAMAGED

    return "ok" if problem is None else problem.removeprefix(f"{DAMAGED}: ")


def targets() -> list[Target]:
    """The deployment targets, in table order."""
    return list(TARGETS.values())


def target_names() -> list[str]:
    return list(TARGETS)


def short_names_table() -> str:
    """The model short names (`phi3:mini`, ...) as a text table; "" when the exporter is not installed."""
    try:
        from phi3_edge.exporter.checkpoint import short_names_table as table
    except ImportError:
        return ""
    return table()


# -- MODEL names, the model cache, device honesty ------------------------------------------------------------

def resolve_model(model: str, *, target: str | None = None, recipe: ExportRecipe | None = None,
                  progress: bool | None = None, notify: Callable[[str], None] | None = None) -> ResolvedModel:
    """MODEL (an artifact folder, or anything export() takes) -> an intact artifact folder: a name is exported
    on first use for this machine's best target (or `target`) into the model cache, and reused afterwards."""
    from phi3_edge import model_cache

    return model_cache.resolve_model(model, export=export, target=target, recipe=recipe, progress=progress,
                                     notify=notify)


def cached_models() -> list[CacheEntry]:
    """The model cache's artifacts, most recently used first."""
    from phi3_edge import model_cache

    return model_cache.list_entries()


def remove_cached(selector: str, *, target: str | None = None) -> list[CacheEntry]:
    """Delete cached artifacts by key, or by the MODEL they came from (only `target`'s, if given)."""
    from phi3_edge import model_cache

    return model_cache.remove(selector, target=target)


def model_cache_root() -> Path:
    from phi3_edge import model_cache

    return model_cache.cache_root()


def default_algo_rule() -> str:
    """The --quant-algo default in words, from the target table (e.g. "awq on cpu-int4, mobile-int4 for a model
    of at most 1B parameters, else rtn")."""
    rules: dict[tuple[str, int], list[str]] = {}
    for t in TARGETS.values():
        if t.bits is not None and t.calibrated_algo is not None:
            rules.setdefault((t.calibrated_algo, t.calibrate_up_to_params), []).append(t.name)
    parts = [f"{algo} on {', '.join(names)} for a model of at most {limit / 1e9:.3g}B parameters"
             for (algo, limit), names in rules.items()]
    return "; ".join(parts + ["else rtn"]) if parts else "rtn"


def export_warnings(request: ExportRequest) -> list[str]:
    """The options this export would ignore, one line each (the CLI prints them as warnings)."""
    from phi3_edge.quantize.recipe import DEFAULT_BITS

    target, quant = get_target(request.target), request.quant
    quantized = target.bits is not None or quant.lm_head not in (None, "float") or quant.embeddings == "quantized"
    ignored = []
    if quant.mixed_precision and target.bits != DEFAULT_BITS:
        ignored.append(f"--mixed-precision applies to int{DEFAULT_BITS} targets; {target.name} has "
                       f"{target.weight_format} weights, so it changes nothing")
    if not quantized:
        what = f"{target.name} has {target.weight_format} weights and nothing else is quantized"
        ignored += [f"{flag} changes nothing: {what}" for flag, given in (
            (f"--quant-algo {quant.algo}", quant.algo != QuantOptions.algo),
            ("--calibration", request.calibration is not None),
            ("--max-kl", request.max_kl is not None), ("--no-fidelity", not request.fidelity)) if given]
    return ignored


def ship_lists(folder: str | Path) -> list[ShipList]:
    """What an app bundles to run the artifact, per graph format in the folder (mobile: model.ort or the .onnx)."""
    from phi3_edge.edge_runtime.ship_files import ship_lists as lists

    return lists(folder)


def provider_status(folder: str | Path) -> tuple[str, bool]:
    """(onnxruntime provider the artifact was built for, whether this machine's onnxruntime offers it)."""
    import onnxruntime

    from phi3_edge.edge_runtime.providers import artifact_provider_key, ort_provider_name

    name = ort_provider_name(artifact_provider_key(Path(folder))[0])
    return name, name in onnxruntime.get_available_providers()


def target_rows() -> list[dict[str, Any]]:
    """The target table as dicts, with the default edge target marked and whether its provider is here."""
    import onnxruntime

    from phi3_edge.targets.table import ort_provider

    available = onnxruntime.get_available_providers()
    return [{**asdict(t), "default": t.name == DEFAULT_TARGET, "ort_provider": ort_provider(t),
             "available_here": ort_provider(t) in available} for t in TARGETS.values()]


__all__ = ["BenchRequest", "DEFAULT_TARGET", "ExportOptions", "ExportRequest", "ExportResult", "LOOKUP_DRAFT_TOKENS",
           "QuantOptions", "REFERENCE_TARGET", "bench", "build", "build_matrix", "cached_models", "conversation",
           "default_algo_rule", "evaluate", "export", "export_request", "export_targets", "export_warnings",
           "get_target", "inspect", "load", "model_cache_root", "problem_status", "provider_status", "publish",
           "recipe_output", "remove_cached", "resolve_model", "run_export", "ship_lists", "short_names_table",
           "target_names", "target_rows", "targets", "verify"]

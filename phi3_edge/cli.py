"""`phi3-edge`: parse, build one frozen request, call phi3_edge.api, print. No logic of its own.

Only `phi3_edge.api` is imported below the CLI (it imports the exporter or the runtime inside each call), so
`phi3-edge run` never imports onnx, and `--help` stays fast. The MODEL commands (run, chat, list, rm) live in
cli_models.py, the printing helpers in cli_output.py, the chat loop in chat_repl.py (no click in it).
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from phi3_edge import api
from phi3_edge.cli_models import BACKEND_CHOICES, chat, list_command, rm_command, run
from phi3_edge.cli_output import print_json, print_table, protect_streams, size, warn
from phi3_edge.errors import Phi3EdgeError

EXIT_ERROR = 1
EXIT_USAGE = 2  # click's own code for a bad command line
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
JSON_HELP = "Print one JSON object instead of tables."


class _CleanErrors(click.Group):
    """Every failure a user can cause is one line on stderr, never a traceback (unless --debug)."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **kwargs: Any) -> Any:
        protect_streams()  # an ASCII stdout gets '?' for what it cannot show, never a UnicodeEncodeError
        try:
            # standalone_mode=False hands us click's exceptions instead of its multi-line usage banner.
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:  # `phi3-edge` alone: the help, as it is
            click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
            code = 0
        except click.UsageError as exc:
            # One line: an unknown target already lists the valid ones, so the usage banner adds nothing.
            hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
            code = _fail(exc.format_message() + hint, EXIT_USAGE)
        except click.ClickException as exc:
            exc.show()
            code = exc.exit_code
        except click.Abort:  # Ctrl-C outside a command (click turns KeyboardInterrupt into Abort)
            code = _fail("interrupted", EXIT_INTERRUPTED)
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)  # a command returns None; click.exit returns its code

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Phi3EdgeError as exc:
            if ctx.params.get("debug"):
                raise
            ctx.exit(_fail(str(exc), EXIT_ERROR))
        except KeyboardInterrupt:
            if ctx.params.get("debug"):
                raise
            ctx.exit(_fail("interrupted", EXIT_INTERRUPTED))
        except BrokenPipeError:  # `phi3-edge targets | head -1`: the reader left, nothing more to say
            sys.stderr.close()
            ctx.exit(EXIT_ERROR)


def _fail(message: str, code: int) -> int:
    message = " ".join(message.splitlines())  # one line, even if a message from deeper down has several
    click.echo(f"error: {message}" if code != EXIT_INTERRUPTED else message, err=True)
    return code


@click.group(cls=_CleanErrors)
@click.version_option(package_name="phi3-edge", message="phi3-edge %(version)s")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
def main(debug: bool) -> None:
    """Export Phi-3 checkpoints to ONNX Runtime artifact folders and run them on edge devices.

    \b
    phi3-edge run demo 'def fibonacci(n):'     export on first use (cached), then complete
    phi3-edge chat phi3:mini                    chat in the terminal (/help inside)
    phi3-edge export -m demo -o build/demo      an artifact folder for a target (default cpu-int4)
    """


for _command in (run, chat, list_command, rm_command):
    main.add_command(_command)


class _ExportCommand(click.Command):
    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        table = api.short_names_table()  # only --help needs the exporter's checkpoint table
        if not table:
            return
        with formatter.section("Model short names"):
            for line in table.splitlines():  # written raw: click would rewrap the table's columns
                formatter.write(f"{'':>{formatter.current_indent}}{line}\n")


@main.command(cls=_ExportCommand)
@click.option("--model", "-m", required=True,
              help="Local checkpoint folder, Hugging Face id, short name, GGUF file or Ollama name.")
@click.option("--target", "-t", type=click.Choice(api.target_names()), default=api.DEFAULT_TARGET,
              show_default=True,
              help="Deployment target (see `phi3-edge targets`).")
@click.option("--output", "-o", type=click.Path(), required=True, help="Artifact folder to write.")
@click.option("--force", is_flag=True, help="Replace an existing artifact folder.")
@click.option("--no-tokenizer", is_flag=True, help="Export even when the checkpoint has no tokenizer.json.")
@click.option("--quant-algo", type=click.Choice(["rtn", "hqq", "gptq", "awq"]), default=None,
              help="int4/int8 rounding: rtn (round to nearest: the fast path), hqq (error-minimizing zero points, "
                   "4-bit), gptq (calibrated on text, error fed back through each Linear's Hessian; symmetric) or "
                   "awq (calibrated on text: per-channel scale search folded into the weights, then a per-block "
                   "clip search; ready-made blocks, symmetric). Default: " + api.default_algo_rule() + " (the export "
                   "prints its choice and why).")
@click.option("--calibration", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="gptq/awq (and the awq default): calibrate on this UTF-8 text (default: the built-in "
                   "prose/code/chat set). Without --quant-algo it asks for the target's calibrated default at "
                   "any model size.")
@click.option("--mixed-precision", is_flag=True,
              help="int4 targets: int8 for the tensors (body Linears, tied table) whose int4 error, measured on "
                   "the calibration text, costs most per byte, within --size-budget.")
@click.option("--size-budget", type=float, default=None, metavar="F",
              help="--mixed-precision: weight bytes at most F x the plain int4 export's (default 1.05).")
@click.option("--lm-head", type=click.Choice(["float", "int8", "int4"]), default=None,
              help="Precision of lm_head (default: the target's measured choice, int8 on cpu-int4/mobile-int4; "
                   "as the rest of the weights elsewhere; `phi3-edge targets` shows it).")
@click.option("--embeddings", type=click.Choice(["float", "quantized"]), default=None,
              help="Embedding table format (default: quantized in lm_head's format when lm_head is quantized and "
                   "the model is tied (one shared table) or the target quantizes tables (cpu-int4, mobile-int4); "
                   "else float).")
@click.option("--max-kl", type=click.FloatRange(min=0), default=None,
              help="Accuracy gate: fail (and write nothing) when the quantized export's mean next-token KL "
                   f"to a {api.REFERENCE_TARGET} export of the same checkpoint exceeds this (float targets "
                   "always pass).")
@click.option("--no-fidelity", is_flag=True,
              help=f"Skip measuring a quantized export against {api.REFERENCE_TARGET} (recorded as null; for "
                   "huge models).")
@click.option("--targets", "targets", default=None, metavar="A,B,...",
              help="Several targets, one after another: each into --output/<target> (instead of --target).")
@click.option("--layout", type=click.Choice(["optimum"]), default=None,
              help="Also lay the folder out for Optimum / Transformers.js: config.json, generation_config.json, "
                   "onnx/model{_q4,_int8,_fp16}.onnx beside the files onnxruntime-genai reads.")
@click.option("--mobile-files", type=click.Choice(["ort", "onnx"]), default=None,
              help="Mobile targets: keep only what the app ships, model.ort (ORT format, for a minimal "
                   "onnxruntime) or model.onnx + model.onnx.data (default: both).")
@click.option("--quiet", is_flag=True, help="No progress display; print only the artifact path.")
@click.option("--json", "as_json", is_flag=True, help="Print the export summary as JSON (no progress display).")
def export(quiet: bool, targets: str | None, as_json: bool, **options: Any) -> None:
    """Export a Phi-3 checkpoint to an ONNX Runtime artifact folder."""
    request = export_request(options, quiet=quiet or as_json)
    for warning in api.export_warnings(request):
        warn(warning)
    if targets is not None:
        results = api.export_targets(request, [name.strip() for name in targets.split(",") if name.strip()])
    else:
        results = [api.run_export(request)]
    if as_json:
        print_json(results if targets is not None else results[0])
        return
    for result in results:
        if quiet:
            click.echo(str(result.output))
        else:
            _print_table(f"export finished: {result.target}", (), result.summary_rows())


def export_request(options: dict[str, Any], *, quiet: bool = False) -> api.ExportRequest:
    """click's `export` options -> the one frozen request (every option named once, here)."""
    quant = api.QuantOptions(algo=options["quant_algo"], mixed_precision=options["mixed_precision"],
                             size_budget=options.get("size_budget"), lm_head=options["lm_head"],
                             embeddings=options["embeddings"])
    output = options["output"]
    return api.ExportRequest(options["model"], options["target"], None if output is None else Path(output),
                             force=options["force"], require_tokenizer=not options["no_tokenizer"],
                             progress=False if quiet else None, quant=quant, max_kl=options["max_kl"],
                             fidelity=not options["no_fidelity"], layout=options.get("layout"),
                             command=command_line(), mobile_files=options["mobile_files"],
                             calibration=None if options.get("calibration") is None else Path(options["calibration"]))


def command_line() -> str | None:
    """The command as typed, for manifest.json and the model card (None when not run as `phi3-edge`)."""
    if Path(sys.argv[0]).name != "phi3-edge":
        return None
    return shlex.join(["phi3-edge", *sys.argv[1:]])


@main.command()
@click.argument("folder", metavar="DIR")
@click.option("--prompt-len", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--gen-len", type=click.IntRange(min=2), default=128, show_default=True)
@click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="ort", show_default=True)
@click.option("--bandwidth-mb", type=click.IntRange(min=1), default=512, show_default=True,
              help="Array size for the memory-bandwidth copy that the roofline uses.")
@click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True,
              help="Timed generations after the warm-up; the best TTFT and decode time are reported.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Intra-op threads (default: physical cores for ort, logical CPUs / 2 for genai).")
@click.option("--allow-cpu", is_flag=True,
              help="Bench a CUDA/DirectML artifact on the CPU when its provider is missing.")
@click.option("--lookup", type=click.IntRange(min=0), is_flag=False, flag_value=api.LOOKUP_DRAFT_TOKENS, default=0,
              metavar="[N]", help="Decode with prompt lookup (N draft tokens per verify pass; ort backend).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--no-verify", is_flag=True, help="Skip checking the files against manifest.json's hashes.")
def bench(folder: str, as_json: bool, no_verify: bool, **options: Any) -> None:
    """TTFT, prefill/decode tokens/s, peak RSS and decode roofline ratio of the model in DIR."""
    request = api.BenchRequest(Path(folder), verify=not no_verify, **options)  # the options are its field names
    report = api.bench(request)
    prompt_len, gen_len = request.prompt_len, request.gen_len
    if as_json:
        print_json(report.to_json())
        return
    rows = [("backend", report.backend), ("execution provider", report.provider),
            ("prompt / new tokens", f"{prompt_len} / {gen_len}"),
            ("TTFT", f"{report.ttft_s * 1000:.1f} ms"), ("prefill", f"{report.prefill_tps:.1f} tok/s"),
            ("decode", f"{report.decode_tps:.2f} tok/s"), ("peak RSS", f"{report.peak_rss_mb:.0f} MB"),
            ("memory bandwidth", f"{report.bandwidth_gbps:.1f} GB/s"),
            ("weights read / token", f"{report.weight_bytes / 1e6:.1f} MB"),
            ("decode roofline", f"{report.roofline_tps:.2f} tok/s"),
            ("roofline ratio", f"{report.roofline_ratio:.2f}"),
            ("roofline ratio, streamed bytes", f"{report.roofline_ratio_streamed:.2f} "
                                               f"({report.streamed_weight_bytes / 1e6:.1f} MB: no embedding table)")]
    print_table(f"bench {folder}", ("metric", "value"), rows)


@main.command("inspect")
@click.argument("folder", metavar="DIR")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def inspect_command(folder: str, as_json: bool) -> None:
    """Op census, I/O signature, file sizes, the files an app must ship, and the manifest of artifact DIR."""
    info = api.inspect(folder)
    ships = api.ship_lists(folder)
    provider, here = api.provider_status(folder)
    if as_json:
        print_json({"artifact": info, "execution_provider": provider, "provider_available": here, "ship": ships})
        return
    ops = sorted(info.graph.ops.items(), key=lambda item: (-item[1], item[0]))
    print_table("op census", ("op", "nodes"), [(op, str(count)) for op, count in ops])
    io = [(direction, t.name, t.dtype, f"[{', '.join(str(d) for d in t.shape)}]")
          for direction, values in (("in", info.graph.inputs), ("out", info.graph.outputs)) for t in values]
    print_table("I/O signature", ("", "name", "dtype", "shape"), io)
    files = [(name, size(nbytes)) for name, nbytes in info.files] + [("total", size(info.total_bytes))]
    print_table("files", ("file", "size"), files)
    for ship in ships:
        rows = [(f.name, size(f.size_bytes), f.role if f.required else f"{f.role} (optional)") for f in ship.files]
        rows.append(("required total", size(ship.required_bytes), ""))
        print_table(f"an app ships ({ship.variant})", ("file", "size", "why"), rows)
    summary = [*info.summary_rows(), ("execution provider", f"{provider} ({'available' if here else 'missing'} here)")]
    print_table("manifest", ("", ""), summary)


@main.command()
@click.argument("folder", metavar="DIR")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def verify(folder: str, as_json: bool) -> None:
    """Check artifact folder DIR against manifest.json: every file's size and sha256, the graph's I/O
    signature, and external data staying inside the folder. Exits 1 with a one-line reason when damaged."""
    report = api.verify(folder)  # full hashes, never the stamp; a good result refreshes the stamp
    if as_json:
        print_json({"ok": report.ok, "problems": report.problems, "report": report})
    else:
        status = api.problem_status
        rows = [(f.name, "-" if f.size is None else str(f.size), (f.sha256 or "-")[:12], status(f.problem))
                for f in report.files]
        print_table(f"verify {folder}", ("file", "bytes", "sha256", "status"), rows)
        graph = [(name, status(problem)) for name, problem in report.graph_problems] or [
            ("I/O signature", f"{report.io_count} inputs/outputs match manifest.json"),
            ("external data",
             ", ".join(report.locations) + " (inside the folder, hashed)" if report.locations else "none")]
        print_table("graph", ("check", "status"), graph)
    if not report.ok:
        raise report.error(hint=False)  # the table above already lists every problem


@main.command()
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def targets(as_json: bool) -> None:
    """List the deployment targets, the default one, and which this machine's onnxruntime can run."""
    rows = api.target_rows()
    if as_json:
        print_json(rows)
        return
    table = [(r["name"] + (" *" if r["default"] else ""), r["execution_provider"],
              "yes" if r["available_here"] else "no", r["weight_format"], r["io_dtype"], _or_dash(r["block_size"]),
              _or_dash(r["accuracy_level"]), r["notes"]) for r in rows]
    print_table("* the default edge target (`export`'s default)",
                ("target", "EP", "here", "weights", "I/O + KV", "block", "acc. level", "notes"), table, whole=(0,))

_size = size  # the names the commands below use
_print_table = print_table


@main.command("build")
@click.argument("recipe", metavar="RECIPE", type=click.Path(dir_okay=False))
@click.option("--model", default=None, help="Only this model of the recipe (a CI matrix cell's `model`).")
@click.option("--group", default=None, help="Only this target group (a CI matrix cell's `group`).")
@click.option("--targets", default=None, metavar="A,B,...", help="Only these targets of the recipe.")
@click.option("--report-dir", type=click.Path(file_okay=False), default=None,
              help="Write report.json, junit.xml and summary.md here (and to $GITHUB_STEP_SUMMARY when set).")
@click.option("--push", is_flag=True, help="Push each passing artifact to the recipe's [publish] repo_id.")
@click.option("--matrix", "as_matrix", is_flag=True,
              help="Print the CI matrix (one job per model x group) as a `matrix=<json>` line and exit.")
@click.option("--print-output", is_flag=True, help="Print the recipe's output folder and exit.")
@click.option("--sequential", is_flag=True,
              help="Export a model's targets one after another (least memory) instead of side by side.")
def build(recipe: str, model: str | None, group: str | None, targets: str | None, report_dir: str | None,
          push: bool, as_matrix: bool, print_output: bool, sequential: bool) -> None:
    """Export every model x target of a build RECIPE (TOML, see examples/build.toml), gate and report them.

    A target that fails (its accuracy gate, a bad option) fails alone and the build goes on. Exit codes: 0 every
    target passed, 3 some target failed (the last line names them), 1 nothing was built, 2 bad command line."""
    if as_matrix:
        click.echo(f"matrix={api.build_matrix(recipe)}")  # a $GITHUB_OUTPUT line
        return
    if print_output:
        click.echo(str(api.recipe_output(recipe)))
        return
    names = tuple(name.strip() for name in (targets or "").split(",") if name.strip())
    report = api.build(recipe, model=model, group=group, targets=names, report_dir=report_dir, push=push,
                       command=command_line(), concurrent=not sequential)
    rows = [(f"{t.model}/{t.name}", t.status, "-" if t.size_bytes is None else _size(t.size_bytes),
             f"{(t.fidelity or {}).get('kl', '-'):.4g}" if (t.fidelity or {}).get("kl") is not None else "-",
             str((t.min_runtime or {}).get("onnxruntime", "-")), f"{t.seconds:.1f} s") for t in report.targets]
    _print_table(f"build {recipe}", ("artifact", "status", "size", "KL", "onnxruntime >=", "time"), rows)
    if report.failed:
        click.echo("failed: " + ", ".join(f"{t.model}/{t.name} ({t.message})" for t in report.failed), err=True)
        sys.exit(report.exit_code)


@main.command("push")
@click.argument("artifact", metavar="ARTIFACT", type=click.Path(file_okay=False))
@click.argument("repo_id", metavar="REPO_ID")
@click.option("--public", is_flag=True, help="Create the repo public (default: private).")
@click.option("--endpoint", default=None, help="Hub endpoint (default: $HF_ENDPOINT or https://huggingface.co).")
def push(artifact: str, repo_id: str, public: bool, endpoint: str | None) -> None:
    """Upload ARTIFACT to the Hugging Face Hub repo REPO_ID in one commit, with a generated model card
    (source, target, recipe, fidelity, sizes, the command that built it). Needs a token (HF_TOKEN or
    `huggingface-cli login`)."""
    result = api.publish(artifact, repo_id, private=not public, endpoint=endpoint)
    click.echo(result.url)


def _or_dash(value: int | None) -> str:
    return "-" if value is None else str(value)


@main.command("eval")
@click.argument("artifact", metavar="ARTIFACT")
@click.option("--ref", "reference", required=True, metavar="REF_ARTIFACT",
              help=f"Reference artifact folder (usually the {api.REFERENCE_TARGET} export of the same checkpoint).")
@click.option("--text", "text_file", type=click.Path(dir_okay=False), default=None,
              help="UTF-8 text file: also report the perplexity of both models on it.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def evaluate(artifact: str, reference: str, text_file: str | None, as_json: bool) -> None:
    """Mean next-token KL(REF || ARTIFACT) and top-1 agreement on built-in prompts; perplexity with --text."""
    report = api.evaluate(artifact, reference, text_file=text_file)
    if as_json:
        print_json({"artifact": artifact, "reference": reference, **report.to_json()})
        return
    rows = [("mean KL (nats)", f"{report.kl:.4g}"), ("top-1 agreement", f"{report.top1:.1%}"),
            ("positions", f"{report.positions} over {report.prompts} built-in prompts")]
    if report.ppl is not None and report.ref_ppl is not None:
        rows.append(("perplexity", f"{report.ppl:.4g} (reference {report.ref_ppl:.4g}, {report.text_tokens} tokens)"))
    print_table(f"{artifact} vs {reference}", (), rows)


if __name__ == "__main__":
    main()

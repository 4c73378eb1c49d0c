"""`phi3-edge`: parse, call phi3_edge.api, print. No logic of its own.

The API (and through it the exporter or the runtime) is imported inside each command, so `phi3-edge run` on
a device never imports onnx, and `--help` stays fast.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from phi3_edge.errors import Phi3EdgeError
from phi3_edge.targets.table import TARGETS

EXIT_ERROR = 1
EXIT_USAGE = 2  # click's own code for a bad command line
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


class _CleanErrors(click.Group):
    """Every failure a user can cause is one line on stderr, never a traceback (unless --debug)."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        try:
            # standalone_mode=False hands us click's exceptions instead of its multi-line usage banner.
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as exc:
            # One line: an unknown target already lists the valid ones, so the usage banner adds nothing.
            code = _fail(exc.format_message(), EXIT_USAGE)
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


def _fail(message: str, code: int) -> int:
    message = " ".join(message.splitlines())  # one line, even if a message from deeper down has several
    click.echo(f"error: {message}" if code != EXIT_INTERRUPTED else message, err=True)
    return code


@click.group(cls=_CleanErrors)
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
def main(debug: bool) -> None:
    """Export Phi-3 checkpoints to ONNX Runtime artifact folders and run them on edge devices."""


def _short_names_table() -> str:
    # The checkpoint module belongs to the exporter; only --help needs it, so import it only then.
    try:
        from phi3_edge.exporter.checkpoint import short_names_table
    except ImportError:
        return ""
    return short_names_table()


class _ExportCommand(click.Command):
    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        table = _short_names_table()
        if not table:
            return
        with formatter.section("Model short names"):
            for line in table.splitlines():  # written raw: click would rewrap the table's columns
                formatter.write(f"{'':>{formatter.current_indent}}{line}\n")


@main.command(cls=_ExportCommand)
@click.option("--model", "-m", required=True, help="Local checkpoint folder, Hugging Face id or short name.")
@click.option("--target", "-t", type=click.Choice(list(TARGETS)), default="cpu-fp32", show_default=True,
              help="Deployment target (see `phi3-edge targets`).")
@click.option("--output", "-o", type=click.Path(), help="Artifact folder to write.")
@click.option("--force", is_flag=True, help="Replace an existing artifact folder.")
@click.option("--no-tokenizer", is_flag=True, help="Export even when the checkpoint has no tokenizer.json.")
@click.option("--quant-algo", type=click.Choice(["rtn", "hqq"]), default="rtn", show_default=True,
              help="int4/int8 rounding: rtn (round to nearest) or hqq (error-minimizing zero points, 4-bit).")
@click.option("--quiet", is_flag=True, help="No progress display; print only the artifact path.")
def export(model: str, target: str, output: str | None, force: bool, no_tokenizer: bool, quant_algo: str,
           quiet: bool) -> None:
    """Export a Phi-3 checkpoint to an ONNX Runtime artifact folder."""
    from phi3_edge import api

    result = api.export(model, target, output, force=force, require_tokenizer=not no_tokenizer,
                        progress=False if quiet else None, quant_algo=quant_algo)
    if quiet:
        click.echo(str(result.output))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="export finished", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in result.summary_rows():
        table.add_row(key, value)
    Console().print(table)


@main.command()
@click.argument("folder", metavar="DIR")
@click.argument("prompt")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=128, show_default=True)
def run(folder: str, prompt: str, max_new_tokens: int) -> None:
    """Complete PROMPT with the model in artifact folder DIR (greedy), streaming to stdout."""
    from phi3_edge import api

    stream = api.load(folder).stream(prompt, max_new_tokens=max_new_tokens)
    for piece in stream:
        click.echo(piece, nl=False)
        sys.stdout.flush()  # show each piece as it arrives, even when stdout is a pipe
    click.echo()
    result = stream.result
    click.echo(
        f"{len(result.token_ids)} tokens, {result.tokens_per_second:.1f} tok/s decode, "
        f"prefill {result.prefill_seconds * 1000:.0f} ms ({result.prompt_tokens} prompt tokens), "
        f"stop: {result.stop_reason}",
        err=True,
    )


@main.command()
def targets() -> None:
    """List the deployment targets."""
    from rich.console import Console
    from rich.table import Table

    table = Table("target", "EP", "weights", "I/O + KV", "block", "acc. level", "notes")
    for target in TARGETS.values():
        table.add_row(target.name, target.execution_provider, target.weight_format, target.io_dtype,
                      _or_dash(target.block_size), _or_dash(target.accuracy_level), target.notes)
    Console().print(table)


def _or_dash(value: int | None) -> str:
    return "-" if value is None else str(value)


if __name__ == "__main__":
    main()

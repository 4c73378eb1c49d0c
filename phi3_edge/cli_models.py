"""`phi3-edge run`, `chat`, `list` and `rm`: the commands that take a MODEL and keep the model cache.

MODEL is an artifact folder or anything `export --model` takes; a name is exported on first use for the best
target of this machine (phi3_edge.model_cache, through the API) and reused afterwards.
Only phi3_edge.api is called; the chat loop itself is phi3_edge.chat_repl (no click in it).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import click

from phi3_edge import api
from phi3_edge.chat_io import StreamReader, TerminalReader
from phi3_edge.chat_repl import ChatOptions, ChatRepl, EdgeChatModel
from phi3_edge.cli_output import print_json, print_table, size, warn
from phi3_edge.errors import Phi3EdgeError

BACKEND_CHOICES = ("ort", "genai")
STDIN_PROMPT = "-"
MODEL_HELP = ("MODEL: an artifact folder, or a checkpoint folder, short name, hub id, GGUF file or Ollama name, "
              "exported on first use for this machine's best target and cached (`phi3-edge list`).")


def generation_options(command: Any) -> Any:
    """The generation options `run` and `chat` share (GenerationOptions' fields)."""
    options = [
        click.option("--max-new-tokens", type=click.IntRange(min=1), default=128, show_default=True),
        click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True,
                     help="Sampling temperature; 0 = greedy."),
        click.option("--top-k", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Sample from the k most likely tokens; 0 = off (sampling only)."),
        click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True), default=1.0, show_default=True,
                     help="Sample from the smallest set of tokens whose probability reaches p (sampling only)."),
        click.option("--repetition-penalty", type=click.FloatRange(min=0, min_open=True), default=1.0,
                     show_default=True, help="Penalize tokens already in the sequence (> 1 discourages)."),
        click.option("--seed", type=int, default=None,
                     help="Random seed: the same seed gives the same sample (sampling only)."),
        click.option("--stop", multiple=True, help="Stop before this text (repeatable)."),
        click.option("--lookup", type=click.IntRange(min=0), is_flag=False, flag_value=api.LOOKUP_DRAFT_TOKENS,
                     default=0, metavar="[N]",
                     help="Prompt-lookup decoding: draft up to N tokens (a bare --lookup: "
                          f"{api.LOOKUP_DRAFT_TOKENS}) from n-grams already in the text, verify them in one pass "
                          "(ort backend; the tokens of plain decoding)."),
        click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="ort", show_default=True,
                     help="ort: our onnxruntime loop; genai: onnxruntime-genai."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def model_options(command: Any) -> Any:
    """How MODEL becomes a loaded model: the cache's target, the CPU fallback, the integrity check."""
    options = [
        click.option("--target", "-t", type=click.Choice(api.target_names()), default=None,
                     help="Export a model name for this target instead of this machine's best one."),
        click.option("--allow-cpu", is_flag=True,
                     help="Run a CUDA/DirectML artifact on the CPU when its provider is missing (slow)."),
        click.option("--no-verify", is_flag=True, help="Skip checking the files against manifest.json's hashes."),
        click.option("--allow-unsafe-config", is_flag=True,
                     help="Admit genai_config.json options that load code or write files (custom ops libraries, "
                          "profiling); refused by default: an artifact is untrusted input."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@dataclass(frozen=True)
class LoadChoice:
    """How MODEL is opened: model_options' flags plus the backend, gathered once from click's keywords."""

    backend: str
    target: str | None
    allow_cpu: bool
    no_verify: bool
    allow_unsafe_config: bool

    @classmethod
    def take(cls, options: dict[str, Any]) -> LoadChoice:
        """Pop this class's fields out of click's keywords; what remains are the generation options."""
        return cls(**{name: options.pop(name) for name in cls.__dataclass_fields__})


def _sampling_warnings(generation: dict[str, Any]) -> None:
    """Sampling knobs under greedy decoding change nothing: say so rather than ignore them silently."""
    if generation["temperature"] > 0:
        return
    ignored = [flag for flag, unset in (("--top-k", generation["top_k"] == 0), ("--top-p", generation["top_p"] == 1.0),
                                        ("--seed", generation["seed"] is None)) if not unset]
    if ignored:
        verb = "applies" if len(ignored) == 1 else "apply"
        warn(f"{', '.join(ignored)} only {verb} when sampling (--temperature > 0); greedy decoding ignores them")


def _open(model: str, choice: LoadChoice) -> Any:
    resolved = api.resolve_model(model, target=choice.target)
    if choice.target is not None and resolved.key is None:
        raise click.UsageError(f"--target applies to a model name; {model} is already an artifact folder")
    loaded = api.load(resolved.folder, backend=choice.backend, verify=not choice.no_verify, allow_cpu=choice.allow_cpu,
                      allow_unsafe_config=choice.allow_unsafe_config)
    notice = loaded.provider_notice
    if notice:
        click.echo(notice, err=True)
    return loaded


def _read_stdin() -> str:
    data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8")
    try:
        return data.decode("utf-8").removesuffix("\n")
    except UnicodeDecodeError:
        raise Phi3EdgeError("the prompt on stdin is not UTF-8 text", "<stdin>") from None


@click.command(epilog=MODEL_HELP)
@click.argument("model", metavar="MODEL")
@click.argument("prompt", required=False)
@generation_options
@click.option("--chat", "as_chat", is_flag=True, help="Send PROMPT as a user message through the chat template.")
@click.option("--system", help="System message (needs --chat).")
@model_options
def run(model: str, prompt: str | None, as_chat: bool, system: str | None, **generation: Any) -> None:
    """Complete PROMPT with MODEL, streaming to stdout. PROMPT `-` (or none, on a pipe) reads it from stdin;
    no PROMPT on a terminal starts a chat."""
    choice = LoadChoice.take(generation)
    _sampling_warnings(generation)
    if prompt is None and sys.stdin.isatty():  # `run MODEL` on a terminal: a chat, as Ollama does
        _chat(model, system, True, choice, generation)
        return
    if system is not None and not as_chat:
        raise click.UsageError("--system needs --chat (a plain completion has no system message)")
    loaded = _open(model, choice)
    text = _read_stdin() if prompt is None or prompt == STDIN_PROMPT else prompt
    request: Any = text
    if as_chat:
        request = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    stream = loaded.stream(request, **generation)
    for piece in stream:
        click.echo(piece, nl=False)
        sys.stdout.flush()  # show each piece as it arrives, even when stdout is a pipe
    click.echo()
    result = stream.result
    click.echo(f"{len(result.token_ids)} tokens, {result.tokens_per_second:.1f} tok/s decode, "
               f"prefill {result.prefill_seconds * 1000:.0f} ms ({result.prompt_tokens} prompt tokens), "
               f"stop: {result.stop_reason}, {loaded.provider}", err=True)


@click.command(epilog=MODEL_HELP)
@click.argument("model", metavar="MODEL")
@click.option("--system", help="System message at the start of the conversation (/system changes it).")
@click.option("--truncate/--no-truncate", default=True, show_default=True,
              help="When the conversation outgrows the context, drop the oldest turns (with a notice), or "
                   "refuse the message.")
@generation_options
@model_options
def chat(model: str, system: str | None, truncate: bool, **generation: Any) -> None:
    """Chat with MODEL: one message per line (stdin or a terminal); /help lists the commands, /bye or end of
    input ends it; Ctrl-C stops a reply."""
    choice = LoadChoice.take(generation)
    _sampling_warnings(generation)
    _chat(model, system, truncate, choice, generation)


def _chat(model: str, system: str | None, truncate: bool, choice: LoadChoice, generation: dict[str, Any]) -> None:
    loaded = _open(model, choice)
    interactive = sys.stdin.isatty()
    reader = TerminalReader() if interactive else StreamReader(sys.stdin.buffer)
    # The KV cache outlives each reply: a turn prefills only what follows the tokens it already holds.
    chat_model = EdgeChatModel(loaded, api.conversation(loaded, **generation), **generation)
    banner = (f"{model} on {loaded.provider}, {chat_model.context_length}-token context. "
              "/help for commands, Ctrl-C stops a reply, Ctrl-D or /bye quits.") if interactive else None
    options = ChatOptions(system=system, drop_oldest=truncate, banner=banner, terminal=interactive)
    ChatRepl(chat_model, reader, sys.stdout, sys.stderr, options).run()


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_command(as_json: bool) -> None:
    """The artifacts `run`/`chat` exported into the model cache, most recently used first."""
    entries = api.cached_models()
    if as_json:
        print_json({"cache": api.model_cache_root(), "artifacts": entries})
        return
    if not entries:
        click.echo(f"no cached artifacts in {api.model_cache_root()} (`phi3-edge run MODEL` adds one)")
        return
    rows = [(e.key, e.model, e.target, size(e.size_bytes), e.last_used.replace("T", " ")[:16]) for e in entries]
    print_table(f"model cache: {api.model_cache_root()}", ("name", "model", "target", "size", "last used (UTC)"),
                rows, whole=(0,))


@click.command("rm")
@click.argument("names", nargs=-1, metavar="NAME|MODEL...")
@click.option("--target", "-t", type=click.Choice(api.target_names()), default=None,
              help="Only MODEL's artifact for this target.")
@click.option("--all", "remove_all", is_flag=True, help="Empty the model cache.")
def rm_command(names: tuple[str, ...], target: str | None, remove_all: bool) -> None:
    """Delete cached artifacts by name (as `list` shows it) or by the MODEL they were exported from."""
    if remove_all == bool(names):
        raise click.UsageError("name what to remove (NAME or MODEL, see `phi3-edge list`), or pass --all alone")
    selectors = [e.key for e in api.cached_models()] if remove_all else list(names)
    for selector in selectors:
        for entry in api.remove_cached(selector, target=target):
            click.echo(f"removed {entry.key} ({entry.model}, {entry.target}, {size(entry.size_bytes)})")

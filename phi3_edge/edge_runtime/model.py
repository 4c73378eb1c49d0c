"""EdgeModel: an artifact folder opened for generation — engine, tokenizer, chat template and stop ids together.

    model = load("build/cpu-int4")
    for piece in model.stream([{"role": "user", "content": "Hi"}], max_new_tokens=64, temperature=0.7):
        print(piece, end="")

A prompt is a str (encoded as is, with the tokenizer's own BOS handling) or a list of chat messages (rendered
with the artifact's chat template, generation prompt appended). Keyword options are GenerationOptions' fields.
One EdgeModel serves many threads at once: every call builds its own generator, sampler and KV buffers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from phi3_edge.artifact_contract import TOKENIZER_CONFIG_FILE
from phi3_edge.edge_runtime.chat import ChatTemplate, Message, fit_conversation
from phi3_edge.edge_runtime.chat_encoding import encode_chat
from phi3_edge.edge_runtime.decoder_config import DecoderConfig, read_decoder_config
from phi3_edge.edge_runtime.generate import STOP_STRING, Engine, GenerationOptions, GenerationResult, Generator
from phi3_edge.edge_runtime.providers import ProviderChoice, choose_providers, cpu_provider, session_provider
from phi3_edge.edge_runtime.runtime_check import check_runtime
from phi3_edge.edge_runtime.session import DecoderSession
from phi3_edge.edge_runtime.stopping import StopStrings
from phi3_edge.edge_runtime.threads import DEFAULT_TUNING, SessionTuning
from phi3_edge.edge_runtime.tokenizer import EdgeTokenizer
from phi3_edge.errors import ArtifactError, Phi3EdgeError
from phi3_edge.integrity import check_before_load

DEFAULT_MAX_NEW_TOKENS = 128
BACKENDS = ("ort", "genai")
Prompt = str | Sequence[Message]


class EdgeModel:
    def __init__(self, folder: Path, session: Engine, tokenizer: EdgeTokenizer,
                 providers: ProviderChoice | None = None) -> None:
        self.folder = folder
        self.providers = providers  # what the artifact was built for and what the session was asked to use
        self.session = session  # the engine: DecoderSession ("ort") or GenaiDecoder ("genai")
        self.tokenizer = tokenizer
        # genai_config.json may list only <|endoftext|>; a chat model ends its turn with <|end|>.
        self.eos_ids = frozenset(session.config.eos_token_ids) | tokenizer.stop_token_ids()

    @classmethod
    def load(cls, folder: str | Path, *, intra_op_threads: int | None = None, backend: str = "ort",
             kv_cache: str = "auto", verify: bool = True, allow_unsafe_config: bool = False,
             allow_cpu: bool = False, tuning: SessionTuning = DEFAULT_TUNING) -> EdgeModel:
        """Open an artifact folder.

        backend "ort" runs our onnxruntime loop (intra_op_threads defaults to the physical cores we may run
        on; kv_cache "auto" | "shared" | "concat", see DecoderSession); "genai" runs onnxruntime-genai
        (intra_op_threads defaults to og's own choice, logical CPUs / 2). verify checks every file against
        manifest.json (full hashes the first time, then a size/mtime stamp): a damaged folder is refused.
        An artifact built for a provider this onnxruntime lacks (CUDA, DirectML) is refused unless allow_cpu,
        which runs it on the CPU; `provider` then says so, and `provider_notice` is the line to show.
        tuning: the ort backend's session options beside the thread count (threads.SessionTuning).
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise ArtifactError("artifact folder not found", folder)
        # Hashes (unless verify=False), then the content checks --no-verify never skips (integrity.py).
        guard = check_before_load(folder, verify=verify, allow_unsafe_config=allow_unsafe_config)
        if backend not in BACKENDS:
            raise Phi3EdgeError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
        check_runtime(folder, uses_genai=backend == "genai")  # an older runtime than the graph needs: one line
        config = read_decoder_config(folder)
        tokenizer = EdgeTokenizer.load(folder)  # before the session: a missing file fails fast, not after loading
        choice = choose_providers(folder, allow_cpu=allow_cpu)  # before loading weights: refuse in one line
        if backend == "genai":
            from phi3_edge.edge_runtime.genai_backend import GenaiDecoder

            genai = GenaiDecoder(folder, config, intra_op_threads=intra_op_threads, cpu_only=choice.on_cpu_instead)
            guard.confirm()  # nothing it read changed after the check
            return cls(folder, genai, tokenizer, choice)
        engine = DecoderSession(folder, config, intra_op_threads=intra_op_threads, kv_cache=kv_cache,
                                providers=choice.providers, tuning=tuning)
        guard.confirm()
        return cls(folder, engine, tokenizer, choice)

    @property
    def config(self) -> DecoderConfig:
        return self.session.config

    @property
    def backend(self) -> str:
        return self.session.backend

    @property
    def provider(self) -> str:
        """The execution provider the model runs on: what onnxruntime reports for our session; for
        onnxruntime-genai (which does not say) the first provider its config was given."""
        ort_session = getattr(self.session, "ort_session", None)
        if ort_session is not None:
            return session_provider(ort_session)
        return self.providers.providers[0] if self.providers is not None else cpu_provider()

    @property
    def provider_notice(self) -> str | None:
        """A line to show when the artifact runs somewhere else than it was built for (allow_cpu)."""
        return self.providers.notice if self.providers is not None else None

    @cached_property
    def chat_template(self) -> ChatTemplate:
        return ChatTemplate.load(self.folder)

    def encode_chat(self, messages: Sequence[Message]) -> list[int]:
        """Token ids of a conversation with the generation prompt, as transformers' apply_chat_template, except
        that a message's content never writes a control token ("<|end|>" in it stays text; chat_encoding)."""
        return encode_chat(self.tokenizer, self.chat_template, messages, self.folder / TOKENIZER_CONFIG_FILE)

    def encode(self, prompt: Prompt, options: GenerationOptions | None = None) -> list[int]:
        """A str or a conversation to prompt ids; with options.truncate, old chat turns drop to fit."""
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        if options is None or not options.truncate:
            return self.encode_chat(prompt)
        # Room for every new token when possible: prompt + max_new_tokens <= context.
        budget = max(1, self.config.context_length - options.max_new_tokens)
        return fit_conversation(prompt, self.encode_chat, budget)[1]

    def generator(self, prompt_ids: Sequence[int], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                  **options: Any) -> Generator:
        """Token ids one at a time (no text, no stop strings): the loop the others build on."""
        settings = GenerationOptions(max_new_tokens=max_new_tokens, **options)
        return Generator(self.session, list(prompt_ids), settings, self.eos_ids)

    def generate_ids(self, prompt_ids: Sequence[int], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                     **options: Any) -> GenerationResult:
        stream = self.stream_ids(prompt_ids, max_new_tokens, **options)
        for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

    def generate(self, prompt: Prompt, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                 **options: Any) -> GenerationResult:
        settings = GenerationOptions(max_new_tokens=max_new_tokens, **options)
        return self.generate_ids(self.encode(prompt, settings), max_new_tokens, **options)

    def stream_ids(self, prompt_ids: Sequence[int], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                   **options: Any) -> TextStream:
        generator = self.generator(prompt_ids, max_new_tokens, **options)
        return TextStream(generator, self.tokenizer)

    def stream(self, prompt: Prompt, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, **options: Any) -> TextStream:
        """Text pieces as they are generated; the stream's `.result` is set once it is exhausted."""
        settings = GenerationOptions(max_new_tokens=max_new_tokens, **options)
        return self.stream_ids(self.encode(prompt, settings), max_new_tokens, **options)


class TextStream:
    """An iterator of text pieces that keeps the GenerationResult for after the last piece (for stats).

    Pieces never split a multi-byte character and never show any part of a stop string; the result's text
    is exactly the pieces joined.
    """

    def __init__(self, generator: Generator, tokenizer: EdgeTokenizer) -> None:
        self.result: GenerationResult | None = None
        self.generator = generator
        self._pieces = self._run(generator, tokenizer, StopStrings(generator.options.stop))

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def _run(self, generator: Generator, tokenizer: EdgeTokenizer, stops: StopStrings) -> Iterator[str]:
        detokenizer = tokenizer.detokenizer()
        shown: list[str] = []
        tokens = iter(generator)
        for token in tokens:
            piece = stops.feed(detokenizer.add(token))
            if piece:
                shown.append(piece)
                yield piece
            if stops.stopped:
                tokens.close()  # type: ignore[attr-defined]  # releases this generation's KV buffers now
                break
        if not stops.stopped:
            tail = stops.feed(detokenizer.flush())
            tail += "" if stops.stopped else stops.flush()
            if tail:
                shown.append(tail)
                yield tail
        if stops.stopped:
            generator.finish(STOP_STRING)
        self.result = generator.result("".join(shown))

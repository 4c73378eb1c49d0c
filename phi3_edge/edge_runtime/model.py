"""EdgeModel: an artifact folder opened for generation — decoder session, tokenizer and stop ids together."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from phi3_edge.edge_runtime.generate import GenerationResult, GreedyGenerator
from phi3_edge.edge_runtime.session import DecoderConfig, DecoderSession, read_decoder_config
from phi3_edge.edge_runtime.tokenizer import EdgeTokenizer
from phi3_edge.errors import ArtifactError

DEFAULT_MAX_NEW_TOKENS = 128


class EdgeModel:
    def __init__(self, folder: Path, session: DecoderSession, tokenizer: EdgeTokenizer) -> None:
        self.folder = folder
        self.session = session
        self.tokenizer = tokenizer
        # genai_config.json may list only <|endoftext|>; a chat model ends its turn with <|end|>.
        self.eos_ids = frozenset(session.config.eos_token_ids) | tokenizer.stop_token_ids()

    @classmethod
    def load(cls, folder: str | Path, *, intra_op_threads: int | None = None) -> EdgeModel:
        """Open an artifact folder; intra_op_threads defaults to the physical cores we may run on."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ArtifactError("artifact folder not found", folder)
        config = read_decoder_config(folder)
        tokenizer = EdgeTokenizer.load(folder)  # before the session: a missing file fails fast, not after loading
        return cls(folder, DecoderSession(folder, config, intra_op_threads=intra_op_threads), tokenizer)

    @property
    def config(self) -> DecoderConfig:
        return self.session.config

    def generator(self, prompt_ids: list[int], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> GreedyGenerator:
        return GreedyGenerator(self.session, list(prompt_ids), max_new_tokens, self.eos_ids)

    def generate_ids(self, prompt_ids: list[int], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> GenerationResult:
        generator = self.generator(prompt_ids, max_new_tokens)
        for _ in generator:
            pass
        return generator.result(self.tokenizer.decode(generator.token_ids))

    def generate(self, prompt: str, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> GenerationResult:
        return self.generate_ids(self.tokenizer.encode(prompt), max_new_tokens)

    def stream(self, prompt: str, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> TextStream:
        """Text pieces as they are generated; the stream's `.result` is set once it is exhausted."""
        return TextStream(self.generator(self.tokenizer.encode(prompt), max_new_tokens), self.tokenizer)


class TextStream:
    """An iterator of text pieces that keeps the GenerationResult for after the last piece (for stats)."""

    def __init__(self, generator: GreedyGenerator, tokenizer: EdgeTokenizer) -> None:
        self.result: GenerationResult | None = None
        self._pieces = self._run(generator, tokenizer)

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def _run(self, generator: GreedyGenerator, tokenizer: EdgeTokenizer) -> Iterator[str]:
        detokenizer = tokenizer.detokenizer()
        for token in generator:
            piece = detokenizer.add(token)
            if piece:
                yield piece
        tail = detokenizer.flush()
        if tail:
            yield tail
        self.result = generator.result(tokenizer.decode(generator.token_ids))

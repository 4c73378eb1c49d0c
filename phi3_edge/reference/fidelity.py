"""KL / top-1 / perplexity of an artifact against the fp32 reference streamed from its checkpoint.

The same figures as evaluate.fidelity.compare_artifacts (same prompts, token ids, windows and float64
statistics), without an fp32 artifact: both sides run layer by layer (reference/streamed.py), so memory is one
layer's weights and the hidden states, and no temporary file is written.

    report = compare_to_checkpoint(spec, weight_files, "build/cpu-int4", text=open("notes.txt").read())
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from phi3_edge.artifact_contract import TOKENIZER_FILE
from phi3_edge.errors import ArtifactError, Phi3EdgeError
from phi3_edge.evaluate.fidelity import DEFAULT_WINDOW, FidelityReport, windows
from phi3_edge.evaluate.texts import PROMPTS
from phi3_edge.exporter.config import Phi3Spec
from phi3_edge.integrity import check_before_load
from phi3_edge.reference.artifact_side import ArtifactSide
from phi3_edge.reference.checkpoint_side import CheckpointSide
from phi3_edge.reference.streamed import compare

TOKENIZER_NAME = TOKENIZER_FILE


def compare_to_checkpoint(spec: Phi3Spec, weight_files: Sequence[Path], artifact: str | Path, *,
                          text: str | None = None, prompts: Sequence[str] = PROMPTS, window: int = DEFAULT_WINDOW,
                          checkpoint_tokenizer: Path | None = None, threads: int | None = None,
                          verify_artifact: bool = False,
                          on_layer: Callable[[int, int], None] | None = None) -> FidelityReport:
    """KL(reference || artifact) and top-1 agreement on `prompts`; both perplexities on `text`.

    verify_artifact: hash `artifact` against its manifest first, as `eval` does for a finished folder (the gate
    measures a staging folder that has no manifest yet); the content checks run either way."""
    guard = check_before_load(Path(artifact), verify=verify_artifact)
    candidate = ArtifactSide(artifact, threads=threads)
    if candidate.vocab_size != spec.vocab_size:
        raise Phi3EdgeError(f"vocabularies differ: {candidate.folder} has {candidate.vocab_size} logits, the "
                            f"reference checkpoint {spec.vocab_size}")
    if candidate.num_layers != spec.num_layers:
        raise Phi3EdgeError(f"{candidate.folder} has {candidate.num_layers} layers, the reference checkpoint "
                            f"{spec.num_layers}: not an export of it")
    tokenizer = _tokenizer(candidate.folder / TOKENIZER_NAME)
    same = checkpoint_tokenizer is None or _tokenizer(checkpoint_tokenizer).get_vocab(True) == tokenizer.get_vocab(True)
    if not same:
        raise Phi3EdgeError(f"vocabularies differ: {candidate.folder} and the reference checkpoint have different "
                            "tokenizer.json vocabularies")
    context = min(candidate.config.context_length, spec.max_position_embeddings)
    prompt_ids = [ids[:context] for ids in (_encode(tokenizer, p) for p in prompts) if ids]
    if not prompt_ids:
        raise Phi3EdgeError("no evaluation prompt produced any token")
    text_windows = _text_windows(tokenizer, text, min(window, context))

    reference = CheckpointSide(spec, weight_files, threads=threads)
    with reference, candidate:
        stats = compare(reference, candidate, [*prompt_ids, *text_windows], reference.default_vocab_chunk(),
                        with_targets=True, on_layer=on_layer)
    guard.confirm()  # every segment read the folder as it was checked
    prompt_stats, text_stats = stats[:len(prompt_ids)], stats[len(prompt_ids):]
    kl = np.concatenate([s.kl() for s in prompt_stats])
    agree = np.concatenate([s.arg_r == s.arg_c for s in prompt_stats])
    ppl = ref_ppl = None
    tokens = None
    if text_windows:
        ref_nll = np.concatenate([s.nll()[0][:-1] for s in text_stats])  # the last position has no target
        nll = np.concatenate([s.nll()[1][:-1] for s in text_stats])
        tokens = len(nll)
        ppl, ref_ppl = math.exp(float(nll.sum()) / tokens), math.exp(float(ref_nll.sum()) / tokens)
    return FidelityReport(kl=float(kl.mean()), top1=float(agree.mean()), prompts=len(prompt_ids),
                          positions=sum(len(ids) for ids in prompt_ids), ppl=ppl, ref_ppl=ref_ppl, text_tokens=tokens)


def _text_windows(tokenizer: Tokenizer, text: str | None, window: int) -> list[list[int]]:
    if text is None:
        return []
    ids = _encode(tokenizer, text)
    if len(ids) < 2:
        raise Phi3EdgeError(f"the perplexity text has {len(ids)} token(s); it needs at least 2")
    return [chunk for chunk in windows(ids, window) if len(chunk) >= 2]


def _encode(tokenizer: Tokenizer, text: str) -> list[int]:
    # add_special_tokens: the tokenizer's own post-processor decides BOS, as in the runtime's encode().
    ids: list[int] = tokenizer.encode(text, add_special_tokens=True).ids
    return ids


def _tokenizer(path: Path) -> Tokenizer:
    if not path.is_file():
        raise ArtifactError("not found (evaluation tokenizes its prompts with it)", path)
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for malformed files
        raise ArtifactError(f"cannot be loaded by tokenizers ({str(exc).splitlines()[0]})", path) from exc


def compare_to_named_checkpoint(artifact: str | Path, checkpoint: str, *, text: str | None = None) -> FidelityReport:
    """`phi3-edge eval ARTIFACT --ref CHECKPOINT`: a local folder, hub id, short name or "demo" as the reference."""
    from phi3_edge.exporter.checkpoint import resolve_checkpoint
    from phi3_edge.exporter.config import load_spec

    resolved = resolve_checkpoint(checkpoint, require_tokenizer=False)
    tokenizers = [path for path in resolved.tokenizer_files if path.name == TOKENIZER_NAME]
    return compare_to_checkpoint(load_spec(resolved.config_path), resolved.weight_files, artifact, text=text,
                                 checkpoint_tokenizer=tokenizers[0] if tokenizers else None, verify_artifact=True)


def is_artifact_folder(path: str | Path) -> bool:
    """An exported artifact (genai_config.json inside) rather than a checkpoint."""
    return (Path(path) / "genai_config.json").is_file()

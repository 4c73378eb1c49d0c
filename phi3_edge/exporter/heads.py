"""The two ends of the decoder: token embedding and lm_head, float or quantized, shared when tied.

What users of the peers keep asking for, as options:
    lm_head     None (as the body's linears) | "float" | "int8" | "int4"
    embeddings  None (quantized exactly when the model is tied and lm_head is quantized, so the table is
                stored once) | "float" | "quantized" (GatherBlockQuantized, same bits as lm_head or int4)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from phi3_edge.errors import Phi3EdgeError
from phi3_edge.exporter.blocks.embedding import embed_tokens
from phi3_edge.exporter.blocks.linear import FloatLinear, Linear
from phi3_edge.exporter.config import Phi3Spec
from phi3_edge.exporter.graph import GraphBuilder
from phi3_edge.exporter.weight_source import WeightSource
from phi3_edge.quantize.embedding import QuantizedTable, can_quantize_table, quantize_table, table_quantizer
from phi3_edge.quantize.linear import NBitsLinear
from phi3_edge.targets.table import Target

LM_HEAD_CHOICES = ("float", "int8", "int4")
EMBEDDING_CHOICES = ("float", "quantized")
EMBED_NAME = "model.embed_tokens.weight"


@dataclass(frozen=True)
class HeadOptions:
    lm_head: str | None = None
    embeddings: str | None = None


@dataclass(frozen=True)
class Heads:
    embed: Callable[[GraphBuilder, str], str]  # input_ids -> (B, S, H)
    lm_head: Callable[[GraphBuilder, str], str]  # (B, S, H) -> logits (B, S, V)
    description: dict[str, str]  # for the manifest: what each end became


def make_heads(g: GraphBuilder, spec: Phi3Spec, target: Target, source: WeightSource, body: Linear,
               options: HeadOptions) -> Heads:
    head = _head_linear(target, source, body, options.lm_head)
    table = _quantized_table(g, spec, target, source, head, options)
    head_name = EMBED_NAME if spec.tie_word_embeddings else "lm_head.weight"
    if table is None:
        weight = g.add_initializer(source.as_is(EMBED_NAME, (spec.vocab_size, spec.hidden_size), EMBED_NAME))
        embed = lambda graph, ids: embed_tokens(graph, ids, weight)  # noqa: E731
        embedding = "float"
    else:
        embed, embedding = table.gather, f"int{table.quantizer.bits} GatherBlockQuantized"
    if table is not None and spec.tie_word_embeddings and isinstance(head, NBitsLinear):
        return Heads(embed, table.matmul, {"embeddings": embedding, "lm_head": f"{embedding} table, shared"})
    lm_head = lambda graph, x: head(graph, x, head_name, spec.hidden_size, spec.vocab_size)  # noqa: E731
    return Heads(embed, lm_head, {"embeddings": embedding, "lm_head": _describe(head)})


def _head_linear(target: Target, source: WeightSource, body: Linear, choice: str | None) -> Linear:
    if choice is None:
        return body
    if choice not in LM_HEAD_CHOICES:
        raise Phi3EdgeError(f"--lm-head must be one of {', '.join(LM_HEAD_CHOICES)}, got {choice!r}")
    if choice == "float":
        return FloatLinear(source)
    return NBitsLinear(source, bits=int(choice[3:]), block_size=target.block_size or 32,
                       accuracy_level=target.accuracy_level or 0, symmetric=target.symmetric, algo="rtn")


def _quantized_table(g: GraphBuilder, spec: Phi3Spec, target: Target, source: WeightSource, head: Linear,
                     options: HeadOptions) -> QuantizedTable | None:
    if options.embeddings not in (None, *EMBEDDING_CHOICES):
        raise Phi3EdgeError(f"--embeddings must be one of {', '.join(EMBEDDING_CHOICES)}, got {options.embeddings!r}")
    wanted = options.embeddings == "quantized" or (
        options.embeddings is None and spec.tie_word_embeddings and isinstance(head, NBitsLinear))
    if not wanted:
        return None
    bits = head.bits if isinstance(head, NBitsLinear) else (target.bits or 4)
    block = head.block_size if isinstance(head, NBitsLinear) else (target.block_size or 32)
    if not can_quantize_table(spec.hidden_size, block):
        if options.embeddings == "quantized":
            raise Phi3EdgeError(f"cannot quantize the embeddings: hidden size {spec.hidden_size} is not a "
                                f"multiple of the block size {block}")
        return None
    quantizer = table_quantizer(source, bits, block, target.accuracy_level or 0, target.symmetric)
    return quantize_table(g, quantizer, EMBED_NAME, spec.vocab_size, spec.hidden_size)


def _describe(linear: Linear) -> str:
    if isinstance(linear, NBitsLinear):
        return f"int{linear.bits} MatMulNBits ({linear.algo}, block {linear.block_size})"
    return "float MatMul"

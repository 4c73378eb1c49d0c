"""The two ends of the decoder: token embedding and lm_head, float or quantized, shared when tied.

What each end becomes is the QuantRecipe's decision (quantize/recipe.py: `lm_head`, `embeddings`,
`shared_table`); this module only emits it:

    float table:      input_ids ─► Gather ─► (B, S, H)              ... (B, S, H) ─► MatMul | MatMulNBits ─► logits
    quantized table:  input_ids ─► GatherBlockQuantized ─► (B, S, H) ... (B, S, H) ─► MatMulNBits(same codes) ─► logits
                                                                           (shared_table: tied models store it once)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from phi3_edge.exporter.blocks.embedding import embed_tokens
from phi3_edge.exporter.blocks.quantized_table import quantize_table
from phi3_edge.exporter.blocks.recipe_linear import linear_for
from phi3_edge.exporter.config import Phi3Spec
from phi3_edge.exporter.graph import GraphBuilder
from phi3_edge.exporter.weight_source import WeightSource
from phi3_edge.quantize.recipe import LinearRecipe, QuantRecipe

EMBED_NAME = "model.embed_tokens.weight"
LM_HEAD_NAME = "lm_head.weight"


@dataclass(frozen=True)
class Heads:
    embed: Callable[[GraphBuilder, str], str]  # input_ids -> (B, S, H)
    lm_head: Callable[[GraphBuilder, str], str]  # (B, S, H) -> logits (B, S, V)
    description: dict[str, str]  # for the manifest: what each end became, from the ops emitted


def make_heads(g: GraphBuilder, spec: Phi3Spec, source: WeightSource, recipe: QuantRecipe) -> Heads:
    vocab, hidden = spec.vocab_size, spec.hidden_size
    if recipe.embeddings is None:
        weight = g.add_initializer(source.as_is(EMBED_NAME, (vocab, hidden), EMBED_NAME))
        embed: Callable[[GraphBuilder, str], str] = lambda graph, ids: embed_tokens(graph, ids, weight)  # noqa: E731
        embedding = "float"
    else:
        table = quantize_table(g, source, recipe.embeddings, EMBED_NAME, vocab, hidden)
        embed, embedding = table.gather, f"int{recipe.embeddings.bits} GatherBlockQuantized"
        if recipe.shared_table:
            return Heads(embed, table.matmul, {"embeddings": embedding, "lm_head": f"{embedding} table, shared"})
    head = linear_for(source, recipe.lm_head)
    head_name = EMBED_NAME if spec.tie_word_embeddings else LM_HEAD_NAME
    lm_head = lambda graph, x: head(graph, x, head_name, hidden, vocab)  # noqa: E731
    return Heads(embed, lm_head, {"embeddings": embedding, "lm_head": describe(recipe.lm_head)})


def describe(recipe: LinearRecipe | None) -> str:
    """The manifest's words for a Linear's format (the op it emits)."""
    return "float MatMul" if recipe is None else recipe.describe()

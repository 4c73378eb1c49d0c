"""Measured sensitivity: what int4 vs int8 costs for each body Linear and for the tied table, on calibration text.

    calibration windows ─► embed ─► layer 0 ─► layer 1 ─► ...            (the stream runs the *narrow* layers)
                                     │ per layer, from the same input states:
                                     │   fp32 layer ─► reference output r
                                     │   all narrow ─► output n            error e_n = n - r
                                     │   one tensor wide, rest narrow ─► w_i   error e_i = w_i - r   (x 4 Linears)
                                     ▼
                         final stream s, final norm weight g ─► every error scored in one unit (below)

The unit, comparable across tensors: the error energy each layer adds to the residual stream, as the final
RMSNorm weighs it (first order: an error written into the residual stream is carried to the last layer,
then scaled by g / rms(s_t) like the stream itself), relative to the energy of the normalised final state:

    score(e) = sum_t |e_t * g|^2 / rms(s_t)^2  /  sum_t |s_t * g|^2 / rms(s_t)^2

The tied table is one candidate for both of its uses: its embedding-row error enters the stream at layer 0
(scored the same way) and its lm_head error is tr(dW H dW^T) / tr(W H W^T) with H = sum x^T x over the final
normalised states x: the relative error energy of the logits, the same kind of ratio one step further on.
A layer-local measure (tr(dW H dW^T) / tr(W H W^T) per Linear) is not comparable across tensors: a q/k/v
error is filtered by the softmax, a down_proj error reaches the stream whole, and layers differ in scale.

Cost: six layer runs per layer (fp32, narrow, four widened) over the calibration windows; memory: the states,
one layer's weights in three forms, and T floats per candidate.

The first-order carry is where the unit is weakest: on SmolLM2-135M some layers' errors grow several-fold
on their way to the end (layer 11) and it then prefers the last layers. `propagate` measures that transfer
(the fp32 layers after the error's entry point, run on a few windows from both the fp32 and the narrow
stream there) and scales the first-order score by it:

    layer l's four candidates     entry after layer l    transfer through layers l+1 .. L-1
    the table's embedding rows    entry before layer 0   transfer through layers 0 .. L-1 (like a layer's)
    the table's lm_head part      at the logits          none: measured where it acts, left as is

The export uses PROPAGATE_WINDOWS. The embedding rows are small next to the final stream, so their first-order
score is tiny, but layer 0 reads them normalised: on SmolLM2-135M (AWQ-folded) their measured transfer is
x45000, and the table's score doubles (its lm_head part as large again); unpropagated it ranked last of 121.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from phi3_edge.exporter.config import Phi3Spec
from phi3_edge.quantize.blockwise import dequantize, quantize_hqq, quantize_rtn
from phi3_edge.quantize.recipe import LinearRecipe, QuantRecipe, wide_recipe, widen
from phi3_edge.quantize.sensitivity import Candidate, budget_bytes, choose_wide, matmul_nbits_bytes, output_energy
from phi3_edge.reference import calibrate as cal
from phi3_edge.reference.checkpoint_side import EMBED_NAME, CheckpointSide, WeightMap, final_norm
from phi3_edge.reference.state import State

# Windows on which the export measures each layer's transfer to the final state (measure_sensitivity's
# `propagate`): on SmolLM2-135M, at the bytes of llama.cpp's fixed rule, KL 0.221 with 2 windows against 0.277
# assuming the error is carried unchanged (the fixed rule: 0.270); its cost is L^2 layer runs on them.
PROPAGATE_WINDOWS = 1
HEAD_ROWS = 4096  # table rows per step of the lm_head error (a (rows, H) float64 difference at a time)


@dataclass(frozen=True)
class TableScore:
    """The table / lm_head candidate's score in its parts, each (narrow, wide): the candidate's error is
    head + transfer x embedding (embedding (0, 0) unless the table is shared with the embeddings)."""

    head: tuple[float, float]  # tr(dW H dW^T) / tr(W H W^T) at the logits
    embedding: tuple[float, float]  # first-order score of the embedding rows' error entering layer 0
    transfer: float = 1.0  # measured / first-order for the embedding part (`propagate`; 1.0 = carried unchanged)

    def error(self, wide: bool) -> float:
        return self.head[wide] + self.transfer * self.embedding[wide]


@dataclass
class Sensitivity:
    """Every candidate's measured score at both widths, and the bytes of the all-narrow weights."""

    candidates: list[Candidate] = field(default_factory=list)
    plain_bytes: int = 0  # weight bytes of the export without widening (quantized tensors + float norms)
    table: str | None = None  # the table / lm_head candidate's name, if there is one
    table_score: TableScore | None = None  # its score's parts


@dataclass(frozen=True)
class FinalWeighting:
    """What every score is weighed by: the final norm weight g and the final stream (see module doc)."""

    g: np.ndarray  # (H,)
    normed: list[np.ndarray]  # the normalised final states, (S, H) each
    inv_rms2: np.ndarray  # (T,) 1 / rms(s_t)^2
    total: float  # sum_t |s_t * g|^2 / rms(s_t)^2

    @property
    def g2(self) -> np.ndarray:
        out: np.ndarray = self.g.astype(np.float64) ** 2  # (H,)
        return out

    def score(self, weighted: np.ndarray) -> float:
        """sum_t weighted_t / rms(s_t)^2 / total, for weighted_t = |e_t * g|^2: (T,)."""
        return float(weighted @ self.inv_rms2) / self.total


def quantizer(recipe: LinearRecipe) -> Callable[[np.ndarray], np.ndarray]:
    """The dequantized weights a recipe gives (calibrated algorithms measured with their RTN grid)."""
    if recipe.algo == "hqq":  # the recipe's zero-point format: integer ("uint") and float HQQ differ in grid
        return lambda w: dequantize(quantize_hqq(w, recipe.bits, recipe.block_size, zero_points=recipe.zero_points))
    return lambda w: dequantize(quantize_rtn(w, recipe.bits, recipe.block_size, recipe.symmetric))


def recipe_bytes(n: int, k: int, recipe: LinearRecipe | None) -> int:
    return n * k * 4 if recipe is None else matmul_nbits_bytes(n, k, recipe.bits, recipe.block_size,
                                                                 recipe.zero_points)


def linear_shapes(spec: Phi3Spec, layer: int) -> dict[str, tuple[int, int]]:
    """(N, K) of a layer's Linears, by checkpoint name (packed qkv and gate_up, as the reference plans them)."""
    q, kv = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
    h, i = spec.hidden_size, spec.intermediate_size
    qkv, o, gate_up, down = cal.linear_names(layer)
    return {qkv: (q + 2 * kv, h), o: (h, q), gate_up: (2 * i, h), down: (h, i)}


def _stream(state: State) -> np.ndarray:
    """The residual stream after a layer: (S, H) = hidden + residual."""
    out: np.ndarray = state.hidden[0] if state.residual is None else state.hidden[0] + state.residual[0]
    return out


def _weighted_error(out: Sequence[State], ref: Sequence[State], g2: np.ndarray) -> np.ndarray:
    """Per token |(out - ref) * g|^2 over all sequences: (T,)."""
    return np.concatenate([((_stream(a) - _stream(b)).astype(np.float64) ** 2) @ g2 for a, b in zip(out, ref,
                                                                                                     strict=True)])


def measure_sensitivity(side: CheckpointSide, sequences: Sequence[Sequence[int]], recipe: QuantRecipe,
                        on_layer: Callable[[int], None] | None = None, base: WeightMap | None = None,
                        propagate: int = 0) -> Sensitivity:
    """Scores of every body Linear the recipe quantizes below 8 bits, and of the table/lm_head (see module doc).

    `base`: the float weights to start from instead of the checkpoint's (AWQ's folded ones). `side` must carry
    no weight_map of its own: this installs one substituting the layer being measured. `propagate` > 0: each
    layer's scores are scaled by how its all-narrow error really reaches the final state, measured by running
    the fp32 layers after it on that many windows (L^2 layer runs on them) instead of assuming it is carried."""
    spec = side.spec
    start = base or (lambda name, rows: rows)
    g = start("model.norm.weight", side.store.read_rows(side.store.info("model.norm.weight", (spec.hidden_size,)),
                                                          0, spec.hidden_size))
    g2 = g.astype(np.float64) ** 2  # (H,)
    current: dict[str, np.ndarray] = {}
    side.weight_map = lambda name, rows: current[name] if name in current else start(name, rows)
    states = [side.embed(ids) for ids in sequences]
    narrow_err: dict[str, np.ndarray] = {}  # candidate -> (T,) weighted error with it narrow
    wide_err: dict[str, np.ndarray] = {}
    extra: dict[str, int] = {}
    transfer: dict[str, float] = {}  # candidate -> measured / first-order error at the final state (propagate)
    plain = 0
    try:
        for layer in range(side.num_layers):
            current.clear()
            reference = side.run_layer(layer, states)
            weights, narrow, wide = {}, {}, {}
            for name, (n, k) in linear_shapes(spec, layer).items():
                chosen = recipe.for_tensor(name)
                plain += recipe_bytes(n, k, chosen)
                if chosen is None or chosen.bits >= 8:
                    continue
                weights[name] = start(name, side.store.read_rows(side.store.info(name, (n, k)), 0, n))  # (N, K)
                narrow[name] = quantizer(chosen)(weights[name])
                wide[name] = quantizer(wide_recipe(chosen))(weights[name])
                extra[name] = recipe_bytes(n, k, wide_recipe(chosen)) - recipe_bytes(n, k, chosen)
            current.update(narrow)
            out_narrow = side.run_layer(layer, states)
            all_narrow = _weighted_error(out_narrow, reference, g2)
            for name in narrow:
                current.update({**narrow, name: wide[name]})
                narrow_err[name] = all_narrow
                wide_err[name] = _weighted_error(side.run_layer(layer, states), reference, g2)
            if propagate and narrow:
                current.clear()
                factor = _transfer(side, layer + 1, reference[:propagate], out_narrow[:propagate], g)
                transfer.update(dict.fromkeys(narrow, factor))
            states = out_narrow
            if on_layer is not None:
                on_layer(layer)
        current.clear()
        result = Sensitivity()
        final = _final_weighting(states, g, spec.rms_norm_eps)
        for name in narrow_err:
            scale = transfer.get(name, 1.0)
            result.candidates.append(Candidate(name, final.score(narrow_err[name]) * scale,
                                               final.score(wide_err[name]) * scale, extra[name]))
        plain += 4 * spec.hidden_size * (2 * spec.num_layers + 1)  # the norms stay float
        plain += _table_candidate(side, recipe, sequences, final, result, propagate)
        result.plain_bytes = plain
        return result
    finally:
        side.weight_map = None


def _final_weighting(states: Sequence[State], g: np.ndarray, eps: float) -> FinalWeighting:
    normed = [final_norm(state, g, eps) for state in states]  # (S, H) each
    inv_rms2 = np.concatenate([(_stream(s).astype(np.float64) ** 2).mean(axis=-1) + eps
                               for s in states]) ** -1.0  # (T,)
    total = sum(float(np.sum(x.astype(np.float64) ** 2)) for x in normed)  # |normalised final states|^2
    return FinalWeighting(g, normed, inv_rms2, total)


def _transfer(side: CheckpointSide, first: int, reference: Sequence[State], narrow: Sequence[State],
              g: np.ndarray) -> float:
    """|final_norm(b) - final_norm(a)|^2 after the fp32 layers first .. L-1, over its first-order estimate
    |e * g|^2 / rms(a)^2 from the error e entering layer `first` (1.0 = carried unchanged); `reference` and
    `narrow` are the states entering it (first 0: the embeddings, residual None)."""
    eps = side.spec.rms_norm_eps
    local = [(_stream(n) - _stream(r)).astype(np.float64) for n, r in zip(narrow, reference, strict=True)]
    a, b = list(reference), list(narrow)
    for later in range(first, side.num_layers):
        a, b = side.run_layer(later, a), side.run_layer(later, b)
    final = sum(float(np.sum((final_norm(y, g, eps) - final_norm(x, g, eps)).astype(np.float64) ** 2))
                for x, y in zip(a, b, strict=True))
    first_order = sum(float(((e ** 2) @ (g.astype(np.float64) ** 2)) @
                            (1.0 / ((_stream(x).astype(np.float64) ** 2).mean(axis=-1) + eps)))
                      for e, x in zip(local, a, strict=True))
    return final / first_order if first_order else 1.0


def _table_candidate(side: CheckpointSide, recipe: QuantRecipe, sequences: Sequence[Sequence[int]],
                     final: FinalWeighting, result: Sensitivity, propagate: int = 0) -> int:
    """Adds the table / lm_head candidate (when lm_head is quantized below 8 bits); returns their plain bytes."""
    spec = side.spec
    v, h = spec.vocab_size, spec.hidden_size
    head = recipe.lm_head
    plain = recipe_bytes(v, h, head) + (0 if recipe.shared_table else recipe_bytes(v, h, recipe.embeddings))
    if head is None or head.bits >= 8:
        return plain
    name = EMBED_NAME if spec.tie_word_embeddings else "lm_head.weight"
    info = side.store.info(name, (v, h))
    hess = sum(x.astype(np.float64).T @ x.astype(np.float64) for x in final.normed)  # (H, H)
    seen = sorted({i for ids in sequences for i in ids}) if recipe.shared_table else []
    raw: dict[int, np.ndarray] = {}  # token id -> its float embedding row (H,)
    heads: list[float] = []  # (narrow, wide) of each part
    embeds: list[float] = []
    quantized: list[dict[int, np.ndarray]] = []
    for chosen in (head, wide_recipe(head)):
        noise = signal = 0.0
        rows: dict[int, np.ndarray] = {}  # token id -> its quantized embedding row (H,)
        for start in range(0, v, HEAD_ROWS):
            w = side.store.read_rows(info, start, min(v, start + HEAD_ROWS))  # (rows, H)
            q = quantizer(chosen)(w)
            noise += output_energy(q - w, hess)
            signal += output_energy(w, hess)
            # Widening the shared table also removes its embedding-row error: keep the rows the windows read.
            kept = [i for i in seen if start <= i < start + len(w)]
            raw.update({i: w[i - start] for i in kept})
            rows.update({i: q[i - start] for i in kept})
        heads.append(noise / signal if signal else 0.0)
        embeds.append(_embedding_score(rows, raw, sequences, final) if rows else 0.0)
        quantized.append(rows)
    factor = 1.0
    if propagate and raw:  # the narrow rows' error entering layer 0, run through every fp32 layer
        windows = sequences[:propagate]
        factor = _transfer(side, 0, _embedded(raw, windows), _embedded(quantized[0], windows), final.g)
    score = TableScore((heads[0], heads[1]), (embeds[0], embeds[1]), factor)
    extra = recipe_bytes(v, h, wide_recipe(head)) - recipe_bytes(v, h, head)
    result.candidates.append(Candidate(name, score.error(False), score.error(True), extra))
    result.table, result.table_score = name, score
    return plain


def _embedded(rows: dict[int, np.ndarray], sequences: Sequence[Sequence[int]]) -> list[State]:
    """The states entering layer 0 with these embedding rows: (1, S, H) each, no residual yet."""
    return [State(np.stack([rows[i] for i in ids]).astype(np.float32)[None], None) for ids in sequences]


def _embedding_score(rows: dict[int, np.ndarray], raw: dict[int, np.ndarray], sequences: Sequence[Sequence[int]],
                     final: FinalWeighting) -> float:
    """First-order score of the embedding rows' error (quantized - float), entering the stream at layer 0."""
    error = {i: (rows[i] - raw[i]).astype(np.float64) for i in rows}  # token id -> (H,)
    weighted = np.concatenate([(np.stack([error[i] for i in ids]) ** 2) @ final.g2 for ids in sequences])  # (T,)
    return final.score(weighted)


def measured_recipe(side: CheckpointSide, sequences: Sequence[Sequence[int]], recipe: QuantRecipe,
                    on_layer: Callable[[int], None] | None = None) -> tuple[QuantRecipe, dict[str, Any]]:
    """--mixed-precision: the recipe with the measured choice widened to int8 within recipe.size_budget, and
    manifest.json's record of it (the budget, the bytes, each chosen tensor with its measured gain)."""
    assert recipe.size_budget is not None  # called for a mixed-precision recipe only
    measured = measure_sensitivity(side, sequences, recipe, on_layer, propagate=PROPAGATE_WINDOWS)
    allowed = budget_bytes(measured.plain_bytes, recipe.size_budget)
    chosen = choose_wide(measured.candidates, allowed)
    by_name = {c.name: c for c in measured.candidates}
    record = {"size_budget": recipe.size_budget, "plain_weight_bytes": measured.plain_bytes,
              "budget_bytes": allowed, "extra_bytes": sum(by_name[n].extra_bytes for n in chosen),
              "metric": "error energy of the normalised final state, each layer's transfer (and the tied "
                        f"table's embedding rows' through every layer) measured on {PROPAGATE_WINDOWS} window(s) "
                        "(reference/sensitivity_pass.py)",
              "candidates": len(measured.candidates),
              "chosen": [{"tensor": n, "int4_error": by_name[n].narrow_error, "int8_error": by_name[n].wide_error,
                          "extra_bytes": by_name[n].extra_bytes} for n in chosen]}
    score = measured.table_score
    if score is not None:  # the table's error in its parts: (int4, int8) each, and the embedding rows' transfer
        record["table"] = {"tensor": measured.table, "lm_head_error": list(score.head),
                           "embedding_error": list(score.embedding), "embedding_transfer": score.transfer}
    return widen(recipe, chosen, measured.table), record

"""The measured sensitivity pass: int4 vs int8 scores per body Linear and for the table, on the streamed reference."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from phi3_edge.exporter.build import model_shape
from phi3_edge.exporter.checkpoint import resolve_checkpoint
from phi3_edge.exporter.config import load_spec
from phi3_edge.quantize.blockwise import dequantize, quantize_hqq
from phi3_edge.quantize.recipe import LinearRecipe, QuantOptions, QuantRecipe, decide_recipe, wide_recipe
from phi3_edge.quantize.sensitivity import budget_bytes, choose_wide, matmul_nbits_bytes
from phi3_edge.reference import calibrate as cal
from phi3_edge.reference.checkpoint_side import EMBED_NAME, CheckpointSide, final_norm
from phi3_edge.reference.sensitivity_pass import (
    PROPAGATE_WINDOWS,
    Sensitivity,
    linear_shapes,
    measure_sensitivity,
    measured_recipe,
    quantizer,
    recipe_bytes,
)
from phi3_edge.targets.table import TARGETS

PLANTED = "model.layers.0.mlp.down_proj.weight"


def windows(vocab: int) -> list[list[int]]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, vocab, 48).tolist() for _ in range(3)]


def cpu_int4_recipe(folder: Path, lm_head: str | None = None) -> QuantRecipe:
    """cpu-int4's --mixed-precision recipe; lm_head None: the target's default (int8 head and tied table)."""
    spec = load_spec(folder / "config.json")
    return decide_recipe(TARGETS["cpu-int4"], QuantOptions(mixed_precision=True, lm_head=lm_head), model_shape(spec))


def measure(folder: Path, propagate: int = 0, lm_head: str | None = None) -> tuple[Sensitivity, int]:
    checkpoint = resolve_checkpoint(str(folder))
    spec = load_spec(checkpoint.config_path)
    with CheckpointSide(spec, checkpoint.weight_files) as side:
        measured = measure_sensitivity(side, windows(spec.vocab_size), cpu_int4_recipe(folder, lm_head),
                                       propagate=propagate)
        assert side.weight_map is None  # the pass's substitution does not outlive it
    return measured, spec.num_layers


def nbits_bytes(n: int, k: int, recipe: LinearRecipe) -> int:
    return matmul_nbits_bytes(n, k, recipe.bits, recipe.block_size, recipe.zero_points)


def test_every_int4_tensor_and_the_table_is_a_candidate_with_its_int8_bytes(tiny_checkpoint) -> None:
    """An int4 head (pinned: the target's default head is int8): every int4 tensor and the tied table compete,
    each with the bytes its own format (gate_up's block-64 override included) adds at int8."""
    folder = tiny_checkpoint("partial_tied_wide")
    measured, layers = measure(folder, lm_head="int4")
    recipe = cpu_int4_recipe(folder, "int4")
    assert recipe.lm_head is not None and recipe.lm_head.bits == 4 and recipe.shared_table
    spec = load_spec(folder / "config.json")
    shapes = {name: nk for layer in range(layers) for name, nk in linear_shapes(spec, layer).items()}
    formats = {name: recipe.for_tensor(name) for name in shapes} | {EMBED_NAME: recipe.lm_head}
    assert any(f is not None and f.block_size != recipe.lm_head.block_size for f in formats.values())  # overrides
    by_name = {c.name: c for c in measured.candidates}
    assert set(by_name) == set(shapes) | {EMBED_NAME} and measured.table == EMBED_NAME  # tied: one table
    for name, (n, k) in {**shapes, EMBED_NAME: (spec.vocab_size, spec.hidden_size)}.items():
        narrow = formats[name]
        assert narrow is not None and narrow.bits == 4
        assert by_name[name].extra_bytes == nbits_bytes(n, k, wide_recipe(narrow)) - nbits_bytes(n, k, narrow)
        assert by_name[name].wide_error < by_name[name].narrow_error  # int8 measured closer to fp32 than int4
    table = nbits_bytes(spec.vocab_size, spec.hidden_size, recipe.lm_head)  # stored once: shared with lm_head
    norms = 4 * spec.hidden_size * (2 * layers + 1)
    body = sum(nbits_bytes(n, k, f) for name, (n, k) in shapes.items() if (f := formats[name]) is not None)
    assert measured.plain_bytes == body + table + norms


def test_an_int8_table_is_not_a_candidate_and_counts_at_its_bytes(tiny_checkpoint) -> None:
    """cpu-int4's default head (and tied table) is already int8: nothing to widen there, only body Linears."""
    folder = tiny_checkpoint("partial_tied_wide")
    measured, layers = measure(folder)
    recipe = cpu_int4_recipe(folder)
    assert recipe.lm_head is not None and recipe.lm_head.bits == 8 and recipe.shared_table
    spec = load_spec(folder / "config.json")
    shapes = {name: nk for layer in range(layers) for name, nk in linear_shapes(spec, layer).items()}
    assert {c.name for c in measured.candidates} == set(shapes) and measured.table is None
    assert wide_recipe(recipe.lm_head) == recipe.lm_head  # widening it would change nothing
    # The plain bytes hold the shared table once, in its int8 format: an int4 head's export differs by exactly that.
    int4_head = cpu_int4_recipe(folder, "int4").lm_head
    assert int4_head is not None
    with_int4_head, _ = measure(folder, lm_head="int4")
    v, h = spec.vocab_size, spec.hidden_size
    table_delta = nbits_bytes(v, h, recipe.lm_head) - nbits_bytes(v, h, int4_head)
    assert measured.plain_bytes - with_int4_head.plain_bytes == table_delta > 0


@pytest.mark.parametrize("propagate", [0, 2])
def test_a_planted_sensitive_tensor_is_chosen_first(tiny_checkpoint, tmp_path: Path, propagate: int) -> None:
    """A function-preserving plant: one MLP channel's down_proj column x100 and its up row / 100 leave the fp32
    model as it was, but every int4 block holding that column now rounds its 31 neighbours on a far coarser
    grid (int8 still resolves them): that down projection must lead the measured gain per byte."""
    source = tiny_checkpoint("gqa")
    planted = tmp_path / "planted"
    shutil.copytree(source, planted)
    tensors = load_file(str(planted / "model.safetensors"))
    down, gate_up = tensors[PLANTED].copy(), tensors[PLANTED.replace("down_proj", "gate_up_proj")].copy()
    inter = down.shape[1]
    down[:, 0] *= 100  # (H, I): channel 0's column
    gate_up[inter] /= 100  # (2I, H): gate rows then up rows; act_0 = silu(gate_0) * up_0 shrinks 100x
    save_file({**tensors, PLANTED: down, PLANTED.replace("down_proj", "gate_up_proj"): gate_up},
              str(planted / "model.safetensors"), metadata={"format": "pt"})
    measured, _ = measure(planted, propagate)
    best = max(measured.candidates, key=lambda c: c.gain_per_byte)
    assert best.name == PLANTED
    assert choose_wide(measured.candidates, best.extra_bytes)[0] == PLANTED
    plain, _ = measure(source, propagate)
    assert max(plain.candidates, key=lambda c: c.gain_per_byte).name != PLANTED  # the planting made it so


def test_choice_stays_within_the_budget(tiny_checkpoint) -> None:
    measured, _ = measure(tiny_checkpoint("gqa"))
    extra = {c.name: c.extra_bytes for c in measured.candidates}
    for factor in (1.0, 1.05, 1.2, 2.0):
        allowed = budget_bytes(measured.plain_bytes, factor)
        chosen = choose_wide(measured.candidates, allowed)
        assert sum(extra[n] for n in chosen) <= allowed
    assert choose_wide(measured.candidates, budget_bytes(measured.plain_bytes, 1.0)) == []
    assert set(choose_wide(measured.candidates, budget_bytes(measured.plain_bytes, 3.0))) == set(extra)


def test_linear_shapes_match_the_checkpoint(tiny_checkpoint) -> None:
    checkpoint = resolve_checkpoint(str(tiny_checkpoint("gqa")))
    spec = load_spec(checkpoint.config_path)
    with CheckpointSide(spec, checkpoint.weight_files) as side:
        for name, (n, _k) in linear_shapes(spec, 0).items():
            assert side.store.rows_of(name) == n
    assert list(linear_shapes(spec, 1)) == cal.linear_names(1)


def test_propagation_rescales_whole_layers_and_leaves_an_untied_lm_head(tiny_checkpoint) -> None:
    """propagate: one measured factor per layer (its four candidates keep their ratios); an untied lm_head is
    scored at the logits, where it acts: nothing to propagate."""
    first, layers = measure(tiny_checkpoint("gqa"), lm_head="int4")  # an int4 head: the table is a candidate
    carried, _ = measure(tiny_checkpoint("gqa"), propagate=2, lm_head="int4")
    assert first.table == "lm_head.weight" and first.candidates[-1].name == first.table
    pairs = list(zip(first.candidates, carried.candidates, strict=True))
    assert [a.name for a, _ in pairs] == [b.name for _, b in pairs]
    for layer in range(layers):
        ratios = {round(r, 9) for a, b in pairs if f".{layer}." in a.name
                  for r in (b.narrow_error / a.narrow_error, b.wide_error / a.wide_error)}
        assert len(ratios) == 1 and next(iter(ratios)) > 0  # narrow and wide scores of every tensor alike
    assert pairs[-1][0] == pairs[-1][1]  # the lm_head candidate is scored at the end either way
    assert carried.table_score is not None and carried.table_score.embedding == (0.0, 0.0)


def test_propagation_scales_the_tied_tables_embedding_part_only(tiny_checkpoint) -> None:
    """Tied and shared: the table's embedding rows' error enters the stream before layer 0 and is propagated
    through every layer (its own measured factor); its lm_head part, measured at the logits, stays as is."""
    folder = tiny_checkpoint("partial_tied")
    first, _ = measure(folder, lm_head="int4")
    carried, _ = measure(folder, propagate=2, lm_head="int4")
    a, b = first.table_score, carried.table_score
    assert first.table == carried.table == EMBED_NAME and a is not None and b is not None
    assert a.transfer == 1.0 and b.transfer > 0 and not np.isclose(b.transfer, 1.0)
    assert a.head == b.head and a.embedding == b.embedding  # the parts' first-order scores are the same
    assert all(part[0] > part[1] > 0 for part in (a.head, a.embedding))  # int8 closer than int4 in both uses
    table = {c.name: c for c in carried.candidates}[EMBED_NAME]
    assert table.narrow_error == b.head[0] + b.transfer * b.embedding[0]
    assert table.wide_error == b.head[1] + b.transfer * b.embedding[1]


def test_the_embedding_transfer_is_measured_from_the_int4_tables_rows(tiny_checkpoint) -> None:
    """The factor the table's embedding part is scaled by, recomputed from the model's own embed of an int4
    table (a weight_map on the embedding rows) run through every fp32 layer: the pass's narrow states are those."""
    folder = tiny_checkpoint("partial_tied")
    measured, _ = measure(folder, propagate=1, lm_head="int4")
    assert measured.table_score is not None
    head = cpu_int4_recipe(folder, "int4").lm_head
    assert head is not None
    checkpoint = resolve_checkpoint(str(folder))
    spec = load_spec(checkpoint.config_path)
    ids = windows(spec.vocab_size)[0]
    finals = []
    for table in (None, quantizer(head)):
        def mapped(name: str, rows: np.ndarray, table=table) -> np.ndarray:
            return table(rows) if table is not None and name == EMBED_NAME else rows

        with CheckpointSide(spec, checkpoint.weight_files, weight_map=mapped) as side:
            states = [side.embed(ids)]
            entering = states[0].hidden[0].astype(np.float64)  # (S, H)
            for layer in range(spec.num_layers):
                states = side.run_layer(layer, states)
            g = side.store.read_rows(side.store.info("model.norm.weight", (spec.hidden_size,)), 0, spec.hidden_size)
        finals.append((entering, states[0], final_norm(states[0], g, spec.rms_norm_eps)))
    (e_ref, s_ref, n_ref), (e_q, _, n_q) = finals
    stream = s_ref.hidden[0] + s_ref.residual[0]  # (S, H): the fp32 final stream
    first_order = float((((e_q - e_ref) ** 2) @ (g.astype(np.float64) ** 2)) @
                        (1.0 / ((stream.astype(np.float64) ** 2).mean(axis=-1) + spec.rms_norm_eps)))
    measured_energy = float(np.sum((n_q - n_ref).astype(np.float64) ** 2))
    assert np.isclose(measured.table_score.transfer, measured_energy / first_order, rtol=1e-6)


def test_a_table_dominant_through_its_embedding_rows_ranks_first_only_propagated(tiny_checkpoint,
                                                                                 tmp_path: Path) -> None:
    """A heavy-tailed tied table (Student t, 1.5 degrees of freedom: int4 blocks holding an outlier round the
    rest coarsely) and layer 0's qkv already on its int4 grid (nothing to gain there). The table's int4 error
    matters through its embedding rows, which layer 0 reads normalised, so it is amplified on the way to the
    final state: propagated, the table leads the gain per byte and is the first choice within its own bytes;
    scored first-order (the error carried unchanged from layer 0) it is not."""
    source = tiny_checkpoint("partial_tied")
    planted = tmp_path / "planted"
    shutil.copytree(source, planted)
    tensors = load_file(str(planted / "model.safetensors"))
    table = tensors[EMBED_NAME]
    heavy = np.random.default_rng(1).standard_t(1.5, table.shape) * table.std()  # (V, H)
    qkv = "model.layers.0.self_attn.qkv_proj.weight"
    narrow = cpu_int4_recipe(source, "int4").for_tensor(qkv)
    assert narrow is not None
    save_file({**tensors, EMBED_NAME: heavy.astype(np.float32), qkv: quantizer(narrow)(tensors[qkv])},
              str(planted / "model.safetensors"), metadata={"format": "pt"})
    measured, _ = measure(planted, propagate=1, lm_head="int4")
    best = max(measured.candidates, key=lambda c: c.gain_per_byte)
    assert best.name == measured.table == EMBED_NAME
    assert choose_wide(measured.candidates, best.extra_bytes)[0] == EMBED_NAME
    score = measured.table_score
    assert score is not None and score.transfer * score.embedding[0] > score.head[0]  # its embedding part leads
    first_order, _ = measure(planted, lm_head="int4")
    assert max(first_order.candidates, key=lambda c: c.gain_per_byte).name != EMBED_NAME


def test_the_manifest_record_holds_the_tables_score_parts(tiny_checkpoint) -> None:
    """measured_recipe's record (manifest.json) states the table's parts as measured at the export's windows."""
    folder = tiny_checkpoint("partial_tied")
    checkpoint = resolve_checkpoint(str(folder))
    spec = load_spec(checkpoint.config_path)
    with CheckpointSide(spec, checkpoint.weight_files) as side:
        _, record = measured_recipe(side, windows(spec.vocab_size), cpu_int4_recipe(folder, "int4"))
    measured, _ = measure(folder, propagate=PROPAGATE_WINDOWS, lm_head="int4")
    score = measured.table_score
    assert score is not None and score.transfer != 1.0
    assert record["table"] == {"tensor": EMBED_NAME, "lm_head_error": list(score.head),
                               "embedding_error": list(score.embedding), "embedding_transfer": score.transfer}


@pytest.mark.parametrize("zero_points", ["uint", "float"])
def test_hqq_is_measured_and_counted_in_the_recipes_zero_point_format(zero_points: str) -> None:
    """An HQQ recipe's scores use its own zero-point grid (integer and float HQQ round differently) and its
    bytes count that zero-point input (a uint one is 4 bits per block here, a float one 4 bytes)."""
    w = np.random.default_rng(0).normal(0, 1, (8, 64)).astype(np.float32)  # (N, K)
    recipe = LinearRecipe(4, 32, 4, symmetric=False, algo="hqq", zero_points=zero_points)
    expected = dequantize(quantize_hqq(w, 4, 32, zero_points=zero_points))
    other = dequantize(quantize_hqq(w, 4, 32, zero_points="float" if zero_points == "uint" else "uint"))
    assert np.array_equal(quantizer(recipe)(w), expected) and not np.array_equal(expected, other)
    assert recipe_bytes(8, 64, recipe) == matmul_nbits_bytes(8, 64, 4, 32, zero_points)

"""The quantization recipe: decided once from the target and the options, pure data, validated up front."""

from __future__ import annotations

from dataclasses import replace

import pytest

from phi3_edge.errors import Phi3EdgeError
from phi3_edge.quantize import QUANT_ALGOS
from phi3_edge.quantize.recipe import (
    DEFAULT_SIZE_BUDGET,
    LinearRecipe,
    ModelShape,
    QuantOptions,
    RecipeError,
    decide_recipe,
    resolve_algo,
    wide_recipe,
    widen,
)
from phi3_edge.targets.table import TARGETS

UNTIED = ModelShape(num_layers=8, hidden_size=64, tied=False)
TIED = ModelShape(num_layers=8, hidden_size=64, tied=True)
INT4_TARGET = TARGETS["cpu-int4"]
# cpu-int4 without its measured per-tensor defaults (int8 head, gate_up block 64, quantized untied table): the
# recipe mechanics below are shown on the plain format; test_cpu_int4_measured_defaults checks the defaults.
INT4 = replace(INT4_TARGET, lm_head_bits=None, block_overrides=(), quantize_embeddings=False)


def test_invalid_linear_recipes_are_one_line_errors() -> None:
    cases = [({"bits": 4, "block_size": 32, "symmetric": True, "algo": "hqq"}, "asymmetric"),
             ({"bits": 8, "block_size": 32, "symmetric": False, "algo": "hqq"}, "8 bits"),
             ({"bits": 4, "block_size": 48}, "power of two"),
             ({"bits": 3, "block_size": 32}, "bits must be"),
             ({"bits": 4, "block_size": 32, "algo": "squeezellm"}, "algorithm"),
             ({"bits": 4, "block_size": 32, "symmetric": False, "algo": "gptq"}, "symmetric"),
             ({"bits": 4, "block_size": 32, "accuracy_level": 7}, "accuracy_level")]
    for fields, message in cases:
        with pytest.raises(RecipeError, match=message) as caught:
            LinearRecipe(**fields)  # type: ignore[arg-type]
        assert isinstance(caught.value, Phi3EdgeError) and isinstance(caught.value, ValueError)
        assert len(str(caught.value).splitlines()) == 1


def test_body_recipe_of_every_target() -> None:
    assert QUANT_ALGOS == ("rtn", "hqq")
    for target in TARGETS.values():
        recipe = decide_recipe(target, QuantOptions(), UNTIED)
        if target.bits is None:
            assert recipe.body is None and recipe.name is None and not recipe.quantized
            continue
        assert recipe.body == LinearRecipe(target.bits, target.block_size or 0, target.accuracy_level or 0,
                                           target.symmetric, "rtn")
        body = recipe.body
        assert body is not None
        if target.lm_head_bits is None:
            assert recipe.lm_head == body  # lm_head follows the body unless the target measured otherwise
        else:
            assert recipe.lm_head == LinearRecipe(target.lm_head_bits, body.block_size, body.accuracy_level,
                                                  target.symmetric, "rtn")
        if target.quantize_embeddings:  # untied table quantized in the head's format, not shared
            assert recipe.embeddings == recipe.lm_head and not recipe.shared_table
        else:
            assert recipe.embeddings is None and not recipe.shared_table  # untied: float table
        assert recipe.for_tensor("model.layers.0.mlp.down_proj.weight") == body
        first_dividing: dict[str, int] = {}
        for stem, block in target.block_overrides:  # a stem listed twice: the first block that divides the hidden
            if UNTIED.hidden_size % block == 0:
                first_dividing.setdefault(stem, block)
        for stem, block in first_dividing.items():  # the measured per-Linear blocks, every layer
            for layer in range(UNTIED.num_layers):
                assert recipe.for_tensor(f"model.layers.{layer}.{stem}.weight") == replace(body, block_size=block)
        assert recipe.name == "rtn"  # a coarser block is not mixed precision
    hqq = decide_recipe(INT4, QuantOptions(algo="hqq"), UNTIED).body
    assert hqq is not None and (hqq.algo, hqq.symmetric) == ("hqq", False)  # HQQ writes zero points


def test_cpu_int4_gate_up_takes_block_128_where_128_divides_the_hidden_size() -> None:
    """cpu-int4's prefill choice (targets/table.py _GATE_UP_COARSE): gate_up at 128 where it divides the hidden
    size, else 64, else the body's 32; mobile-int4 keeps block 64 (no ARM prefill measured)."""
    gate_up = "model.layers.1.mlp.gate_up_proj.weight"
    for hidden, block in ((256, 128), (576, 64), (96, 32)):
        recipe = decide_recipe(TARGETS["cpu-int4"], QuantOptions(), ModelShape(2, hidden, False))
        assert recipe.body is not None and recipe.for_tensor(gate_up) == replace(recipe.body, block_size=block)
    mobile = decide_recipe(TARGETS["mobile-int4"], QuantOptions(), ModelShape(2, 256, False))
    assert mobile.body is not None and mobile.for_tensor(gate_up) == replace(mobile.body, block_size=64)


def test_the_rtn_default_above_the_calibration_limit_widens_llamacpps_down_projections() -> None:
    """Above calibrate_up_to_params, cpu-int4's default is RTN + int8 down projections in llama.cpp's
    use_more_bits layers (first/last eighth, every third between); --quant-algo rtn, --mixed-precision and the
    calibrated default below the limit do not get them."""
    target = TARGETS["cpu-int4"]
    big = target.calibrate_up_to_params + 1
    choice = resolve_algo(target, QuantOptions(), big)
    assert (choice.algo, choice.int8_down_rule) == ("rtn", True) and "int8 down projections" in choice.describe()
    shape = ModelShape(num_layers=16, hidden_size=256, tied=False)
    recipe = decide_recipe(target, replace(QuantOptions(), algo="rtn", int8_down_rule=True), shape)
    assert recipe.body is not None
    wide = {name for name, r in recipe.overrides if r.bits == 8}
    # 16 layers: eighth 2 -> layers 0, 1, 14, 15 and (i - 2) % 3 == 2: 4, 7, 10, 13
    assert wide == {f"model.layers.{i}.mlp.down_proj.weight" for i in (0, 1, 4, 7, 10, 13, 14, 15)}
    assert all(recipe.for_tensor(n) == replace(recipe.body, bits=8) for n in wide)
    assert recipe.name == "rtn+int8-mixed"
    assert not resolve_algo(target, QuantOptions(algo="rtn"), big).int8_down_rule
    assert not resolve_algo(target, QuantOptions(mixed_precision=True), big).int8_down_rule
    assert not resolve_algo(target, QuantOptions(), 1000).int8_down_rule  # calibrated below the limit
    assert not resolve_algo(TARGETS["mobile-int4"], QuantOptions(), big).int8_down_rule
    plain = decide_recipe(target, QuantOptions(algo="rtn"), shape)
    assert all(r.bits == 4 for _, r in plain.overrides)


def test_hqq_on_an_8_bit_target_and_unknown_options_fail_before_any_weight() -> None:
    with pytest.raises(RecipeError, match="8 bits"):
        decide_recipe(TARGETS["cpu-int8"], QuantOptions(algo="hqq"), UNTIED)
    with pytest.raises(RecipeError, match="algorithm"):
        decide_recipe(INT4, QuantOptions(algo="squeezellm"), UNTIED)
    with pytest.raises(RecipeError, match="block_size"):
        decide_recipe(replace(INT4, block_size=None), QuantOptions(), UNTIED)
    with pytest.raises(RecipeError, match="--lm-head"):
        decide_recipe(INT4, QuantOptions(lm_head="int3"), UNTIED)
    with pytest.raises(RecipeError, match="--embeddings"):
        decide_recipe(INT4, QuantOptions(embeddings="int4"), UNTIED)
    with pytest.raises(RecipeError, match="hidden size 80"):
        decide_recipe(INT4, QuantOptions(embeddings="quantized"), ModelShape(2, 80, False))


def test_mixed_precision_is_a_measured_choice_within_a_byte_budget() -> None:
    """decide_recipe records the budget (the calibration pass measures what to widen); widen applies the choice."""
    recipe = decide_recipe(INT4, QuantOptions(mixed_precision=True), UNTIED)
    assert recipe.overrides == () and recipe.size_budget == DEFAULT_SIZE_BUDGET and recipe.name == "rtn"
    assert decide_recipe(INT4, QuantOptions(mixed_precision=True, size_budget=1.2), UNTIED).size_budget == 1.2
    assert decide_recipe(INT4, QuantOptions(), UNTIED).size_budget is None
    chosen = ["model.layers.7.mlp.gate_up_proj.weight", "model.layers.3.self_attn.qkv_proj.weight"]
    wide = widen(recipe, chosen)
    assert [name for name, _ in wide.overrides] == chosen  # the measured order, kept
    for name in chosen:
        assert wide.for_tensor(name) == LinearRecipe(8, 32, recipe.body.accuracy_level,  # type: ignore[union-attr]
                                                     recipe.body.symmetric, "rtn")  # type: ignore[union-attr]
    assert wide.for_tensor("model.layers.7.mlp.down_proj.weight") == recipe.body
    assert wide.name == "rtn+int8-mixed" and wide.lm_head == recipe.lm_head  # the head was not chosen
    assert set(wide.to_json()["overrides"]) == set(chosen)  # type: ignore[arg-type]
    assert wide.to_json()["size_budget"] == DEFAULT_SIZE_BUDGET
    # where mixed precision does not apply, the recipe says so (no budget, nothing to measure)
    for target in ("cpu-int8", "cpu-fp32"):
        plain = decide_recipe(TARGETS[target], QuantOptions(mixed_precision=True), UNTIED)
        assert plain.overrides == () and plain.size_budget is None


def test_widening_the_tied_table_widens_the_shared_head_too() -> None:
    recipe = decide_recipe(INT4, QuantOptions(mixed_precision=True), TIED)
    wide = widen(recipe, ["model.embed_tokens.weight"], table_name="model.embed_tokens.weight")
    assert wide.overrides == () and wide.shared_table
    assert wide.lm_head is not None and wide.lm_head.bits == 8 and wide.embeddings == wide.lm_head
    untied = widen(decide_recipe(INT4, QuantOptions(mixed_precision=True), UNTIED), ["lm_head.weight"],
                   table_name="lm_head.weight")
    assert untied.lm_head is not None and untied.lm_head.bits == 8 and untied.embeddings is None
    hqq = decide_recipe(INT4, QuantOptions(algo="hqq", mixed_precision=True), UNTIED)
    assert wide_recipe(hqq.body) == LinearRecipe(8, 32, hqq.body.accuracy_level, False, "rtn")  # type: ignore


def test_bad_size_budgets_are_one_line_errors() -> None:
    cases = [(QuantOptions(mixed_precision=True, size_budget=0.9), "--size-budget must be >= 1.0"),
             (QuantOptions(mixed_precision=True, size_budget=float("nan")), "--size-budget must be >= 1.0"),
             (QuantOptions(size_budget=1.1), "add --mixed-precision")]
    for options, message in cases:
        with pytest.raises(RecipeError, match=message) as caught:
            decide_recipe(INT4, options, UNTIED)
        assert "\n" not in str(caught.value)


def test_tied_models_share_one_quantized_table_with_mixed_precision_too() -> None:
    """The head's format decides the table, whatever wraps the body (mixed precision included)."""
    for options in (QuantOptions(), QuantOptions(mixed_precision=True), QuantOptions(algo="hqq")):
        recipe = decide_recipe(INT4, options, TIED)
        assert recipe.shared_table and recipe.embeddings is not None
        assert recipe.lm_head == recipe.embeddings  # as applied: the head reads the table's RTN codes
        assert recipe.embeddings.algo == "rtn" and recipe.embeddings.bits == 4
    float_head = decide_recipe(INT4, QuantOptions(lm_head="float"), TIED)
    assert float_head.lm_head is None and float_head.embeddings is None and not float_head.shared_table
    int8_head = decide_recipe(TARGETS["cpu-fp32"], QuantOptions(lm_head="int8"), TIED)
    assert int8_head.body is None and int8_head.shared_table and int8_head.embeddings is not None
    assert int8_head.embeddings.bits == 8


def test_cpu_int4_measured_defaults() -> None:
    """cpu-int4's per-tensor choices (figures in targets/table.py) as decide_recipe applies them."""
    tied = decide_recipe(INT4_TARGET, QuantOptions(), TIED)
    assert tied.lm_head is not None and tied.lm_head.bits == 8 and tied.shared_table and tied.embeddings == tied.lm_head
    untied = decide_recipe(INT4_TARGET, QuantOptions(), UNTIED)
    assert untied.embeddings is not None and untied.embeddings.bits == 8 and not untied.shared_table
    assert decide_recipe(INT4_TARGET, QuantOptions(embeddings="float"), UNTIED).embeddings is None
    assert decide_recipe(INT4_TARGET, QuantOptions(lm_head="int4"), TIED).embeddings.bits == 4  # type: ignore
    gate_up = untied.for_tensor("model.layers.3.mlp.gate_up_proj.weight")
    assert gate_up is not None and (gate_up.bits, gate_up.block_size) == (4, 64) and untied.name == "rtn"
    # widening keeps the tensor's own block; a hidden size 64 does not divide leaves the block at 32
    wide = widen(untied, ["model.layers.3.mlp.gate_up_proj.weight"])
    assert wide.for_tensor("model.layers.3.mlp.gate_up_proj.weight").block_size == 64  # type: ignore
    assert wide.name == "rtn+int8-mixed"
    odd = decide_recipe(INT4_TARGET, QuantOptions(), ModelShape(num_layers=2, hidden_size=96, tied=False))
    assert odd.overrides == ()
    hqq = decide_recipe(INT4_TARGET, QuantOptions(algo="hqq"), UNTIED)
    assert hqq.lm_head == LinearRecipe(8, 32, 4, True, "rtn")  # an int8 head is RTN (HQQ is 2/4-bit here)


# -- the default algorithm (QuantOptions.algo None): resolve_algo -------------------------------------------------

LIMIT = INT4_TARGET.calibrate_up_to_params


def test_default_algo_is_the_targets_calibrated_one_up_to_its_parameter_limit() -> None:
    for name in ("cpu-int4", "mobile-int4"):
        target = TARGETS[name]
        assert target.calibrated_algo == "awq"
        small = resolve_algo(target, QuantOptions(), 134_515_008)  # SmolLM2-135M's stored parameters
        assert small.algo == "awq" and "135M parameters" in small.reason and "--quant-algo rtn" in small.reason
        assert resolve_algo(target, QuantOptions(), target.calibrate_up_to_params).algo == "awq"  # at most
        big = resolve_algo(target, QuantOptions(), target.calibrate_up_to_params + 1)
        assert big.algo == "rtn" and "above 1B parameters" in big.reason and "--quant-algo awq" in big.reason
        big_reason = resolve_algo(target, QuantOptions(), 3_821_079_552).reason
        assert "grows with the parameters" in big_reason
        assert big_reason.endswith("--quant-algo rtn skips the int8 down projections") == target.rtn_int8_down


def test_an_explicit_algo_always_wins() -> None:
    for algo in ("rtn", "hqq", "gptq", "awq"):
        for params in (1_000, LIMIT * 10):
            choice = resolve_algo(INT4_TARGET, QuantOptions(algo=algo), params, calibration=True)
            assert (choice.algo, choice.reason) == (algo, f"--quant-algo {algo}")
    line = resolve_algo(INT4_TARGET, QuantOptions(algo="rtn"), 1_000).describe()
    assert line == "quantization: rtn (--quant-algo rtn)"


def test_targets_without_a_calibrated_default_get_rtn_at_any_size() -> None:
    for name, target in TARGETS.items():
        if target.calibrated_algo is not None:
            continue
        assert name not in ("cpu-int4", "mobile-int4")
        for params in (1_000, LIMIT * 10):
            choice = resolve_algo(target, QuantOptions(), params, calibration=True)
            assert choice.algo == "rtn" and "no calibrated default" in choice.reason, name


def test_a_calibration_text_asks_for_the_calibrated_default_at_any_size() -> None:
    """--calibration without --quant-algo is read only by a calibrated body; with --mixed-precision (which reads it
    too) the size rule stands."""
    choice = resolve_algo(INT4_TARGET, QuantOptions(), LIMIT * 4, calibration=True)
    assert choice.algo == "awq" and "--calibration" in choice.reason
    assert resolve_algo(INT4_TARGET, QuantOptions(mixed_precision=True), LIMIT * 4, calibration=True).algo == "rtn"


def test_an_unresolved_default_decides_as_rtn() -> None:
    """Callers that never count parameters (export_graph's own default recipe) get the uncalibrated rtn."""
    assert QuantOptions().algo is None
    assert decide_recipe(INT4_TARGET, QuantOptions(), UNTIED) == decide_recipe(INT4_TARGET, QuantOptions(algo="rtn"),
                                                                               UNTIED)

"""The quantization recipe: decided once from the target and the options, pure data, validated up front."""

from __future__ import annotations

from dataclasses import replace

import pytest

from phi3_edge.errors import Phi3EdgeError
from phi3_edge.quantize import QUANT_ALGOS
from phi3_edge.quantize.mixed import uses_more_bits
from phi3_edge.quantize.recipe import LinearRecipe, ModelShape, QuantOptions, RecipeError, decide_recipe
from phi3_edge.targets.table import TARGETS

UNTIED = ModelShape(num_layers=8, hidden_size=64, tied=False)
TIED = ModelShape(num_layers=8, hidden_size=64, tied=True)
INT4 = TARGETS["cpu-int4"]


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
        assert recipe.lm_head == recipe.body  # lm_head follows the body by default
        assert recipe.embeddings is None and not recipe.shared_table  # untied: float table
        assert recipe.for_tensor("model.layers.0.mlp.down_proj.weight") == recipe.body
    hqq = decide_recipe(INT4, QuantOptions(algo="hqq"), UNTIED).body
    assert hqq is not None and (hqq.algo, hqq.symmetric) == ("hqq", False)  # HQQ writes zero points


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


def test_mixed_precision_is_per_tensor_overrides() -> None:
    recipe = decide_recipe(INT4, QuantOptions(mixed_precision=True), UNTIED)
    wide = [layer for layer in range(8) if uses_more_bits(layer, 8)]
    assert [name for name, _ in recipe.overrides] == [f"model.layers.{i}.mlp.down_proj.weight" for i in wide]
    for layer in range(8):
        chosen = recipe.for_tensor(f"model.layers.{layer}.mlp.down_proj.weight")
        assert chosen is not None and chosen.bits == (8 if layer in wide else 4)
        assert recipe.for_tensor(f"model.layers.{layer}.mlp.gate_up_proj.weight") == recipe.body
    assert recipe.name == "rtn+int8-mixed"
    assert recipe.lm_head == recipe.body  # the head is not a down projection
    manifest = recipe.to_json()
    assert set(manifest["overrides"]) == {name for name, _ in recipe.overrides}  # type: ignore[arg-type]
    # where mixed precision does not apply, the recipe says so (no overrides, plain name)
    for target in ("cpu-int8", "cpu-fp32"):
        plain = decide_recipe(TARGETS[target], QuantOptions(mixed_precision=True), UNTIED)
        assert plain.overrides == () and plain.name != "rtn+int8-mixed"


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

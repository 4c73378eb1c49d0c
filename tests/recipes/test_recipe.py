"""Recipe parsing: the commented example parses, defaults flow into targets, and every bad input is one line
naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from phi3_edge.quantize.recipe import CALIBRATED_ALGOS, EMBEDDING_CHOICES, LM_HEAD_CHOICES, OPTION_ALGOS
from phi3_edge.recipes import RecipeFileError, parse_recipe, parse_recipe_text
from phi3_edge.recipes import recipe as recipe_module

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "build.toml"
MINIMAL = '[model]\nsource = "demo"\n[[targets]]\nname = "cpu-int4"\n'


def test_example_recipe_parses_with_defaults_inherited() -> None:
    recipe = parse_recipe(EXAMPLE)
    assert [m.name for m in recipe.models] == ["demo"]
    assert [t.name for t in recipe.targets] == ["cpu-int4", "cpu-int4-hqq", "cpu-int8", "mobile-int4"]
    assert recipe.groups() == ("cpu", "mobile")
    hqq = recipe.targets[1]
    assert (hqq.target, hqq.options.quant_algo, hqq.options.lm_head) == ("cpu-int4", "hqq", "int8")
    assert hqq.options.max_kl == 0.05  # from [defaults]
    assert recipe.targets[3].options.max_kl == 0.08  # its own
    assert recipe.optimum_layout is True
    assert recipe.output == (EXAMPLE.parent / "../build/recipe")  # relative to the recipe file
    assert recipe.artifact_dir(recipe.models[0], hqq) == recipe.output / "demo" / "cpu-int4-hqq"


def test_choices_are_the_exporters() -> None:
    """The recipe validates with the quantizer's own lists: a new algorithm is a valid recipe value at once."""
    assert recipe_module.QUANT_ALGOS is OPTION_ALGOS  # --quant-algo's list, the calibrated algorithms included
    assert set(CALIBRATED_ALGOS) <= set(OPTION_ALGOS)
    assert recipe_module.LM_HEAD_CHOICES is LM_HEAD_CHOICES
    assert recipe_module.EMBEDDING_CHOICES is EMBEDDING_CHOICES


def test_minimal_recipe_and_derived_names(tmp_path: Path) -> None:
    recipe = parse_recipe_text(MINIMAL.replace('"demo"', '"microsoft/Phi-3-mini-4k-instruct"'), tmp_path / "r.toml")
    assert recipe.models[0].name == "Phi-3-mini-4k-instruct"
    assert recipe.targets[0].target == "cpu-int4" and recipe.targets[0].group == "default"
    assert recipe.targets[0].options.max_kl is None and recipe.targets[0].options.fidelity is True
    assert recipe.output == tmp_path / "artifacts"
    short = parse_recipe_text(MINIMAL.replace('"demo"', '"phi3:mini"'), tmp_path / "r.toml")
    assert short.models[0].name == "phi3-mini"


def test_multiple_models_and_publish_template(tmp_path: Path) -> None:
    text = ('output = "/abs/out"\n[[models]]\nsource = "demo"\n[[models]]\nsource = "phi3:mini"\nname = "mini"\n'
            '[[targets]]\nname = "cpu-int4"\n[publish]\nrepo_id = "org/{model}-{target}"\n')
    recipe = parse_recipe_text(text, tmp_path / "r.toml")
    assert recipe.output == Path("/abs/out")
    assert recipe.publish_repo_for(recipe.models[1], recipe.targets[0]) == "org/mini-cpu-int4"
    assert recipe.publish_private is True


@pytest.mark.parametrize(("text", "expected"), [
    ("[model]\nsource = 'demo'\n[[targets]]\nname = 'cpu-int4'\nquant_alg = 'rtn'\n",
     "targets[0].quant_alg: unknown key"),
    ("[model]\nsource = 'demo'\n[[targets]]\nname = 'cpu-int4'\nquant_algo = 'gptq3'\n",
     f"targets[0].quant_algo: 'gptq3' is not one of {', '.join(OPTION_ALGOS)}"),
    ("[model]\nsource = 'demo'\n[[targets]]\nname = 'x'\n", "targets[0].name: 'x' is not one of cpu-fp32"),
    ("[model]\nsource = 'demo'\n[[targets]]\nname = 'a'\ntarget = 'tpu-int4'\n", "targets[0].target: 'tpu-int4'"),
    ("[model]\nsource = 'demo'\n[[targets]]\nname = 'cpu-int4'\n[[targets]]\nname = 'cpu-int4'\n",
     "targets[1].name: target name 'cpu-int4' is already used by targets[0]"),
    # An explicit rtn ignores a calibration text (without quant_algo the export's calibrated default reads it)
    ("[model]\nsource = 'demo'\n[[targets]]\nname = 'cpu-int4'\nquant_algo = 'rtn'\ncalibration = 'text.txt'\n",
     "targets[0].calibration: applies to quant_algo 'gptq' or 'awq' and to mixed_precision = true"),
    ("[model]\nsource = 'demo'\n[[targets]]\nname = 'cpu-int4'\nquant_algo = 'gptq'\ncalibration = 'gone.txt'\n",
     "targets[0].calibration: 'gone.txt': no such file"),
    ("[model]\nsource = 'demo'\n[[targets]]\nname = 'cpu-int4'\nquant_algo = 'awq'\ncalibration = 3\n",
     "targets[0].calibration: must be a non-empty string, got an integer"),
    ("[model]\nsource = 'demo'\n[defaults]\ncalibration = 'gone.txt'\n[[targets]]\nname = 'cpu-int4'\n",
     "defaults.calibration: 'gone.txt': no such file"),
    ("[model]\nsource = 'demo'\n[[targets]]\nname = 'cpu-int4'\ndataset = 'wiki'\n",
     "targets[0].dataset: not supported: the calibration text of quant_algo = \"gptq\" or \"awq\" is `calibration"),
    ("[[targets]]\nname = 'cpu-int4'\n", "no model: add a [model] table"),
    ("[model]\nsource = 'demo'\n", "no targets"),
    ("targets = []\n[model]\nsource = 'demo'\n", "targets: is empty"),
    ("[model]\nsource = 'demo'\n[[targets]]\nname = 'cpu-int4'\nmax_kl = -1\n",
     "targets[0].max_kl: must be a non-negative number, got -1"),
    ("[model]\nsource = 'demo'\n[[targets]]\nname = 'cpu-int4'\nmixed_precision = 'yes'\n",
     "targets[0].mixed_precision: must be true or false, got a string"),
    ("[model]\nsource = 'demo'\n[[models]]\nsource = 'demo'\n[[targets]]\nname = 'cpu-int4'\n",
     "give either [model] or [[models]]"),
    ("[model]\nname = 'x'\n[[targets]]\nname = 'cpu-int4'\n", "model: missing `source`"),
    ("[model]\nsource = 'demo'\nname = '../up'\n[[targets]]\nname = 'cpu-int4'\n", "model.name: '../up'"),
    ("model = 'demo'\n[[targets]]\nname = 'cpu-int4'\n", "model: must be a table ([model]), got a string"),
    ("[model]\nsource = 'demo'\n[[targets]]\nname = 'cpu-int4'\n[layout]\noptimum = 1\n", "layout.optimum"),
    ("[model]\nsource = 'demo'\n[[targets]]\nname = 'cpu-int4'\n[publish]\nrepo_id = 'no-slash'\n",
     "publish.repo_id: 'no-slash' is not a hub repo id"),
    ("[model]\nsource = 'demo'\n[[targets]]\nname = 'cpu-int4'\n[defaults]\ngroup = 'x'\n", "defaults.group"),
    ("[model\nsource = 'demo'\n", "not valid TOML"),
])
def test_bad_recipes_fail_with_one_line_naming_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "build.toml"
    with pytest.raises(RecipeFileError) as caught:
        parse_recipe_text(text, path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(RecipeFileError, match="recipe file not found"):
        parse_recipe(tmp_path / "missing.toml")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(RecipeFileError, match="not UTF-8"):
        parse_recipe(binary)


def test_calibrated_algorithms_and_a_calibration_file_relative_to_the_recipe(tmp_path: Path) -> None:
    (tmp_path / "texts").mkdir()
    text = tmp_path / "texts" / "code.txt"
    text.write_text("def f(x):\n    return x\n" * 20, encoding="utf-8")
    absolute = tmp_path / "prose.txt"
    absolute.write_text("The quick brown fox. " * 20, encoding="utf-8")
    recipe = parse_recipe_text(
        "[model]\nsource = 'demo'\n[defaults]\ncalibration = 'texts/code.txt'\n"
        "[[targets]]\nname = 'gptq'\ntarget = 'cpu-int4'\nquant_algo = 'gptq'\n"  # inherits [defaults]' text
        f"[[targets]]\nname = 'awq'\ntarget = 'cpu-int4'\nquant_algo = 'awq'\ncalibration = '{absolute}'\n"
        "[[targets]]\nname = 'cpu-int4'\nquant_algo = 'rtn'\n"  # rtn: needs no text, so it does not inherit one
        "[[targets]]\nname = 'mixed'\ntarget = 'cpu-int4'\nmixed_precision = true\n",  # measured: it does
        tmp_path / "build.toml")
    gptq, awq, rtn, mixed = (t.options for t in recipe.targets)
    assert (mixed.quant_algo, mixed.calibration) == (None, text)  # no quant_algo: the export's default
    assert (gptq.quant_algo, gptq.calibration) == ("gptq", text)
    assert (awq.quant_algo, awq.calibration) == ("awq", absolute)
    assert (rtn.quant_algo, rtn.calibration) == ("rtn", None)
    assert gptq.as_keywords()["calibration"] == text and rtn.as_keywords()["calibration"] is None
    builtin = parse_recipe_text(MINIMAL + "quant_algo = 'gptq'\n", tmp_path / "build.toml").targets[0].options
    assert (builtin.quant_algo, builtin.calibration) == ("gptq", None)  # None: the built-in text

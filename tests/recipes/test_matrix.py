"""Recipe -> CI matrix: one job per model x group, in recipe order, and select() narrows to one cell."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from phi3_edge.recipes import RecipeFileError, expand_matrix, matrix_json, parse_recipe_text, select
from phi3_edge.recipes import matrix as matrix_module

RECIPE = """
[[models]]
source = "demo"
[[models]]
source = "microsoft/Phi-3-mini-4k-instruct"
name = "mini"
[[targets]]
name = "cpu-int4"
group = "cpu"
[[targets]]
name = "cuda-int4"
group = "gpu"
[[targets]]
name = "cpu-int8"
group = "cpu"
[[targets]]
name = "cpu-fp32"
"""


@pytest.fixture()
def recipe(tmp_path: Path):  # type: ignore[no-untyped-def]
    return parse_recipe_text(RECIPE, tmp_path / "build.toml")


def test_one_job_per_model_and_group_in_recipe_order(recipe) -> None:  # type: ignore[no-untyped-def]
    jobs = expand_matrix(recipe)
    assert [(j.model, j.group, j.targets) for j in jobs] == [
        ("demo", "cpu", "cpu-int4,cpu-int8"), ("demo", "gpu", "cuda-int4"), ("demo", "default", "cpu-fp32"),
        ("mini", "cpu", "cpu-int4,cpu-int8"), ("mini", "gpu", "cuda-int4"), ("mini", "default", "cpu-fp32")]
    assert jobs[3].name == "mini-cpu" and jobs[3].source == "microsoft/Phi-3-mini-4k-instruct"
    # Every target of every model is built exactly once across the matrix.
    built = [(j.model, t) for j in jobs for t in j.targets.split(",")]
    assert sorted(built) == sorted((m.name, t.name) for m in recipe.models for t in recipe.targets)


def test_matrix_json_is_one_line_github_reads_with_fromjson(recipe) -> None:  # type: ignore[no-untyped-def]
    text = matrix_json(recipe)
    assert "\n" not in text
    include = json.loads(text)["include"]
    assert include[0] == {"name": "demo-cpu", "model": "demo", "source": "demo", "group": "cpu",
                          "targets": "cpu-int4,cpu-int8"}


def test_select_narrows_to_the_cell_a_job_builds(recipe) -> None:  # type: ignore[no-untyped-def]
    cell = select(recipe, model="mini", group="cpu")
    assert [(m.name, [t.name for t in ts]) for m, ts in cell] == [("mini", ["cpu-int4", "cpu-int8"])]
    everything = select(recipe)
    assert [m.name for m, _ in everything] == ["demo", "mini"] and len(everything[0][1]) == 4
    named = select(recipe, targets=("cpu-int8",))
    assert [t.name for t in named[0][1]] == ["cpu-int8"]
    for job in expand_matrix(recipe):  # the matrix and select() agree cell by cell
        ((model, targets),) = select(recipe, model=job.model, group=job.group)
        assert ",".join(t.name for t in targets) == job.targets


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"group": "tpu"}, "no target group 'tpu' (groups: cpu, gpu, default)"),
    ({"model": "nope"}, "no model named 'nope'"),
    ({"targets": ("cpu-int9",)}, "no target named 'cpu-int9'"),
    ({"group": "gpu", "targets": ("cpu-int4",)}, "group 'gpu' has none of the targets cpu-int4"),
])
def test_select_errors_name_the_recipe(recipe, kwargs, expected) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RecipeFileError) as caught:
        select(recipe, **kwargs)
    assert str(caught.value).startswith(f"{recipe.path}: ") and expected in str(caught.value)


def test_too_many_jobs_for_one_matrix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(matrix_module, "MAX_JOBS", 5)
    recipe = parse_recipe_text(RECIPE, tmp_path / "build.toml")
    with pytest.raises(RecipeFileError, match="6 model x group jobs exceed GitHub Actions' 5 per matrix"):
        expand_matrix(recipe)

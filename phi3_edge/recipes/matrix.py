"""Recipe -> CI matrix: one job per model x target group, each building its group's targets in one pass.

    Recipe(models: m1 m2, targets: a(cpu) b(cpu) c(gpu))
        ─► {"include": [{model: m1, group: cpu, targets: "a,b"}, {model: m1, group: gpu, targets: "c"},
                        {model: m2, group: cpu, ...}, ...]}

GitHub Actions reads it with `fromJSON(needs.plan.outputs.matrix)`; each job then runs
`phi3-edge build RECIPE --model m1 --group cpu`, which select() narrows to the same targets.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from phi3_edge.recipes.recipe import ModelSpec, Recipe, RecipeFileError, TargetSpec

MAX_JOBS = 256  # GitHub Actions' limit on the jobs one matrix may generate


@dataclass(frozen=True)
class MatrixJob:
    name: str  # "<model>-<group>": the job's display name and its uploaded artifact's name
    model: str
    source: str
    group: str
    targets: str  # comma-separated target (artifact) names, in recipe order


def expand_matrix(recipe: Recipe) -> list[MatrixJob]:
    """Every model x group pair, models outermost, in recipe order."""
    jobs = [MatrixJob(f"{model.name}-{group}", model.name, model.source, group,
                      ",".join(t.name for t in recipe.targets_in(group)))
            for model in recipe.models for group in recipe.groups()]
    if len(jobs) > MAX_JOBS:
        raise RecipeFileError(f"{len(jobs)} model x group jobs exceed GitHub Actions' {MAX_JOBS} per matrix: "
                              "put more targets in each group", recipe.path)
    return jobs


def matrix_json(recipe: Recipe) -> str:
    """The matrix as one line of JSON (what a `$GITHUB_OUTPUT` line can carry)."""
    return json.dumps({"include": [asdict(job) for job in expand_matrix(recipe)]}, separators=(",", ":"))


def select(recipe: Recipe, *, model: str | None = None, group: str | None = None,
           targets: tuple[str, ...] = ()) -> list[tuple[ModelSpec, tuple[TargetSpec, ...]]]:
    """The (model, targets) pairs one build invocation runs: everything, or one matrix cell, or named targets."""
    if group is not None and group not in recipe.groups():
        raise RecipeFileError(f"no target group {group!r} (groups: {', '.join(recipe.groups())})", recipe.path)
    known = {t.name for t in recipe.targets}
    for name in targets:
        if name not in known:
            raise RecipeFileError(f"no target named {name!r} (targets: {', '.join(sorted(known))})", recipe.path)
    chosen = tuple(t for t in recipe.targets
                   if (group is None or t.group == group) and (not targets or t.name in targets))
    if not chosen:
        raise RecipeFileError(f"group {group!r} has none of the targets {', '.join(targets)}", recipe.path)
    models = (recipe.model(model),) if model is not None else recipe.models
    return [(m, chosen) for m in models]

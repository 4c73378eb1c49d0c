"""CI builds: a recipe file (models x targets), its CI matrix, and the machine-readable reports of a build.

    build.toml ─► parse_recipe() ─► Recipe ─► expand_matrix() ─► GitHub Actions matrix (one job per model x group)
                                      │
                                      └─► api.build() (one pass per model x group) ─► BuildReport
                                                      ─► report.json / junit.xml / summary.md ($GITHUB_STEP_SUMMARY)

Pure data, file writers and the hub upload: nothing here reads weights or builds graphs (api.py orchestrates).
"""

from __future__ import annotations

from phi3_edge.recipes.matrix import MatrixJob, expand_matrix, matrix_json, select
from phi3_edge.recipes.recipe import Recipe, RecipeFileError, TargetSpec, parse_recipe, parse_recipe_text
from phi3_edge.recipes.report import BuildReport, GateResult, TargetResult

__all__ = ["BuildReport", "GateResult", "MatrixJob", "Recipe", "RecipeFileError", "TargetResult", "TargetSpec",
           "expand_matrix", "matrix_json", "parse_recipe", "parse_recipe_text", "select"]

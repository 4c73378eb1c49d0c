"""The build recipe: one TOML file naming the models, the targets (each with its export options) and the output.

    output = "artifacts"                  # artifact folders: <output>/<model name>/<target name>
    [[models]]  source = "phi3:mini"      # any --model form; `name` optional ([model] for just one)
    [defaults]  max_kl = 0.05             # options every target inherits
    [[targets]] name = "cpu-int4"  group = "cpu"  quant_algo = "hqq"  ...
                calibration = "texts/code.txt"   # gptq/awq: the calibration text, relative to this file
    [layout]    optimum = true            # also the Optimum / Transformers.js files
    [publish]   repo_id = "org/{model}-{target}"   # optional `phi3-edge push` destination per artifact

examples/build.toml is the commented reference. Every problem is one RecipeFileError line naming the file and
the key (`build.toml: targets[2].quant_algo: ...`), raised before anything is exported.
"""

from __future__ import annotations

import importlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phi3_edge.errors import Phi3EdgeError
from phi3_edge.quantize.recipe import CALIBRATED_ALGOS, EMBEDDING_CHOICES, LM_HEAD_CHOICES
from phi3_edge.quantize.recipe import OPTION_ALGOS as QUANT_ALGOS  # what --quant-algo accepts, calibrated ones too
from phi3_edge.targets.table import TARGETS

DEFAULT_GROUP = "default"
# Names end up in folder names, CI job names and artifact names: keep them to a portable alphabet.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_TOP_KEYS = {"output", "model", "models", "defaults", "targets", "layout", "publish"}
_MODEL_KEYS = {"source", "name", "revision"}
_OPTION_KEYS = {"quant_algo", "calibration", "lm_head", "embeddings", "mixed_precision", "max_kl", "fidelity"}
_TARGET_KEYS = {"name", "target", "group"} | _OPTION_KEYS
_LAYOUT_KEYS = {"optimum"}
_PUBLISH_KEYS = {"repo_id", "private"}
# Options people expect from other tools that phi3-edge does not have: say so instead of "unknown key".
_NOT_SUPPORTED = {
    "dataset": "the calibration text of quant_algo = \"gptq\" or \"awq\" is `calibration = \"file.txt\"` (UTF-8, "
               "relative to this recipe)",
}


class RecipeFileError(Phi3EdgeError):
    """A recipe file that cannot be read or is invalid: one line naming the file and the key."""


@dataclass(frozen=True)
class ExportOptions:
    """The per-target export options a recipe may set (api.export's keywords of the same names)."""

    quant_algo: str | None = None  # None: the export's default (the target's calibrated algorithm up to its size)
    calibration: Path | None = None  # gptq/awq: the calibration text, resolved (None: the built-in text)
    lm_head: str | None = None
    embeddings: str | None = None
    mixed_precision: bool = False
    max_kl: float | None = None
    fidelity: bool = True

    def as_keywords(self) -> dict[str, Any]:
        return {"quant_algo": self.quant_algo, "calibration": self.calibration, "lm_head": self.lm_head,
                "embeddings": self.embeddings, "mixed_precision": self.mixed_precision, "max_kl": self.max_kl,
                "fidelity": self.fidelity}


@dataclass(frozen=True)
class ModelSpec:
    source: str  # what `--model` takes: a folder, a hub id, a short name, "demo"
    name: str  # folder / job name
    revision: str | None = None  # informational (the hub snapshot to use is resolved by the checkpoint finder)


@dataclass(frozen=True)
class TargetSpec:
    name: str  # the artifact's folder name, unique in the recipe
    target: str  # a row of the target table
    group: str  # CI matrix group: one job builds a model's group in one pass
    options: ExportOptions = field(default_factory=ExportOptions)


@dataclass(frozen=True)
class Recipe:
    path: Path
    output: Path  # resolved against the recipe's folder when relative
    models: tuple[ModelSpec, ...]
    targets: tuple[TargetSpec, ...]
    optimum_layout: bool = False
    publish_repo: str | None = None  # a template: {model} and {target} are replaced
    publish_private: bool = True

    def groups(self) -> tuple[str, ...]:
        """Target groups in first-seen order."""
        return tuple(dict.fromkeys(t.group for t in self.targets))

    def targets_in(self, group: str) -> tuple[TargetSpec, ...]:
        return tuple(t for t in self.targets if t.group == group)

    def model(self, name: str) -> ModelSpec:
        for model in self.models:
            if model.name == name:
                return model
        raise RecipeFileError(f"no model named {name!r} (models: {', '.join(m.name for m in self.models)})",
                              self.path)

    def artifact_dir(self, model: ModelSpec, target: TargetSpec) -> Path:
        return self.output / model.name / target.name

    def publish_repo_for(self, model: ModelSpec, target: TargetSpec) -> str | None:
        if self.publish_repo is None:
            return None
        return self.publish_repo.replace("{model}", model.name).replace("{target}", target.name)


def parse_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file (TOML)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeFileError("recipe file not found", path) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise RecipeFileError(f"cannot read the recipe ({reason})", path) from None
    return parse_recipe_text(text, path)


def parse_recipe_text(text: str, path: str | Path) -> Recipe:
    """Validate recipe text; `path` names the file in errors and anchors a relative `output`."""
    path = Path(path)
    data = _load_toml(text, path)
    check = _Checker(path)
    check.keys(data, _TOP_KEYS, "")
    models = _models(data, check)
    defaults = data.get("defaults", {})
    check.table(defaults, "defaults")
    check.keys(defaults, _OPTION_KEYS, "defaults")
    base = _options(defaults, ExportOptions(), check, "defaults")
    targets = _targets(data, base, check)
    output = Path(check.string(data.get("output", "artifacts"), "output"))
    layout = data.get("layout", {})
    check.table(layout, "layout")
    check.keys(layout, _LAYOUT_KEYS, "layout")
    publish = data.get("publish", {})
    check.table(publish, "publish")
    check.keys(publish, _PUBLISH_KEYS, "publish")
    repo = publish.get("repo_id")
    return Recipe(path=path, output=output if output.is_absolute() else path.parent / output, models=models,
                  targets=targets, optimum_layout=check.boolean(layout.get("optimum", False), "layout.optimum"),
                  publish_repo=None if repo is None else _repo_template(check.string(repo, "publish.repo_id"), check),
                  publish_private=check.boolean(publish.get("private", True), "publish.private"))


def _load_toml(text: str, path: Path) -> dict[str, Any]:
    toml: Any
    try:
        toml = importlib.import_module("tomllib")  # Python 3.11+
    except ImportError:
        try:
            toml = importlib.import_module("tomli")
        except ImportError:
            raise RecipeFileError("reading a recipe needs Python 3.11+ (tomllib) or `pip install tomli`",
                                  path) from None
    try:
        data = toml.loads(text)
    except toml.TOMLDecodeError as exc:
        raise RecipeFileError(f"not valid TOML ({exc})", path) from None
    return dict(data)


def _models(data: dict[str, Any], check: _Checker) -> tuple[ModelSpec, ...]:
    if "model" in data and "models" in data:
        check.fail("", "give either [model] or [[models]], not both")
    if "model" in data:
        check.table(data["model"], "model")
        entries, where = [data["model"]], ["model"]
    else:
        raw = data.get("models")
        if raw is None:
            check.fail("", "no model: add a [model] table with `source = \"...\"` (any --model form)")
        entries = check.array_of_tables(raw, "models")
        where = [f"models[{i}]" for i in range(len(entries))]
    models = tuple(_model(entry, key, check) for entry, key in zip(entries, where, strict=True))
    check.unique([m.name for m in models], where, "name", "model")
    return models


def _model(entry: dict[str, Any], where: str, check: _Checker) -> ModelSpec:
    check.keys(entry, _MODEL_KEYS, where)
    if "source" not in entry:
        check.fail(where, "missing `source` (a local folder, hub id, short name or \"demo\")")
    source = check.string(entry["source"], f"{where}.source")
    name = entry.get("name")
    name = check.name(name, f"{where}.name") if name is not None else _derived_name(source, check, where)
    revision = entry.get("revision")
    return ModelSpec(source, name, None if revision is None else check.string(revision, f"{where}.revision"))


def _derived_name(source: str, check: _Checker, where: str) -> str:
    """`microsoft/Phi-3-mini-4k-instruct` -> `Phi-3-mini-4k-instruct`, `phi3:mini` -> `phi3-mini`."""
    tail = source.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", tail).strip("-.")[:64]
    if not _NAME.match(name):
        check.fail(where, f"cannot derive a name from source {source!r}: add `name = \"...\"`")
    return name


def _targets(data: dict[str, Any], base: ExportOptions, check: _Checker) -> tuple[TargetSpec, ...]:
    raw = data.get("targets")
    if raw is None:
        check.fail("", "no targets: add one [[targets]] table per artifact (`name = \"cpu-int4\"`)")
    entries = check.array_of_tables(raw, "targets")
    if not entries:
        check.fail("targets", "is empty: add at least one [[targets]] table")
    where = [f"targets[{i}]" for i in range(len(entries))]
    targets = tuple(_target(entry, key, base, check) for entry, key in zip(entries, where, strict=True))
    check.unique([t.name for t in targets], where, "name", "target")
    return targets


def _target(entry: dict[str, Any], where: str, base: ExportOptions, check: _Checker) -> TargetSpec:
    check.keys(entry, _TARGET_KEYS, where)
    if "name" not in entry:
        check.fail(where, "missing `name` (the artifact folder; also the target when `target` is absent)")
    name = check.name(entry["name"], f"{where}.name")
    target = check.choice(entry.get("target", name), tuple(TARGETS), f"{where}.target" if "target" in entry
                          else f"{where}.name", hint="add `target = \"...\"` or use a target name")
    group = check.name(entry.get("group", DEFAULT_GROUP), f"{where}.group")
    return TargetSpec(name, target, group, _options(entry, base, check, where))


def _options(entry: dict[str, Any], base: ExportOptions, check: _Checker, where: str) -> ExportOptions:
    def optional_choice(key: str, choices: tuple[str, ...], current: str | None) -> str | None:
        return check.choice(entry[key], choices, f"{where}.{key}") if key in entry else current

    max_kl = base.max_kl
    if "max_kl" in entry:
        max_kl = check.number(entry["max_kl"], f"{where}.max_kl")
    quant_algo = optional_choice("quant_algo", QUANT_ALGOS, base.quant_algo) or base.quant_algo
    mixed = check.boolean(entry.get("mixed_precision", base.mixed_precision), f"{where}.mixed_precision")
    return ExportOptions(
        quant_algo=quant_algo,
        # None (the export's default) may be a calibrated algorithm: the export itself refuses a calibration it ignores
        calibration=_calibration(entry, base, quant_algo is None or quant_algo in CALIBRATED_ALGOS or mixed, check,
                                 where),
        lm_head=optional_choice("lm_head", LM_HEAD_CHOICES, base.lm_head),
        embeddings=optional_choice("embeddings", EMBEDDING_CHOICES, base.embeddings),
        mixed_precision=mixed,
        max_kl=max_kl,
        fidelity=check.boolean(entry.get("fidelity", base.fidelity), f"{where}.fidelity"),
    )


def _calibration(entry: dict[str, Any], base: ExportOptions, calibrates: bool, check: _Checker,
                 where: str) -> Path | None:
    """The calibration text, relative to the recipe file, checked to exist now (before any export runs).

    `calibrates`: the target runs a calibration pass (a gptq/awq body, or measured mixed_precision). [defaults] may
    name a text for such targets: one that runs no pass does not inherit it, but one that names a text itself
    is an error (it would be ignored)."""
    if "calibration" not in entry:
        return base.calibration if calibrates else None
    key = f"{where}.calibration"
    if where != "defaults" and not calibrates:
        check.fail(key, f"applies to quant_algo {' or '.join(repr(a) for a in CALIBRATED_ALGOS)} and to "
                        "mixed_precision = true (what runs a calibration pass)")
    given = Path(check.string(entry["calibration"], key))
    path = given if given.is_absolute() else check.path.parent / given
    if not path.is_file():
        check.fail(key, f"{str(given)!r}: no such file (a UTF-8 text; a relative path is relative to the recipe)")
    return path


def _repo_template(template: str, check: _Checker) -> str:
    probe = template.replace("{model}", "m").replace("{target}", "t")
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$", probe):
        check.fail("publish.repo_id", f"{template!r} is not a hub repo id (`owner/name`; {{model}} and {{target}} "
                                      "are replaced)")
    return template


class _Checker:
    """Type and value checks that fail with `<file>: <key>: <problem>`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, problem: str) -> Any:
        raise RecipeFileError(f"{where}: {problem}" if where else problem, self.path)

    def keys(self, table: dict[str, Any], allowed: set[str], where: str) -> None:
        for key in table:
            if key in allowed:
                continue
            at = f"{where}.{key}" if where else key
            if key in _NOT_SUPPORTED:
                self.fail(at, f"not supported: {_NOT_SUPPORTED[key]}")
            self.fail(at, f"unknown key; expected one of {', '.join(sorted(allowed))}")

    def table(self, value: Any, where: str) -> None:
        if not isinstance(value, dict):
            self.fail(where, f"must be a table ([{where}]), got {_kind(value)}")

    def array_of_tables(self, value: Any, where: str) -> list[dict[str, Any]]:
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            self.fail(where, f"must be an array of tables ([[{where}]]), got {_kind(value)}")
        return list(value)

    def string(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value.strip():
            self.fail(where, f"must be a non-empty string, got {_kind(value)}")
        return str(value)

    def name(self, value: Any, where: str) -> str:
        text = self.string(value, where)
        if not _NAME.match(text):
            self.fail(where, f"{text!r}: use letters, digits, '.', '_' and '-' (64 at most, no leading '.' or '-')")
        return text

    def boolean(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            self.fail(where, f"must be true or false, got {_kind(value)}")
        return bool(value)

    def number(self, value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
            self.fail(where, f"must be a non-negative number, got {value!r}")
        return float(value)

    def choice(self, value: Any, choices: tuple[str, ...], where: str, hint: str = "") -> str:
        text = self.string(value, where)
        if text not in choices:
            extra = f" ({hint})" if hint else ""
            self.fail(where, f"{text!r} is not one of {', '.join(choices)}{extra}")
        return text

    def unique(self, names: list[str], where: list[str], key: str, what: str) -> None:
        seen: dict[str, str] = {}
        for name, at in zip(names, where, strict=True):
            if name in seen:
                self.fail(f"{at}.{key}", f"{what} name {name!r} is already used by {seen[name]}")
            seen[name] = at


def _kind(value: Any) -> str:
    kinds: dict[type, str] = {dict: "a table", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
                              float: "a number"}
    return next((text for kind, text in kinds.items() if isinstance(value, kind)), type(value).__name__)


"""Quantization as data: what every weight of an export becomes, decided once from the target and the options.

    Target (table) ─┐
    QuantOptions ───┼─► decide_recipe() ─► QuantRecipe ─► exporter (reads it)  and  manifest.json (records it)
    ModelShape ─────┘

A `LinearRecipe` is one MatMulNBits recipe (bits, block, accuracy level, zero points, algorithm); None stands
for float weights. `QuantRecipe.for_tensor(name)` answers per checkpoint tensor, so overrides (mixed precision's
int8 tensors) are data too. Mixed precision is measured, not a fixed layer rule: decide_recipe records the byte
budget (`size_budget`), the calibration pass measures each tensor's int4/int8 error (reference/
sensitivity_pass.py) and `widen` turns its choice into the recipe as applied. Nothing here reads weights or
builds graphs: pure data and validation, importing only the target table and errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

from phi3_edge.errors import Phi3EdgeError
from phi3_edge.quantize.blockwise import check_bits_and_block
from phi3_edge.quantize.mixed import down_proj_name, uses_more_bits
from phi3_edge.targets.table import Target

ALGOS = ("rtn", "hqq")
# Algorithms that need a calibration pass over text before the export (reference/export_calibration.py, run
# by api): GPTQ computes the body's blocks there (quantize/calibrated.py); AWQ per-channel scales (folded into
# the norms as the exporter reads them, quantize/awq.py) and then, its second step, the clip-searched blocks of
# the folded Linears (quantize/clip.py), handed over like GPTQ's.
CALIBRATED_ALGOS = ("gptq", "awq")
BLOCK_ALGOS = ("gptq", "awq")  # the calibrated ones whose codes come ready-made (the exporter never rounds them)
OPTION_ALGOS = ALGOS + CALIBRATED_ALGOS  # what --quant-algo accepts
ACCURACY_LEVELS = (0, 1, 2, 3, 4)  # unset, fp32, fp16, bf16, int8 (MatMulNBits' accuracy_level attribute)
HQQ_BITS = (2, 4)  # HQQ's float zero points are rejected by ORT 1.32's CPU kernel with 8-bit weights
ZERO_POINT_FORMATS = ("none", "uint", "float")  # LinearRecipe.zero_points
LM_HEAD_CHOICES = ("float", "int8", "int4")
EMBEDDING_CHOICES = ("float", "quantized")
DEFAULT_BITS, DEFAULT_BLOCK = 4, 32  # a quantized head/table on a float target
# --mixed-precision without --size-budget: 5 % over the plain export's weight bytes (llama.cpp's fixed
# use_more_bits rule costs ~7 % on SmolLM2-135M's int4 body, about the same on Phi-3-mini).
DEFAULT_SIZE_BUDGET = 1.05


class RecipeError(Phi3EdgeError, ValueError):
    """A recipe MatMulNBits (or the algorithm) cannot take: one line, raised before any weight is read."""


@dataclass(frozen=True)
class LinearRecipe:
    """One MatMulNBits weight format. symmetric: no zero-point input (the kernel uses 2^(bits-1)).

    zero_points: the zero-point input's format, recorded in the manifest: "none" (symmetric), "uint" (integer,
    packed uint8 like B: the kernel's fast path) or "float" (HQQ's float zero points in the scales' dtype).
    """

    bits: int
    block_size: int
    accuracy_level: int = 0
    symmetric: bool = True
    algo: str = "rtn"
    zero_points: str = "uint"  # for an asymmetric recipe; a symmetric one records "none"

    def __post_init__(self) -> None:
        if self.symmetric:
            object.__setattr__(self, "zero_points", "none")  # frozen: normalised once, so equal recipes compare equal
        check_linear_recipe(self)

    def describe(self) -> str:
        return f"int{self.bits} MatMulNBits ({self.algo}, block {self.block_size})"


def check_linear_recipe(recipe: LinearRecipe) -> None:
    """RecipeError (a ValueError) for a recipe MatMulNBits or the algorithm cannot take."""
    try:
        check_bits_and_block(recipe.bits, recipe.block_size)
    except ValueError as exc:
        raise RecipeError(str(exc)) from None
    if recipe.algo not in ALGOS + CALIBRATED_ALGOS:
        raise RecipeError(f"unknown quantization algorithm {recipe.algo!r}; expected one of {', '.join(OPTION_ALGOS)}")
    if recipe.algo in CALIBRATED_ALGOS and not recipe.symmetric:
        raise RecipeError(f"{recipe.algo.upper()} here is symmetric (no zero-point input: no extra bytes, the fast "
                          "kernel path)")
    if recipe.algo == "hqq" and recipe.symmetric:
        raise RecipeError("HQQ optimises zero points: it is asymmetric by construction (symmetric=False)")
    if recipe.zero_points not in ZERO_POINT_FORMATS or (recipe.zero_points == "none") != recipe.symmetric:
        raise RecipeError(f"zero points {recipe.zero_points!r}: expected uint or float (asymmetric), none (symmetric)")
    if recipe.zero_points == "float" and recipe.algo != "hqq":
        raise RecipeError("float zero points come from HQQ only (--quant-algo hqq)")
    if recipe.algo == "hqq" and recipe.bits not in HQQ_BITS:
        raise RecipeError(f"--quant-algo hqq is available for {HQQ_BITS} bits: its float zero points are rejected "
                          f"by onnxruntime's CPU MatMulNBits at {recipe.bits} bits (use rtn)")
    if recipe.accuracy_level not in ACCURACY_LEVELS:
        raise RecipeError(f"accuracy_level must be one of {ACCURACY_LEVELS}, got {recipe.accuracy_level}")


@dataclass(frozen=True)
class QuantOptions:
    """What a user can ask for beyond the target (the CLI's --quant-algo, --mixed-precision, ...)."""

    # None: the target's calibrated_algo for a model of at most its calibrate_up_to_params parameters, else
    # "rtn" (resolve_algo, which the export pipeline calls once it can count the checkpoint's parameters);
    # decide_recipe reads an unresolved None as "rtn". A name (--quant-algo) always wins.
    algo: str | None = None
    mixed_precision: bool = False  # int8 for the tensors whose measured int4 error costs most per byte
    size_budget: float | None = None  # mixed precision's byte budget: a factor of the plain export's weight bytes
    lm_head: str | None = None  # None: the target's lm_head_bits, else as the body | "float" | "int8" | "int4"
    embeddings: str | None = None  # None: quantized with a quantized lm_head if tied or the target says so
    # Set by resolve_algo, not by a user: the target's uncalibrated default also widens llama.cpp's use_more_bits
    # down projections to int8 (targets/table.py rtn_int8_down); --quant-algo rtn is the plain int4 body.
    int8_down_rule: bool = False


@dataclass(frozen=True)
class ModelShape:
    """The few model facts the recipe depends on."""

    num_layers: int
    hidden_size: int
    tied: bool  # lm_head reuses the embedding table
    # (checkpoint tensor name, (bits, block)): each decoder Linear whose stored GGUF blocks are carried as they
    # are into that format (exporter/gguf/carry.py carry_formats; packed views by their packed name). Such a
    # tensor in the body's format keeps it; every other tensor (float, Q6_K, Q4_1, safetensors) gets the
    # target's block overrides.
    carry_formats: tuple[tuple[str, tuple[int, int]], ...] = ()
    # The same for the lm_head's stored tensor: a body format it is carried into wins over the target's
    # lm_head_bits (a Q4_0 head carried at int4 is exact; at int8 it would be re-rounded at twice the bytes).
    head_carry_formats: tuple[tuple[str, tuple[int, int]], ...] = ()

    def carried_into(self, name: str) -> tuple[int, int] | None:
        """The (bits, block) a decoder Linear's stored blocks carry into as they are, or None."""
        return dict(self.carry_formats).get(name)


@dataclass(frozen=True)
class QuantRecipe:
    """Every weight's format for one export, as applied (the manifest records exactly this)."""

    body: LinearRecipe | None  # the decoder layers' Linears; None = float
    overrides: tuple[tuple[str, LinearRecipe], ...] = ()  # checkpoint tensor name -> its own recipe
    lm_head: LinearRecipe | None = None  # None = float MatMul
    embeddings: LinearRecipe | None = None  # None = float Gather; else GatherBlockQuantized (always RTN)
    shared_table: bool = False  # tied: lm_head's MatMulNBits reads the embedding table's initializers
    size_budget: float | None = None  # measured mixed precision within this factor of the plain bytes (None: off)

    def for_tensor(self, hf_name: str) -> LinearRecipe | None:
        """The recipe of one body Linear weight, by its checkpoint name."""
        return dict(self.overrides).get(hf_name, self.body)

    @property
    def quantized(self) -> bool:
        return any(r is not None for r in (self.body, self.lm_head, self.embeddings))

    @property
    def name(self) -> str | None:
        """manifest.json's short "quant_algo": rtn | hqq | rtn+int8-mixed; None for a float body."""
        if self.body is None:
            return None
        wider = any(r.bits > self.body.bits for _, r in self.overrides)
        return self.body.algo + ("+int8-mixed" if wider else "")

    def to_json(self) -> dict[str, object]:
        def one(recipe: LinearRecipe | None) -> dict[str, object] | None:
            return None if recipe is None else asdict(recipe)

        return {"body": one(self.body), "overrides": {name: one(r) for name, r in self.overrides},
                "lm_head": one(self.lm_head), "embeddings": one(self.embeddings), "shared_table": self.shared_table,
                "size_budget": self.size_budget}


@dataclass(frozen=True)
class AlgoChoice:
    """The body algorithm an export runs, and why (the one line the export prints)."""

    algo: str
    reason: str
    size_budget: float | None = None  # the target's default mixed-precision budget that comes with the algorithm
    int8_down_rule: bool = False  # the target's data-free int8 down projections come with it (rtn_int8_down)

    def describe(self) -> str:
        wider = "" if self.size_budget is None else f" + measured int8 within x{self.size_budget:g} of the bytes"
        if self.int8_down_rule:
            wider = " + int8 down projections in llama.cpp's use_more_bits layers"
        return f"quantization: {self.algo}{wider} ({self.reason})"


def resolve_algo(target: Target, options: QuantOptions, params: int, *, calibration: bool = False) -> AlgoChoice:
    """options.algo when given; else the target's calibrated algorithm for a model of at most
    target.calibrate_up_to_params parameters, or "rtn" (the calibration pass's cost grows with the parameters:
    targets/table.py). `calibration`: a --calibration text was given, which only a calibrated body (or mixed
    precision) reads, so without --mixed-precision it asks for the target's calibrated algorithm at any size."""
    if options.algo is not None:
        return AlgoChoice(options.algo, f"--quant-algo {options.algo}")
    size = f"{_params(params)} parameters"
    default = target.calibrated_algo
    if default is None:
        return AlgoChoice("rtn", f"{target.name}'s default; it has no calibrated default")
    # The user's own --mixed-precision keeps its budget; otherwise the default brings the target's.
    budget = None if options.mixed_precision else target.calibrated_size_budget
    if calibration and not options.mixed_precision:
        return AlgoChoice(default, f"{target.name}'s calibrated default, asked for by --calibration ({size}); "
                                   "--quant-algo rtn is the fast path", budget)
    limit = _params(target.calibrate_up_to_params)
    if params <= target.calibrate_up_to_params:
        skip = "" if budget is None else f", --quant-algo {default} skips the int8 widening"
        return AlgoChoice(default, f"{target.name}'s default up to {limit} parameters, this model has {size}; "
                                   f"--quant-algo rtn is the fast path{skip}", budget)
    rule = target.rtn_int8_down and not options.mixed_precision
    skip = "; --quant-algo rtn skips the int8 down projections" if rule else ""
    return AlgoChoice("rtn", f"{target.name}'s default above {limit} parameters, this model has {size}; "
                             f"--quant-algo {default} calibrates, at a cost that grows with the parameters{skip}",
                      int8_down_rule=rule)


def _params(count: int) -> str:
    """A parameter count as people write it: 140K, 135M, 3.8B."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.3g}{unit}"
    return str(count)


def check_options(target: Target, options: QuantOptions) -> None:
    """Everything decide_recipe would reject without knowing the model: call it before fetching a checkpoint."""
    _body(target, options)
    _lm_head(target, options, None)
    budget = options.size_budget
    if budget is not None and not options.mixed_precision:
        raise RecipeError("--size-budget is the byte budget of --mixed-precision; add --mixed-precision")
    if budget is not None and not budget >= 1.0:  # also NaN
        raise RecipeError(f"--size-budget must be >= 1.0 (a factor of the plain export's weight bytes), got {budget}")
    if options.embeddings not in (None, *EMBEDDING_CHOICES):
        raise RecipeError(f"--embeddings must be one of {', '.join(EMBEDDING_CHOICES)}, got {options.embeddings!r}")


def decide_recipe(target: Target, options: QuantOptions, model: ModelShape) -> QuantRecipe:
    """The one place that decides what each weight becomes (RecipeError for a combination that cannot work)."""
    check_options(target, options)
    body = _body(target, options)
    head = _lm_head(target, options, body, model)
    table = _table(target, options, model, head)
    shared = table is not None and model.tied and head is not None
    recipe = QuantRecipe(body, _block_overrides(target, model, body), table if shared else head, table, shared,
                         _size_budget(options, body))
    if options.int8_down_rule and body is not None and body.algo == "rtn" and recipe.size_budget is None \
            and body.bits < 8:
        return widen(recipe, _rule_down_projs(model, body))
    return recipe


def _rule_down_projs(model: ModelShape, body: LinearRecipe) -> list[str]:
    """The target's data-free int8 widening (targets/table.py rtn_int8_down): llama.cpp's use_more_bits layers'
    down projections, less those whose GGUF blocks are carried into the body's format as they are (a 4-bit
    source re-rounded at int8 gains nothing and doubles its bytes). Measured mixed precision replaces it."""
    names = [down_proj_name(i) for i in range(model.num_layers) if uses_more_bits(i, model.num_layers)]
    return [name for name in names if model.carried_into(name) != (body.bits, body.block_size)]


def _block_overrides(target: Target, model: ModelShape,
                     body: LinearRecipe | None) -> tuple[tuple[str, LinearRecipe], ...]:
    """The target's measured per-Linear block sizes (targets/table.py block_overrides), every layer.

    Applied only where the block divides the hidden size (the stems named there read the residual stream):
    a padded block would add bytes instead of saving them (SmolLM2's 576 columns: 64 divides, 128 does not).
    Per tensor, not for a tensor whose GGUF blocks are carried into the body's format as they are
    (ModelShape.carry_formats): a coarser block there would dequantize its stored codes and round them again,
    so carrying wins; a tensor of the same file stored otherwise (Q6_K, Q4_1, F16) is re-quantized anyway and
    takes the target's block, as does every tensor of a calibrated body (nothing of it is carried).
    """
    if body is None:
        return ()
    kept = (body.bits, body.block_size)
    # GPTQ's codes come ready-made and AWQ's weights are folded before rounding: neither carries stored blocks.
    carries = body.algo not in CALIBRATED_ALGOS
    overrides = []
    for stem, block in target.block_overrides_for(model.hidden_size).items():
        for layer in range(model.num_layers):
            name = f"model.layers.{layer}.{stem}.weight"
            if not (carries and model.carried_into(name) == kept):
                overrides.append((name, replace(body, block_size=block)))
    return tuple(overrides)


def _body(target: Target, options: QuantOptions) -> LinearRecipe | None:
    algo = "rtn" if options.algo is None else options.algo  # unresolved (no parameter count): the uncalibrated default
    if algo not in OPTION_ALGOS:
        raise RecipeError(f"unknown quantization algorithm {algo!r}; valid: {', '.join(OPTION_ALGOS)}")
    if target.bits is None:
        return None
    if target.block_size is None:
        raise RecipeError(f"target {target.name}: a {target.bits}-bit format needs a block_size")
    # HQQ tunes zero points, so it writes them even for a target whose RTN recipe is symmetric; GPTQ is always
    # symmetric (its error feedback absorbs the lost zero point; no extra bytes, the fast kernel path), and so is
    # AWQ (its scales protect the channels a zero point would; measured best so in bench/quant_real.py).
    symmetric = algo in CALIBRATED_ALGOS or (target.symmetric and algo == "rtn")
    return LinearRecipe(target.bits, target.block_size, target.accuracy_level or 0, symmetric, algo)


def _size_budget(options: QuantOptions, body: LinearRecipe | None) -> float | None:
    """Mixed precision applies to a body narrower than 8 bits; the calibration pass then measures the choice."""
    if not options.mixed_precision or body is None or body.bits >= 8:
        return None
    return options.size_budget or DEFAULT_SIZE_BUDGET


def wide_recipe(narrow: LinearRecipe) -> LinearRecipe:
    """What mixed precision widens a tensor to: int8 RTN, same block and zero-point choice (HQQ's float zero
    points do not exist at 8 bits on ORT's CPU kernel, so an HQQ tensor widens to RTN with uint8 zero points)."""
    return LinearRecipe(8, narrow.block_size, narrow.accuracy_level, narrow.symmetric, "rtn")


def widen(recipe: QuantRecipe, names: Sequence[str], table_name: str | None = None) -> QuantRecipe:
    """The recipe with `names` (body Linears) at int8; `table_name` among them widens lm_head (and its shared
    table). Names keep the order given (the measured order: most error removed per byte first)."""
    body_names = [n for n in names if n != table_name]
    overrides = dict(recipe.overrides)
    for name in body_names:
        narrow = recipe.for_tensor(name)
        if narrow is None:
            raise RecipeError(f"{name}: a float tensor cannot be widened to int8")
        overrides[name] = wide_recipe(narrow)
    head, table = recipe.lm_head, recipe.embeddings
    if table_name is not None and table_name in names and head is not None:
        head = wide_recipe(head)
        table = head if recipe.shared_table else table
    return replace(recipe, overrides=tuple(overrides.items()), lm_head=head, embeddings=table)


def _lm_head(target: Target, options: QuantOptions, body: LinearRecipe | None,
             model: ModelShape | None = None) -> LinearRecipe | None:
    choice = options.lm_head
    carried = model is not None and body is not None and (body.bits, body.block_size) in {
        fmt for _, fmt in model.head_carry_formats}
    if choice is None and body is not None and target.lm_head_bits not in (None, body.bits) and not carried:
        # The target's measured head width (targets/table.py lm_head_bits), RTN in the body's block.
        return LinearRecipe(target.lm_head_bits, body.block_size, body.accuracy_level, target.symmetric, "rtn")
    if choice is None and body is not None and body.algo in CALIBRATED_ALGOS:
        # The calibration pass covers the decoder layers only: lm_head keeps the body's format, RTN-rounded.
        return replace(body, algo="rtn", symmetric=target.symmetric)
    if choice is None:
        return body
    if choice not in LM_HEAD_CHOICES:
        raise RecipeError(f"--lm-head must be one of {', '.join(LM_HEAD_CHOICES)}, got {choice!r}")
    if choice == "float":
        return None
    return LinearRecipe(int(choice.removeprefix("int")), target.block_size or DEFAULT_BLOCK,
                        target.accuracy_level or 0, target.symmetric, "rtn")


def _table(target: Target, options: QuantOptions, model: ModelShape,
           head: LinearRecipe | None) -> LinearRecipe | None:
    """The embedding table: quantized when asked, or by default with a quantized lm_head when tied (stored
    once) or when the target's measurements say so (targets/table.py quantize_embeddings: a Gather of one row
    costs nothing).

    GatherBlockQuantized takes no float zero points, so tables are always RTN-rounded; its 2-D view of the
    codes needs whole blocks per row (padding would change the gathered width).
    """
    by_default = head is not None and (model.tied or target.quantize_embeddings)
    wanted = options.embeddings == "quantized" or (options.embeddings is None and by_default)
    if not wanted:
        return None
    bits = head.bits if head is not None else (target.bits or DEFAULT_BITS)
    block = head.block_size if head is not None else (target.block_size or DEFAULT_BLOCK)
    if model.hidden_size % block:
        if options.embeddings == "quantized":
            raise RecipeError(f"cannot quantize the embeddings: hidden size {model.hidden_size} is not a "
                              f"multiple of the block size {block}")
        return None
    return LinearRecipe(bits, block, target.accuracy_level or 0, target.symmetric, "rtn")

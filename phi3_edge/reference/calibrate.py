"""Calibration driver: the layer-streamed forward feeding GPTQ and AWQ, one decoder layer at a time.

    calibration text ─► token sequences ─► embed ─► layer 0 ─► layer 1 ─► ...
                                                     │ taps: every Linear's input x (S, K)
                                                     ▼
               statistics of layer i (GPTQ: H = sum x^T x; AWQ: mean |x|, a token sample, block Grams)
                                                     ▼
                              quantize layer i's Linears ─► rerun layer i with them ─► states for layer i+1

Inputs of layer i come from the *quantized* layers 0..i-1 (GPTQ's sequential mode): each layer then fits the
activations the deployed model will really feed it, so it also absorbs part of the earlier layers' error
(the fp32 stream would fit every layer to inputs it never sees once the layers before it are int4). The price
is one extra forward per layer. Within a layer, o_proj and down_proj see the outputs of fp32 q/k/v and
gate/up (one forward per layer rather than GPTQ's "true sequential" four).

Memory: the states of the calibration sequences (a few thousand tokens x hidden), one layer's fp32 weights,
its statistics (K x K per Linear for GPTQ), and the results handed to `sink` as each layer finishes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from phi3_edge.errors import Phi3EdgeError
from phi3_edge.quantize.awq import AwqScales, Quantizer, search_scales
from phi3_edge.quantize.blockwise import QuantizedBlocks, dequantize, quantize_rtn
from phi3_edge.quantize.clip import block_grams, clip_search, output_error, scaled_grams
from phi3_edge.quantize.gptq import hessian_factor, quantize_gptq
from phi3_edge.reference import layer_graph as lg
from phi3_edge.reference.checkpoint_side import CheckpointSide, WeightMap
from phi3_edge.reference.state import State

MAX_TOKENS = 4096  # calibration tokens used (GPTQ saturates well below; more only costs time)
SEQUENCE = 512  # tokens per calibration sequence

# (checkpoint tensor name) -> (bits, block_size), or None to leave that tensor alone
Plan = Callable[[str], tuple[int, int] | None]
Sink = Callable[[str, QuantizedBlocks], None]


class CalibrationError(Phi3EdgeError):
    """The calibration text cannot be used (missing, unreadable, too short): one line naming the file."""


def builtin_calibration_text() -> str:
    """The package's own mixed set: prose, Python/SQL/JS, chat-formatted turns (quantize/data/calibration.txt)."""
    return resources.files("phi3_edge.quantize").joinpath("data/calibration.txt").read_text(encoding="utf-8")


def calibration_text(path: Path | None) -> str:
    if path is None:
        return builtin_calibration_text()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationError(f"{path}: cannot read the calibration text ({exc.__class__.__name__})") from None
    if len(text.strip()) < 64:
        raise CalibrationError(f"{path}: the calibration text has {len(text.strip())} characters; it needs 64+")
    return text


def sequences_of(ids: Sequence[int], length: int = SEQUENCE, budget: int = MAX_TOKENS) -> list[list[int]]:
    """Consecutive windows of `length` tokens, at most `budget` tokens in all (a short tail is kept if >= 16)."""
    ids = list(ids)[:budget]
    return [ids[i:i + length] for i in range(0, len(ids), length) if len(ids[i:i + length]) >= 16]


@dataclass
class LayerStats:
    """Per-tensor statistics of one layer's Linear inputs, summed over every calibration token."""

    hessians: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (K, K) float64, sum x^T x
    abs_mean: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (K,) sum |x| (divide by tokens)
    samples: dict[str, list[np.ndarray]] = field(default_factory=dict)  # name -> x rows kept for AWQ's search
    grams: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (n_blocks, b, b) float64 block Grams
    tokens: dict[str, int] = field(default_factory=dict)
    keep_samples: int = 0  # rows of x kept per tensor (AWQ), 0 = none
    gram_block: Callable[[str], int | None] | None = None  # name -> its block size for `grams` (None: no Gram)

    def add(self, name: str, x: np.ndarray, hessian: bool) -> None:
        x64 = x.astype(np.float64)  # (S, K)
        if hessian:
            gram = x64.T @ x64  # (K, K)
            held_h = self.hessians.get(name)
            if held_h is None:
                self.hessians[name] = np.add(gram, 0.0, out=gram)  # same bits as 0.0 + gram, no second copy
            else:
                held_h += gram  # in place: one (K, K) sum alive, not two
            del gram
        self.abs_mean[name] = self.abs_mean.get(name, 0.0) + np.abs(x64).sum(axis=0)
        self.tokens[name] = self.tokens.get(name, 0) + len(x)
        block = None if self.gram_block is None else self.gram_block(name)
        if block is not None:  # the diagonal blocks of x^T x only: T * K * b work, K * b floats
            grams = block_grams(x64, block)
            held_g = self.grams.get(name)
            self.grams[name] = grams if held_g is None else np.add(held_g, grams, out=held_g)
        held = self.samples.setdefault(name, [])
        room = self.keep_samples - sum(len(s) for s in held)
        if room > 0:
            held.append(x[:room].astype(np.float32))


def layer_stats(side: CheckpointSide, layer: int, states: Sequence[State], *, hessian: bool,
                keep_samples: int = 0, gram_block: Callable[[str], int | None] | None = None) -> LayerStats:
    stats = LayerStats(keep_samples=keep_samples, gram_block=gram_block)
    side.run_layer(layer, states, lambda _layer, _index, name, x: stats.add(name, x, hessian))
    return stats


def gptq_calibrate(side: CheckpointSide, sequences: Sequence[Sequence[int]], plan: Plan, sink: Sink, *,
                   act_order: bool = True, damp: float = 0.01, on_layer: Callable[[int], None] | None = None,
                   base: WeightMap | None = None) -> None:
    """GPTQ every Linear `plan` names, layer by layer; each result goes to `sink` and into the stream.

    `base`: the float weights to start from instead of the checkpoint's (AWQ's folded ones: AWQ then GPTQ).
    `side` must carry no weight_map of its own: this installs one that substitutes the layers done so far.
    """
    done: dict[str, np.ndarray] = {}  # dequantized weights of the current layer only (earlier ones are dropped)
    start = base or (lambda name, rows: rows)
    side.weight_map = lambda name, rows: done[name] if name in done else start(name, rows)
    states = [side.embed(ids) for ids in sequences]
    for layer in range(side.num_layers):
        stats = layer_stats(side, layer, states, hessian=True)
        for name in list(stats.hessians):
            shape = plan(name)
            if shape is None:
                del stats.hessians[name]
                continue
            k = stats.hessians[name].shape[0]
            # The Hessian is handed over (popped, factorised in place): down_proj's alone is K = 8192, 537 MB.
            factor = hessian_factor(stats.hessians.pop(name), damp, act_order, overwrite=True)
            w = side.store.read_rows(side.store.info(name, (side.store.rows_of(name), k)), 0,
                                     side.store.rows_of(name))  # (N, K) fp32
            w = start(name, w)
            blocks = quantize_gptq(w, None, shape[0], shape[1], damp=damp, act_order=act_order, factor=factor)
            sink(name, blocks)
            del w, factor
            done[name] = dequantize(blocks)
            del blocks
        del stats
        states = side.run_layer(layer, states)  # this layer's outputs with its quantized weights
        done.clear()  # the next layer reads its own weights: these are not needed again
        if on_layer is not None:
            on_layer(layer)
    side.weight_map = None


AWQ_SAMPLES = 512  # input rows per Linear kept for the scale search (tokens x K floats, one layer at a time)


@dataclass
class AwqLayer:
    """One layer's AWQ result: its scale vectors, its folded weights and, with the clip search, its blocks."""

    scales: AwqScales  # this layer's three vectors, alphas and error ratios
    weights: dict[str, np.ndarray]  # checkpoint name -> folded fp32 tensor (norms, qkv, gate_up, down)
    # checkpoint name -> the clip-searched symmetric blocks of the folded Linear (o_proj: of its own weights);
    # what the export writes and the stream reads. Empty without a clip plan.
    blocks: dict[str, QuantizedBlocks] = field(default_factory=dict)

    @property
    def alphas(self) -> dict[str, float]:
        return self.scales.alphas

    @property
    def gains(self) -> dict[str, float]:
        return self.scales.gains


PerTensor = Callable[[str], Quantizer]  # checkpoint name -> the quantizer its recipe gives it


def awq_layer(side: CheckpointSide, layer: int, stats: LayerStats, quantizer: PerTensor, clip: Plan | None = None,
              scale_dtype: str = "float32") -> AwqLayer:
    """AWQ scales for the three foldable groups of one layer (see quantize/awq.py), applied to its weights by
    the same `AwqScales.folds()` the exporter reads through; each group searched with its tensor's quantizer.
    `clip`: (bits, block) of each Linear to clip-search (quantize/clip.py) after the fold (stats need its Grams)."""
    h = side.spec.hidden_size
    inter = side.spec.intermediate_size
    qkv, _o, gate_up, down = linear_names(layer)
    norm1 = f"model.layers.{layer}.input_layernorm.weight"
    norm2 = f"model.layers.{layer}.post_attention_layernorm.weight"
    weights = {qkv: _read(side, qkv, h), gate_up: _read(side, gate_up, h), down: _read(side, down, inter),
               norm1: _read(side, norm1, h), norm2: _read(side, norm2, h)}
    found = AwqScales({})
    for name in (qkv, gate_up, down):
        x = np.concatenate(stats.samples[name])  # (T, K) the kept input rows
        found.scales[name], found.alphas[name], found.gains[name] = search_scales(
            x, [weights[name]], stats.abs_mean[name] / stats.tokens[name], quantizer(name))
    folded = {name: fold.apply(weights[name], 0) for name, fold in found.folds().items()}
    del weights
    blocks = {} if clip is None else _clip_layer(side, layer, stats, found, folded, clip, scale_dtype)
    return AwqLayer(found, folded, blocks)


def _read(side: CheckpointSide, name: str, k: int) -> np.ndarray:
    """A Linear (rows, k) or a norm (k,) in fp32, whole."""
    store = side.store
    info = store.info(name, (store.rows_of(name), k) if name.endswith("_proj.weight") else (k,))
    return store.read_rows(info, 0, info.shape[0])


def _clip_layer(side: CheckpointSide, layer: int, stats: LayerStats, found: AwqScales,
                folded: dict[str, np.ndarray], clip: Plan, scale_dtype: str) -> dict[str, QuantizedBlocks]:
    """The clip search on each planned Linear as the export will hold it: folded W * s judged with the Gram of
    the inputs it then sees, x / s (G_ij / (s_i s_j)); o_proj (not folded) with its own inputs' Gram."""
    out = {}
    for name in linear_names(layer):
        shape = clip(name)
        if shape is None:
            continue
        w = folded[name] if name in folded else _read(side, name, side.spec.num_heads * side.spec.head_dim)
        grams = stats.grams[name]
        if grams.shape[1] != shape[1]:
            raise ValueError(f"{name}: Grams of block {grams.shape[1]} collected, the recipe asks for {shape[1]}")
        s = found.scales.get(name)
        judged = grams if s is None else scaled_grams(grams, s)
        out[name] = clip_search(w, judged, shape[0], scale_dtype)
        rtn = output_error(w, quantize_rtn(w, shape[0], shape[1], True, scale_dtype), judged)
        found.clip_gains[name] = output_error(w, out[name], judged) / rtn if rtn else 1.0  # <= 1 by construction
    return out


def awq_calibrate(side: CheckpointSide, sequences: Sequence[Sequence[int]], quantize: Quantizer,
                  sink: Callable[[int, AwqLayer], None], *, per_tensor: PerTensor | None = None,
                  on_layer: Callable[[int], None] | None = None, clip: Plan | None = None,
                  scale_dtype: str = "float32") -> None:
    """AWQ layer by layer on the quantized stream; `sink` gets each layer's scales and folded fp32 weights
    (only the current layer's are held here). `per_tensor`: each tensor's own quantizer, by name, instead of
    `quantize` for all (mixed precision's int8 down projections search and stream with the int8 grid).

    `clip`: each Linear's (bits, block) for AWQ's second step, the clip search on the folded weights with the
    block Grams (scales rounded to `scale_dtype`, the initializers'); the stream then reads those blocks and
    `sink` gets them in AwqLayer.blocks. Without it the stream rounds the folded weights with RTN."""
    current: dict[str, np.ndarray] = {}
    quantizer = per_tensor or (lambda name: quantize)

    def gram_block(name: str) -> int | None:
        shape = None if clip is None else clip(name)
        return None if shape is None else shape[1]

    side.weight_map = lambda name, rows: current.get(name, rows)
    states = [side.embed(ids) for ids in sequences]
    for layer in range(side.num_layers):
        current.clear()
        stats = layer_stats(side, layer, states, hessian=False, keep_samples=AWQ_SAMPLES, gram_block=gram_block)
        result = awq_layer(side, layer, stats, quantizer, clip, scale_dtype)
        del stats
        sink(layer, result)
        current.update(_streamed(side, layer, result, quantizer))
        del result
        states = side.run_layer(layer, states)
        if on_layer is not None:
            on_layer(layer)
    side.weight_map = None


def _streamed(side: CheckpointSide, layer: int, result: AwqLayer, quantizer: PerTensor) -> dict[str, np.ndarray]:
    """What the next forward reads for this layer: the clip-searched blocks, else RTN of the folded Linears
    (and of o_proj, not folded), and the folded norms as they are."""
    out = {n: dequantize(result.blocks[n]) if n in result.blocks else
           (dequantize(quantizer(n)(w)) if n.endswith("_proj.weight") else w) for n, w in result.weights.items()}
    o_name = linear_names(layer)[1]
    if o_name in result.blocks:
        out[o_name] = dequantize(result.blocks[o_name])
    else:  # v->o is not folded: plain RTN
        out[o_name] = dequantize(quantizer(o_name)(_read(side, o_name, side.spec.num_heads * side.spec.head_dim)))
    return out


def linear_names(layer: int) -> list[str]:
    """Checkpoint names of a layer's Linears in the reference plan (packed qkv, packed gate_up)."""
    return [lg.checkpoint_name(f"{lg.LAYER_PREFIX}.{stem}.weight", layer)
            for stem in ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")]

"""Block-wise weight quantization along K, and the exact byte layout onnxruntime's MatMulNBits reads.

A Linear weight arrives in the checkpoint's (N out, K in) layout. Each row is cut into blocks of
`block_size` consecutive K elements (the last block zero-padded); every block gets its own scale and zero
point, and MatMulNBits dequantizes as  w = (q - zero_point) * scale.  Pure numpy, one chunk of rows at a
time: callers stream row blocks through here and never hold a whole tensor.

Two algorithms:
  * RTN (round to nearest) — symmetric (no zero-point input; MatMulNBits then uses 2^(bits-1)) or
    asymmetric (uint8 zero points).
  * HQQ (half-quadratic quantization) — asymmetric, tuned per block by HQQ's l_p shrinkage iterations.
    Default: integer zero points (uint8, packed like RTN's), the scale and zero point refitted together —
    the kernel's fast path at 1/8 of the float format's zero-point bytes. Option: *float* zero points with
    RTN's scale (MatMulNBits takes them in the scales' dtype, unpacked (N, n_blocks)): about twice the error
    reduction, but onnxruntime 1.32's CPU kernel leaves its int4 fast path with them (bench/hqq_speed.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SUPPORTED_BITS = (2, 4, 8)  # the widths MatMulNBits packs evenly into bytes
HQQ_ZERO_POINTS = ("uint", "float")  # quantize_hqq's zero-point formats (uint: packed uint8, the default)


@dataclass(frozen=True)
class QuantizedBlocks:
    q: np.ndarray  # uint8 (N, n_blocks, block_size), codes 0 .. 2^bits - 1
    scales: np.ndarray  # float32 (N, n_blocks), exactly representable in the storage dtype
    zero_points: np.ndarray | None  # uint8 (RTN) or float32 (HQQ) (N, n_blocks); None = symmetric default
    bits: int
    k: int  # K before padding: dequantize() trims back to it

    @property
    def block_size(self) -> int:
        return int(self.q.shape[2])

    def effective_zero_points(self) -> np.ndarray:
        """Zero points as MatMulNBits applies them: 2^(bits-1) when none are given."""
        if self.zero_points is None:
            return np.full(self.scales.shape, 2 ** (self.bits - 1), dtype=np.float32)
        return self.zero_points.astype(np.float32)


def n_blocks(k: int, block_size: int) -> int:
    return -(-k // block_size)


def to_blocks(w: np.ndarray, block_size: int) -> np.ndarray:
    """(N, K) float -> (N, n_blocks, block_size) float32, K zero-padded to a multiple of the block."""
    rows, k = w.shape
    padded = np.zeros((rows, n_blocks(k, block_size) * block_size), dtype=np.float32)
    padded[:, :k] = w
    return padded.reshape(rows, -1, block_size)  # (N, n_blocks, block)


def check_bits_and_block(bits: int, block_size: int) -> None:
    """ValueError unless MatMulNBits can take this width and block size."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits}")
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two >= 16 (MatMulNBits' rule), got {block_size}")


def _storable(x: np.ndarray, dtype: str) -> np.ndarray:
    """Round to what the initializer will hold, so codes are chosen against the scales ORT will really use."""
    return x.astype(dtype).astype(np.float32)


def _codes(blocks: np.ndarray, scales: np.ndarray, zero: np.ndarray | int, bits: int) -> np.ndarray:
    """Nearest codes for (N, n_blocks, block) values given per-block scales and zero points."""
    zero = np.broadcast_to(np.asarray(zero, dtype=np.float32), scales.shape)
    return _round_clip(blocks / scales[..., None] + zero[..., None], 2**bits - 1).astype(np.uint8)


def _round_clip(x: np.ndarray, qmax: int) -> np.ndarray:
    """rint + clip to [0, qmax] in place (x is a temporary): ~2.5x faster than np.clip(np.rint(x))."""
    np.rint(x, out=x)
    np.minimum(x, qmax, out=x)
    np.maximum(x, 0, out=x)
    return x


def _symmetric_scales(blocks: np.ndarray, bits: int) -> np.ndarray:
    """Scales for the fixed zero point z = 2^(bits-1): the block's largest-magnitude weight maps to code 0.

    scale = extreme / -z, with `extreme` the signed weight of largest magnitude (the scale is negative for a
    positive extreme: a mirrored grid). The extreme side gets all z steps and is exact; the other side has
    z-1 steps and clips by at most one step. That is MLAS' (and the genai builder's) choice, and the lowest
    error of the rules measured (RMS error / RMS weight, N(0,1), blocks of 32, 4-bit): 0.0861 here; 0.0866
    fitting both sides without clipping; 0.092 positive-only fit; 0.095 absmax/7.5; 0.098 absmax/7.
    """
    z = 2 ** (bits - 1)
    index = np.abs(blocks).argmax(axis=-1)[..., None]  # (N, n_blocks, 1)
    extreme = np.take_along_axis(blocks, index, axis=-1)[..., 0]  # (N, n_blocks), signed
    scales = extreme / -z
    return np.where(scales != 0, scales, 1.0).astype(np.float32)  # all-zero block: any scale is exact


def _range_scales(blocks: np.ndarray, qmax: int, scale_dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(low end, scale) per block for asymmetric codes 0..qmax spanning [low, high].

    The range always holds 0, as MLAS does: zero weights and the padding stay exact, and a constant block
    cannot end up with a range nothing maps to. For real weights a block of one sign is rare enough that
    this costs nothing measurable.
    """
    low = np.minimum(blocks.min(axis=-1), 0.0)
    high = np.maximum(blocks.max(axis=-1), 0.0)
    scales = np.where(high > low, (high - low) / qmax, 1.0).astype(np.float32)  # all-zero: any is exact
    return low, _storable(scales, scale_dtype)


def quantize_rtn(w: np.ndarray, bits: int, block_size: int, symmetric: bool,
                 scale_dtype: str = "float32") -> QuantizedBlocks:
    """Round-to-nearest block quantization of an (N, K) chunk; scales rounded to `scale_dtype` first."""
    check_bits_and_block(bits, block_size)
    blocks = to_blocks(w, block_size)  # (N, n_blocks, block)
    if symmetric:
        scales = _storable(_symmetric_scales(blocks, bits), scale_dtype)
        return QuantizedBlocks(_codes(blocks, scales, 2 ** (bits - 1), bits), scales, None, bits, w.shape[1])
    qmax = 2**bits - 1
    low, scales = _range_scales(blocks, qmax, scale_dtype)
    zero = np.clip(np.rint(-low / scales), 0, qmax).astype(np.uint8)
    return QuantizedBlocks(_codes(blocks, scales, zero, bits), scales, zero, bits, w.shape[1])


def dequantize(blocks: QuantizedBlocks) -> np.ndarray:
    """(N, K) float32 as MatMulNBits sees the weight: (q - zero_point) * scale, padding trimmed."""
    zero = blocks.effective_zero_points()
    w = (blocks.q.astype(np.float32) - zero[..., None]) * blocks.scales[..., None]  # (N, n_blocks, block)
    trimmed: np.ndarray = w.reshape(w.shape[0], -1)[:, : blocks.k]  # (N, K)
    return trimmed


# --- HQQ -----------------------------------------------------------------------------------------------

def _shrink_lp(x: np.ndarray, beta: float, p: float) -> np.ndarray:
    """Proximal operator of |x|^p (p < 1): soft-threshold that spares large residuals (outliers)."""
    magnitude = np.abs(x)
    kept = magnitude - np.exp((p - 1) * np.log(magnitude + 1e-8)) / beta  # |x|^(p-1); exp/log: 1.5x faster
    np.maximum(kept, 0.0, out=kept)
    shrunk: np.ndarray = np.copysign(kept, x)
    return shrunk


def _hqq_zero(blocks: np.ndarray, inv_scale: np.ndarray, zero: np.ndarray, qmax: int, iters: int,
              p: float = 0.7, beta: float = 10.0, kappa: float = 1.01) -> np.ndarray:
    """HQQ's alternating minimisation over the zero point (scale fixed), keeping each block's best iterate.

    The iterate is judged by the per-block mean |W - dequant(quant(W))|, the criterion onnxruntime's HQQ
    tracks; but onnxruntime stops the whole tensor at its first non-improving step, while keeping the best
    per block makes the result independent of how rows are chunked and never worse than the start.
    """
    inv = inv_scale[..., None]  # (N, n_blocks, 1)
    scaled = blocks * inv  # weights in code units: the error ranks blocks alike there (one scale per block)
    # The shrinkage threshold lives in weight units: shrink(e / inv) * inv = sign(e) max(|e| - c |e|^(p-1), 0)
    # with c = inv^(2-p) / beta per block, so every step stays in code units (no full-size / and *). Measured on
    # a 1536x1536 N(0,1) tensor: the same error (0.075590 vs 0.075591 RMS), 3.7 s vs 4.2 s (best of 3, loaded
    # 2-core host). 10 iterations instead of 20 would halve it again for +0.1 % error (0.07564 vs 0.07555).
    lift = np.power(inv, 2 - p).astype(np.float32)  # (N, n_blocks, 1)
    best_zero, best_err = zero, np.full(zero.shape, np.inf, dtype=np.float32)
    for step in range(iters + 1):
        q = _round_clip(scaled + zero[..., None], qmax)
        q -= zero[..., None]
        error = np.subtract(scaled, q, out=q)  # (N, n_blocks, block), code units
        magnitude = np.abs(error)
        err = magnitude.mean(axis=-1)
        improved = err < best_err
        best_zero, best_err = np.where(improved, zero, best_zero), np.where(improved, err, best_err)
        if step == iters:
            break
        threshold = np.exp((p - 1) * np.log(magnitude + 1e-8 * inv)) * (lift / beta)  # c |e|^(p-1)
        np.subtract(magnitude, threshold, out=magnitude)
        np.maximum(magnitude, 0.0, out=magnitude)
        residual = np.copysign(magnitude, error)
        # new zero = mean(q - scaled + residual), with q - scaled = -error
        zero = zero + np.mean(residual - error, axis=-1)
        beta *= kappa
    return best_zero


def quantize_hqq(w: np.ndarray, bits: int, block_size: int, iters: int | None = None,
                 scale_dtype: str = "float32", zero_points: str = "uint") -> QuantizedBlocks:
    """HQQ, l_p (p=0.7) shrinkage of the reconstruction error, per block.

    zero_points "uint" (default): integer zero points 0..2^bits-1 with the scale refitted each step
    (_hqq_uint; `iters` default 8). "float": RTN's scales with float32 zero points (_hqq_zero; default 20),
    the original HQQ; rounding those back to integers would give RTN's zero points again, no gain.

    SmolLM2-135M (bench/quant_real.py, int4 table): KL 0.300 uint vs 0.355 asymmetric / 0.349 symmetric RTN at
    85.7 MB (symmetric 84.0). Float zero points measure KL 0.071 at 97.3 MB, but those weights come from a Q4_1
    GGUF and float zero points re-find its grid exactly: an artefact, not a gain to expect elsewhere. And
    onnxruntime 1.32's CPU MatMulNBits ran a mini layer ~30x slower with float zero points (bench/hqq_speed.py).
    """
    check_bits_and_block(bits, block_size)
    if zero_points not in HQQ_ZERO_POINTS:
        raise ValueError(f"HQQ zero points must be one of {HQQ_ZERO_POINTS}, got {zero_points!r}")
    qmax = 2**bits - 1
    blocks = to_blocks(w, block_size)  # (N, n_blocks, block)
    low, scales = _range_scales(blocks, qmax, scale_dtype)  # RTN's asymmetric start
    if zero_points == "uint":
        flat = blocks.reshape(-1, block_size)  # (N * n_blocks, block): every block of the chunk at once
        fit_scales, fit_zero = _hqq_uint(flat, scales.reshape(-1), np.rint(-low / scales).reshape(-1), qmax,
                                         UINT_ITERS if iters is None else iters, scale_dtype)
        scales = fit_scales.reshape(scales.shape)
        zero_codes = fit_zero.reshape(scales.shape).astype(np.uint8)
        return QuantizedBlocks(_codes(blocks, scales, zero_codes, bits), scales, zero_codes, bits, w.shape[1])
    inv_scale = 1.0 / scales  # HQQ works with w * inv_scale + zero to avoid divisions
    zero = _hqq_zero(blocks, inv_scale, np.clip(np.rint(-low * inv_scale), 0, qmax), qmax,
                     FLOAT_ITERS if iters is None else iters)
    zero = _storable(np.clip(zero, 0, qmax).astype(np.float32), scale_dtype)
    return QuantizedBlocks(_codes(blocks, scales, zero, bits), scales, zero, bits, w.shape[1])


# Iterations: integer zero points converge fast (t3 4-bit RMS error vs asymmetric RTN, 512x2048: 0.987 after
# 1 step, 0.977 after 5, 0.9756 after 8, 0.9752 after 10); float ones keep gaining (0.950 at 5, 0.928 at 20).
UINT_ITERS, FLOAT_ITERS = 8, 20


def _hqq_uint(blocks: np.ndarray, scales: np.ndarray, zero: np.ndarray, qmax: int, iters: int, scale_dtype: str,
              p: float = 0.7, beta: float = 3.0, kappa: float = 1.01) -> tuple[np.ndarray, np.ndarray]:
    """HQQ with integer zero points: (scale, zero) of each block (M, block), both refitted every step.

    One step, on the blocks still improving:
        e  = W / s - (q - z)                    error in code units (scale-free: beta means the same anywhere)
        E  = shrink_lp(e)                       keep the large (outlier) part of the error, drop the rest
        T  = W - s E                            the target the grid should hit
        s, b = least squares of T ~ s q + b     codes q fixed;  z = rint(-b / s) in 0..qmax,
        s  = <T, q - z> / <q - z, q - z>        refit with the integer z, rounded to the stored dtype
        q  = codes(W, s, z);  keep (s, z) iff the block's squared error fell, else freeze the block
    A block leaves at its first non-improving step (about a third of them per step), so the work shrinks as
    they converge, and the result is per block: independent of how rows are chunked. Squared error, not HQQ's
    mean |error|: the output error of x @ W.T is quadratic in the weight error. The shrinkage in code units
    with beta 3 measured best of 1/3/10/30 (N(0,1), t3, planted outliers; at weight scales 1 and 0.02 alike).
    """
    scales, zero = scales.astype(np.float32), np.clip(zero, 0, qmax).astype(np.float32)
    best_scale, best_zero = scales.copy(), zero.copy()
    q = _block_codes(blocks, scales, zero, qmax)
    best_err = _sq_error(blocks, scales, zero, q)
    active = np.flatnonzero(best_err > 0)  # exact blocks (zeros, constants) are done
    for _ in range(iters):
        if active.size == 0:
            break
        w, s, z, codes = blocks[active], best_scale[active], best_zero[active], q[active]  # (A, block), (A,)
        s, z = _fit_scale_zero(w, s, z, codes, qmax, scale_dtype, p, beta)
        codes = _block_codes(w, s, z, qmax)
        err = _sq_error(w, s, z, codes)
        improved = err < best_err[active]
        kept = active[improved]
        best_scale[kept], best_zero[kept], best_err[kept], q[kept] = s[improved], z[improved], err[improved], \
            codes[improved]
        active = kept
        beta *= kappa
    return best_scale, best_zero


def _block_codes(w: np.ndarray, scales: np.ndarray, zero: np.ndarray, qmax: int) -> np.ndarray:
    """(M, block) float codes for (M,) scales and integer zero points."""
    return _round_clip(w / scales[:, None] + zero[:, None], qmax)


def _sq_error(w: np.ndarray, scales: np.ndarray, zero: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Per-block sum of squared weight error, (M,)."""
    error = w - scales[:, None] * (q - zero[:, None])  # (M, block)
    out: np.ndarray = np.einsum("ij,ij->i", error, error)
    return out


def _fit_scale_zero(w: np.ndarray, s: np.ndarray, z: np.ndarray, q: np.ndarray, qmax: int, scale_dtype: str,
                    p: float, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """One HQQ step of _hqq_uint: shrink the error, refit (scale, integer zero) to the shrunk target."""
    error = w / s[:, None] - (q - z[:, None])  # (A, block), code units
    magnitude = np.abs(error)
    kept = magnitude - np.exp((p - 1) * np.log(magnitude + 1e-8)) / beta  # |e| - |e|^(p-1) / beta
    np.maximum(kept, 0.0, out=kept)
    target = w - s[:, None] * np.copysign(kept, error)  # (A, block), weight units
    q_mean, t_mean = q.mean(axis=1), target.mean(axis=1)
    centred = q - q_mean[:, None]
    variance = np.einsum("ij,ij->i", centred, centred)
    slope = np.einsum("ij,ij->i", centred, target) / np.maximum(variance, 1e-12)
    slope = np.where((variance > 0) & (slope > 0), slope, s)  # a one-code block keeps its scale
    zero = np.clip(np.rint((slope * q_mean - t_mean) / slope), 0, qmax).astype(np.float32)  # -b / s
    shifted = q - zero[:, None]
    norm = np.einsum("ij,ij->i", shifted, shifted)
    refit = np.einsum("ij,ij->i", shifted, target) / np.maximum(norm, 1e-12)
    scale = np.where((norm > 0) & (refit > 0) & np.isfinite(refit), refit, slope)
    return _storable(scale.astype(np.float32), scale_dtype), zero


# --- MatMulNBits packing -------------------------------------------------------------------------------

def _pack_last_axis(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack codes along the last axis, 8/bits per byte, element j of a group in bits [j*bits, (j+1)*bits)."""
    per_byte = 8 // bits
    groups = values.reshape(*values.shape[:-1], -1, per_byte).astype(np.uint8)  # (..., bytes, per_byte)
    packed = np.zeros(groups.shape[:-1], dtype=np.uint8)
    for j in range(per_byte):
        packed |= groups[..., j] << np.uint8(bits * j)
    return packed


def _unpack_last_axis(packed: np.ndarray, bits: int) -> np.ndarray:
    per_byte = 8 // bits
    mask = np.uint8(2**bits - 1)
    parts = [(packed >> np.uint8(bits * j)) & mask for j in range(per_byte)]
    return np.stack(parts, axis=-1).reshape(*packed.shape[:-1], -1)  # (..., bytes * per_byte)


def pack_weights(q: np.ndarray, bits: int) -> np.ndarray:
    """(N, n_blocks, block) codes -> MatMulNBits B: uint8 (N, n_blocks, block * bits / 8)."""
    return _pack_last_axis(q, bits)


def unpack_weights(packed: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of pack_weights: (N, n_blocks, blob) -> (N, n_blocks, block) codes."""
    return _unpack_last_axis(packed, bits)


def pack_zero_points(zero_points: np.ndarray, bits: int) -> np.ndarray:
    """uint8 (N, n_blocks) -> MatMulNBits' packed zero points uint8 (N, ceil(n_blocks * bits / 8)).

    Same low-bits-first packing as B, along the block axis; the padding slot of an odd count is unused.
    """
    per_byte = 8 // bits
    rows, count = zero_points.shape
    padded = np.zeros((rows, -(-count // per_byte) * per_byte), dtype=np.uint8)
    padded[:, :count] = zero_points
    return _pack_last_axis(padded, bits)


def unpack_zero_points(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of pack_zero_points: the first `count` (= n_blocks) zero points of each row."""
    return _unpack_last_axis(packed, bits)[:, :count]

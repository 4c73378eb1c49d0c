"""GPTQ: block-wise symmetric quantization that spends each column's rounding error on the columns not yet rounded.

For a Linear y = x @ W.T with calibration inputs X (n, K), the output error of a quantized W is
    || X (W - Q).T ||^2 = sum_rows (w - q) H (w - q)^T,    H = X.T X   (K, K), shared by every row
GPTQ (Frantar et al. 2022, the OBS update) rounds W one column at a time and moves the error of column j onto
columns j+1.. through the upper Cholesky factor U of H^-1:  W[:, j+1:] -= (w_j - q_j) / U[j, j] * U[j, j+1:].
Rows are independent given H, so any chunk of rows can be quantized alone: the exporter streams row blocks
through here with one H per tensor, exactly as it streams them through RTN.

The grid is MatMulNBits' symmetric one (zero point 2^(bits-1), no zero-point input: no extra bytes, the fast
kernel path): each 32-column block gets the scale of quantize/blockwise's symmetric rule, taken from the
block's weights as they stand when GPTQ reaches it (already carrying the error of earlier blocks), or, with
act-order, from the original weights (static groups: act-order visits columns out of order, so a block's
scale must be fixed before any of its columns is rounded).

    H ─► + damp * mean(diag H) * I ─► [act-order perm] ─► U = chol(H^-1).T
    W rows ─► for each 128-column panel: round column by column, update the panel ─► lazy update of the rest
"""

from __future__ import annotations

import numpy as np

from phi3_edge.quantize.blockwise import QuantizedBlocks, _storable, _symmetric_scales, check_bits_and_block

PANEL = 128  # columns updated eagerly; the rest of W gets one matrix product per panel (GPTQ's lazy batch)
DEFAULT_DAMP = 0.01  # fraction of mean(diag H) added to the diagonal: GPTQ's default, keeps H^-1 well-posed


def hessian_factor(h: np.ndarray, damp: float = DEFAULT_DAMP, act_order: bool = False, *,
                   overwrite: bool = False) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(U, perm, dead) for a (K, K) Hessian: U upper Cholesky factor of the damped H^-1 (in perm's order when
    act_order, columns by decreasing diag H), dead: columns no calibration input ever reached (diag 0).

    `overwrite`: h (float64) may be damped in place instead of copied; the caller must not use it again
    (calibration hands over each tensor's Hessian this way, so the copy never coexists with it)."""
    h = np.asarray(h, dtype=np.float64) if overwrite else np.array(h, dtype=np.float64)  # (K, K): damped in place
    diag = np.diag(h)
    dead = diag <= 0
    h[dead, dead] = 1.0  # such a column never affects the output: any value of it is optimal
    perm = None
    if act_order:
        perm = np.argsort(-np.diag(h), kind="stable")
        h = h[np.ix_(perm, perm)]  # (K, K) permuted, one copy (the unpermuted one is dropped here)
    h[np.diag_indices_from(h)] += damp * float(np.mean(np.diag(h)))
    # Each (K, K) float64 step is dropped as soon as the next exists: at most two are alive at once (down_proj's
    # K = 8192 at Phi-3-mini is 537 MB apiece; holding all six was the calibration's peak).
    lower = np.linalg.cholesky(h)
    del h
    inv = np.linalg.inv(lower)  # H^-1 = inv.T @ inv
    del lower
    h_inv = inv.T @ inv
    del inv
    upper = np.linalg.cholesky(h_inv).T  # (K, K) upper: H^-1 = U.T @ U
    del h_inv
    return upper.astype(np.float32), perm, dead


def quantize_gptq(w: np.ndarray, h: np.ndarray | None, bits: int, block_size: int, *, damp: float = DEFAULT_DAMP,
                  act_order: bool = False, scale_dtype: str = "float32",
                  factor: tuple[np.ndarray, np.ndarray | None, np.ndarray] | None = None) -> QuantizedBlocks:
    """GPTQ of an (N, K) chunk of rows against the Hessian h (K, K) of its Linear's inputs.

    `factor`: hessian_factor(h, damp, act_order), computed once per tensor when it is quantized in row chunks
    (h may then be None: it is not read again).
    Returns MatMulNBits' symmetric blocks (codes, scales; zero points None), like quantize_rtn(symmetric=True).
    """
    check_bits_and_block(bits, block_size)
    rows, k = w.shape
    if factor is None:
        if h is None:
            raise ValueError("quantize_gptq needs the Hessian h or its factor")
        factor = hessian_factor(h, damp, act_order)
    upper, perm, dead = factor
    blocks_n = -(-k // block_size)
    work = np.zeros((rows, blocks_n * block_size), dtype=np.float32)  # (N, K padded); padding stays 0 = exact
    work[:, :k] = w
    work[:, :k][:, dead] = 0.0
    z = 2 ** (bits - 1)
    qmax = 2**bits - 1
    scales = np.empty((rows, blocks_n), dtype=np.float32)
    if perm is not None:  # static groups: every block's scale from the original weights
        scales[:] = _scales(work.reshape(rows, blocks_n, block_size), bits, scale_dtype)  # (N, n_blocks, block)
    order = perm if perm is not None else np.arange(k)
    codes = np.zeros((rows, blocks_n * block_size), dtype=np.uint8)
    codes[:, k:] = z  # padding: code z is 0.0
    codes[:, :k][:, dead] = z
    cols = work[:, :k][:, order]  # (N, K) in visiting order, a copy: `work` is not needed past this point
    del work
    width = max(PANEL, block_size)  # a multiple of the block: a block's columns all lie in one panel
    for start in range(0, k, width):
        stop = min(k, start + width)
        panel = cols[:, start:stop].copy()  # (N, P)
        errors = np.zeros_like(panel)
        for i in range(stop - start):
            col = int(order[start + i])
            if perm is None and col % block_size == 0:  # a new block: its scale from the weights as they are now
                block = panel[:, i:i + block_size]  # (N, <=block): the last block may be short (K padded)
                scales[:, col // block_size] = _scales(block[:, None, :], bits, scale_dtype)[:, 0]
            scale = scales[:, col // block_size]
            q = np.clip(np.rint(panel[:, i] / scale + z), 0, qmax)
            codes[:, col] = q.astype(np.uint8)
            err = (panel[:, i] - (q - z) * scale) / upper[start + i, start + i]
            panel[:, i + 1:] -= np.outer(err, upper[start + i, start + i + 1:stop])
            errors[:, i] = err
        cols[:, stop:] -= errors @ upper[start:stop, stop:]  # the lazy update of every column not yet visited
    return QuantizedBlocks(codes.reshape(rows, blocks_n, block_size), scales, None, bits, k)


def _scales(blocks: np.ndarray, bits: int, scale_dtype: str) -> np.ndarray:
    """The symmetric rule of quantize/blockwise (largest magnitude -> code 0), rounded to the stored dtype."""
    return _storable(_symmetric_scales(blocks, bits), scale_dtype)


def output_error(w: np.ndarray, w_hat: np.ndarray, h: np.ndarray) -> float:
    """tr((W - W^) H (W - W^)^T): the summed squared output error on the calibration inputs H was built from."""
    d = (w - w_hat).astype(np.float64)  # (N, K)
    return float(np.einsum("nk,kl,nl->", d, h.astype(np.float64), d))

"""Sparsity patterns on weight matrices: N:M and unstructured masks, SparseGPT, TensorRT rule."""

from __future__ import annotations

__all__ = [
    "IMPORTANCES",
    "TENSORRT_RULE",
    "Pattern",
    "SolveResult",
    "follows_pattern",
    "least_squares_target",
    "mask_weights",
    "parse_pattern",
    "refit_masked",
    "relative_error",
    "sparse_initializer_bytes",
    "sparsegpt",
    "tensorrt_verdict",
]

import dataclasses
import logging
import re

import numpy as np

logger = logging.getLogger(__name__)

IMPORTANCES = ("magnitude", "wanda", "obs")

# Bytes of one index of a sparse initializer: ONNX requires INT64 indices (the checker
# rejects others), stored linearized (one index per non-zero value).
_INDEX_BYTES = 8

_NM = re.compile(r"^(\d+):(\d+)$")

# Where the TensorRT verdict comes from. Eligibility is TensorRT's documented rule
# (Developer Guide, "Structured Sparsity"): for each output channel and each kernel
# position, every 4 consecutive input channels hold at most 2 non-zeros, the builder
# runs with kSPARSE_WEIGHTS and FP16 or INT8. Whether the builder then *picks* a sparse
# tactic is timed per layer and not documented; "likely" is our heuristic from the
# sparse Tensor Core tile shapes (mma.sp k=32 for FP16, k=64 for INT8, n>=8 rows per
# warp tile): both channel counts >= 64, input channels a multiple of 32 and output
# channels a multiple of 16. Smaller layers are memory-bound and TensorRT usually keeps
# dense tactics for them. Not verified on a GPU here.
TENSORRT_RULE = (
    "eligible: 2:4 along input channels/K with C_in per group % 4 == 0 (TensorRT Developer "
    "Guide, Structured Sparsity); likely: C_in >= 64, C_out >= 64, C_in % 32 == 0, "
    "C_out % 16 == 0 (heuristic from sparse Tensor Core tile shapes; TensorRT times "
    "sparse against dense tactics and may still pick dense)"
)


@dataclasses.dataclass(frozen=True)
class Pattern:
    """A sparsity pattern: N non-zeros in every M consecutive weights along K, or a ratio."""

    n: int = 0
    m: int = 0
    ratio: float = 0.0

    @property
    def structured(self) -> bool:
        """Whether this is an N:M pattern."""
        return self.m > 0

    @property
    def sparsity(self) -> float:
        """The fraction of weights the pattern zeroes."""
        return 1.0 - self.n / self.m if self.structured else self.ratio

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.structured else f"unstructured({self.ratio:g})"


def parse_pattern(text: str, ratio: float) -> Pattern:
    """``N:M`` (keep N of every M along K) or ``unstructured`` (zero ``ratio``).

    Raises:
        ValueError: malformed pattern, N not below M, or ratio outside [0, 1).
    """
    if text == "unstructured":
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"ratio must be in [0, 1), got {ratio}")
        return Pattern(ratio=ratio)
    match = _NM.match(text)
    if not match:
        raise ValueError(f"pattern must be N:M (e.g. 2:4) or 'unstructured', got '{text}'")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise ValueError(f"pattern {text}: need 0 < N < M")
    return Pattern(n=n, m=m)


def follows_pattern(matrix: np.ndarray, pattern: Pattern) -> bool:
    """Whether a [rows, K] matrix already has the pattern (N:M along K, or the ratio)."""
    if pattern.structured:
        rows, k = matrix.shape
        if k % pattern.m:
            return False
        groups = matrix.reshape(rows, k // pattern.m, pattern.m)
        return bool(np.all(np.count_nonzero(groups, axis=-1) <= pattern.n))
    zeros = matrix.size - np.count_nonzero(matrix)
    return bool(zeros >= int(np.floor(pattern.ratio * matrix.size)))


def _nm_prune_mask(scores: np.ndarray, n: int, m: int) -> np.ndarray:
    """True where a weight is pruned: the M-N lowest scores of each group of M along K."""
    rows, k = scores.shape
    groups = scores.reshape(rows, k // m, m)
    # A stable sort keeps ties deterministic (lower index pruned first).
    order = np.argsort(groups, axis=-1, kind="stable")
    prune = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(prune, order[..., : m - n], True, axis=-1)
    return prune.reshape(rows, k)


def _lowest_mask(scores: np.ndarray, count: int) -> np.ndarray:
    """True at the ``count`` lowest entries of an array (ties broken by position)."""
    flat = scores.ravel()
    prune = np.zeros(flat.size, dtype=bool)
    if count > 0:
        prune[np.argsort(flat, kind="stable")[:count]] = True
    return prune.reshape(scores.shape)


def _unstructured_prune_mask(scores: np.ndarray, ratio: float, per_row: bool) -> np.ndarray:
    if per_row:
        count = int(np.floor(ratio * scores.shape[1]))
        return (
            np.stack([_lowest_mask(row, count) for row in scores])
            if count
            else np.zeros(scores.shape, dtype=bool)
        )
    return _lowest_mask(scores, int(np.floor(ratio * scores.size)))


def mask_weights(
    matrix: np.ndarray, pattern: Pattern, col_norms: np.ndarray | None = None
) -> np.ndarray:
    """Zero weights of a [rows, K] matrix by importance, without updating the rest.

    Magnitude importance is |W|; with ``col_norms`` (the L2 norm of each input column
    over calibration data) it is Wanda's |W| * ||X_j||. N:M compares within each group
    of M along K; unstructured Wanda compares within each output row (as Wanda does),
    unstructured magnitude across the whole layer.
    """
    scores = np.abs(matrix)
    if col_norms is not None:
        scores = scores * col_norms[None, :]
    if pattern.structured:
        prune = _nm_prune_mask(scores, pattern.n, pattern.m)
    else:
        prune = _unstructured_prune_mask(scores, pattern.ratio, per_row=col_norms is not None)
    out = matrix.copy()
    out[prune] = 0
    return out


@dataclasses.dataclass
class SolveResult:
    """A pruned matrix and what the solver saw."""

    matrix: np.ndarray
    dead_columns: int


def sparsegpt(
    matrix: np.ndarray,
    hessian: np.ndarray,
    pattern: Pattern,
    *,
    importance: str = "obs",
    damp: float = 0.01,
    block_size: int = 128,
) -> SolveResult:
    """Prune a [rows, K] matrix column by column, updating the remaining weights.

    SparseGPT (Frantar & Alistarh, 2023): with H = X^T X over calibration inputs, each
    pruned weight's error is spread over the not-yet-processed columns of its row
    through the inverse Hessian's Cholesky factor, which minimizes ||W X - W' X||^2 for
    the chosen mask. Masks are chosen per group of M columns (N:M) or per block of
    ``block_size`` columns (unstructured), on the already-updated weights, by
    ``importance``: ``obs`` is SparseGPT's w^2 / [H^-1]_jj^2, ``wanda`` w^2 * H_jj,
    ``magnitude`` w^2.

    Args:
        matrix: weights, one row per output, K columns along the reduction axis.
        hessian: [K, K] sum of x x^T over calibration rows (float64).
        pattern: N:M or unstructured ratio.
        importance: how to rank weights for the mask.
        damp: added to the diagonal, as a fraction of its mean (numerical stability).
        block_size: columns updated together (a multiple of M for N:M).
    """
    w = np.array(matrix, dtype=np.float64)
    h = np.array(hessian, dtype=np.float64)
    rows, k = w.shape
    diag = np.diag(h).copy()
    dead = diag <= 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    activation_energy = np.where(dead, 0.0, diag)
    mean_diag = float(np.mean(np.diag(h)))
    h[np.diag_indices(k)] += damp * mean_diag
    hinv = _inverse_cholesky_upper(h)
    if pattern.structured:
        block_size = max(pattern.m, block_size - block_size % pattern.m)
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        count = i2 - i1
        w1 = w[:, i1:i2].copy()
        q1 = np.zeros_like(w1)
        err1 = np.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        d1 = np.diag(hinv1)
        prune1 = np.zeros_like(w1, dtype=bool)
        if not pattern.structured:
            scores = _scores(w1, importance, d1, activation_energy[i1:i2])
            prune1 = _lowest_mask(scores, int(np.floor(pattern.ratio * scores.size)))
        for i in range(count):
            if pattern.structured and i % pattern.m == 0:
                sl = slice(i, i + pattern.m)
                scores = _scores(w1[:, sl], importance, d1[sl], activation_energy[i1:i2][sl])
                prune1[:, sl] = _nm_prune_mask(scores, pattern.n, pattern.m)
            col = w1[:, i]
            q = np.where(prune1[:, i], 0.0, col)
            q1[:, i] = q
            e = (col - q) / d1[i]
            w1[:, i:] -= np.outer(e, hinv1[i, i:])
            err1[:, i] = e
        w[:, i1:i2] = q1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return SolveResult(w, int(np.count_nonzero(dead)))


def refit_masked(
    matrix: np.ndarray,
    hessian: np.ndarray,
    keep: np.ndarray,
    damp: float = 0.01,
    start: np.ndarray | None = None,
    iterations: int = 100,
    tolerance: float = 1e-6,
) -> np.ndarray:
    """The best weights for a fixed mask: per row, the least-squares fit on its kept columns.

    Per row, min (w - w')^T H (w - w') with w' = 0 outside the mask. SparseGPT's
    column sweep compensates each pruned weight only with the columns after it; with
    the mask fixed, the exact least-squares solution (H_SS w'_S = (H w)_S over each
    row's kept columns S) is never worse on the calibration data. It is found for all
    rows at once by conjugate gradients restricted to the mask (Jacobi-preconditioned),
    from ``start`` (SparseGPT's solution) or the masked weights: one [rows, K] x [K, K]
    product an iteration, until the residual falls below ``tolerance`` of the first.

    Args:
        matrix: weights W (or a reconstruction target), [rows, K].
        hessian: H, [K, K] (damped here like ``sparsegpt``).
        keep: [rows, K] booleans, True where a weight stays.
        damp: added to the diagonal as a fraction of its mean.
        start: initial weights (zero outside the mask), e.g. SparseGPT's.
        iterations: conjugate-gradient steps at most.
        tolerance: stop when the residual norm is this fraction of the initial one.
    """
    w = np.asarray(matrix, np.float64)
    h = np.array(hessian, dtype=np.float64)
    k = h.shape[0]
    diag = np.diag(h).copy()
    dead = diag <= 0
    h[dead, dead] = 1.0
    h[np.diag_indices(k)] += damp * float(np.mean(np.diag(h)))
    mask = np.asarray(keep, bool) & ~dead[None, :]
    x = np.where(mask, w if start is None else np.asarray(start, np.float64), 0.0)
    precond = np.where(mask, 1.0 / np.diag(h)[None, :], 0.0)
    r = np.where(mask, (w - x) @ h, 0.0)  # minus the gradient, on the mask
    z = r * precond
    p = z.copy()
    rz = np.sum(r * z, axis=1)
    first = float(np.sqrt(np.sum(r * r))) or 1.0
    for _ in range(iterations):
        if float(np.sqrt(np.sum(r * r))) <= tolerance * first:
            break
        hp = np.where(mask, p @ h, 0.0)
        php = np.sum(p * hp, axis=1)
        alpha = np.divide(rz, php, out=np.zeros_like(rz), where=php > 0)
        x += alpha[:, None] * p
        r -= alpha[:, None] * hp
        z = r * precond
        rz_new = np.sum(r * z, axis=1)
        beta = np.divide(rz_new, rz, out=np.zeros_like(rz), where=rz > 0)
        p = z + beta[:, None] * p
        rz = rz_new
    return x


def least_squares_target(
    matrix: np.ndarray, hessian: np.ndarray, cross: np.ndarray, damp: float = 0.01
) -> np.ndarray:
    """The dense weights W* that best map the current inputs to the reference outputs.

    With X the layer's inputs in the model being sparsified (the layers before it already
    sparse) and X_ref the same inputs in the dense reference, H = X^T X and C = X^T X_ref,
    W* minimizes ||W X_ref - W' X||^2 + lambda ||W' - W||^2 (a ridge toward the original
    weights, lambda = ``damp`` times H's mean diagonal, so that little calibration data
    cannot pull W* far from W): W* = W (C^T + lambda I) (H + lambda I)^-1. Since
    ||W X_ref - W' X||^2 = ||(W* - W') X||^2 + const (without the ridge), pruning W* with
    SparseGPT on H reconstructs the reference's output, correcting the drift the earlier
    layers' sparsity caused. Without drift (C = H) W* is W.

    Args:
        matrix: weights W, [rows, K].
        hessian: H, [K, K].
        cross: C, [K, K].
        damp: ridge as a fraction of the mean diagonal of H.
    """
    h = np.array(hessian, dtype=np.float64)
    c = np.array(cross, dtype=np.float64)
    k = h.shape[0]
    ridge = max(damp * (float(np.mean(np.diag(h))) or 1.0), 1e-12)
    h[np.diag_indices(k)] += ridge
    c[np.diag_indices(k)] += ridge
    rhs = c @ np.asarray(matrix, np.float64).T  # (C + lambda I) W^T
    return np.linalg.solve(h, rhs).T


def _scores(
    w: np.ndarray, importance: str, hinv_diag: np.ndarray, energy: np.ndarray
) -> np.ndarray:
    if importance == "obs":
        return w**2 / (hinv_diag[None, :] ** 2)
    if importance == "wanda":
        return w**2 * energy[None, :]
    return w**2


def _inverse_cholesky_upper(h: np.ndarray) -> np.ndarray:
    """Upper U with H^-1 = U^T U, adding damping until H is positive definite.

    With J the reversal permutation and J H J = L L^T, H = (J L J)(J L J)^T where
    J L J is upper triangular, so U = (J L J)^-1: one factorization, no second
    Cholesky of an explicitly inverted (worse conditioned) matrix.
    """
    k = h.shape[0]
    extra = 0.0
    scale = float(np.mean(np.diag(h))) or 1.0
    for _ in range(8):
        try:
            lower = np.linalg.cholesky((h + extra * np.eye(k))[::-1, ::-1])
            return np.linalg.inv(lower[::-1, ::-1])
        except np.linalg.LinAlgError:
            extra = scale * 0.1 if extra == 0.0 else extra * 10
            logger.debug("Hessian not positive definite: damping by %g", extra)
    raise np.linalg.LinAlgError("Hessian stays singular after damping")


def relative_error(
    before: np.ndarray,
    after: np.ndarray,
    hessian: np.ndarray | None = None,
    energy: np.ndarray | None = None,
) -> float:
    """Relative squared output error of a layer: ||dW X||^2 / ||W X||^2.

    With a Hessian it is exact on the calibration data; with per-column energies
    (diag of H) it ignores correlations between inputs; with neither it is the weights'
    relative squared error.
    """
    delta = np.asarray(after, np.float64) - np.asarray(before, np.float64)
    base = np.asarray(before, np.float64)
    if hessian is not None:
        num = float(np.sum((delta @ hessian) * delta))
        den = float(np.sum((base @ hessian) * base))
    elif energy is not None:
        num = float(np.sum(delta**2 * energy[None, :]))
        den = float(np.sum(base**2 * energy[None, :]))
    else:
        num, den = float(np.sum(delta**2)), float(np.sum(base**2))
    return num / den if den > 0 else 0.0


def sparse_initializer_bytes(nonzeros: int, itemsize: int) -> int:
    """Bytes a sparse initializer with this many non-zeros takes (values + INT64 indices)."""
    return nonzeros * (itemsize + _INDEX_BYTES)


def tensorrt_verdict(pattern: Pattern, c_in: int, c_out: int) -> tuple[str, str]:
    """(``likely`` | ``unlikely`` | ``ineligible``, reason) for TensorRT sparse kernels.

    ``c_in`` is the input channels per group (K / kernel positions), ``c_out`` the outputs.
    See ``TENSORRT_RULE``.
    """
    if not pattern.structured or (pattern.n, pattern.m) != (2, 4):
        return "ineligible", f"TensorRT accelerates only 2:4, not {pattern}"
    if c_in % 4:
        return "ineligible", f"input channels {c_in} not a multiple of 4"
    small = [f"{name} {v} < 64" for name, v in (("C_in", c_in), ("C_out", c_out)) if v < 64]
    if small:
        return "unlikely", ", ".join(small) + ": dense tactics usually win"
    misaligned = []
    if c_in % 32:
        misaligned.append(f"C_in {c_in} not a multiple of 32")
    if c_out % 16:
        misaligned.append(f"C_out {c_out} not a multiple of 16")
    if misaligned:
        return "unlikely", ", ".join(misaligned)
    return "likely", f"C_in {c_in}, C_out {c_out} meet the channel thresholds"

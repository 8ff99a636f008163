"""The value grids: uniform levels keeping each group's sum, and 1-D k-means."""

from __future__ import annotations

import logging
import math

import numpy as np

from nnopt_graph.passes.sharing.cluster.constants import (
    _ASSIGN_CHUNK,
    _CLIP_RATIOS,
    _KMEANS_MAX_FIT,
    _KMEANS_MAX_ITER,
    _KMEANS_TOL,
)

logger = logging.getLogger(__name__)


def _keep_sums(position: np.ndarray, levels: np.ndarray, top: int) -> None:
    """Re-round the fewest levels so each row's sum stays within half a step (in place).

    ``position`` is each value in units of the step (what was rounded). A row whose
    rounding errors add up to e steps gets round(|e|) of its most marginal roundings
    (those that went furthest in the direction of e) moved one level back.
    """
    error = levels - position
    excess = error.sum(axis=1)
    count = np.rint(np.abs(excess)).astype(np.int64)
    if not count.any():
        return
    up = excess[:, None] > 0
    movable = np.where(up, (error > 0) & (levels > 0), (error < 0) & (levels < top))
    key = np.where(movable, np.where(up, -error, error), np.inf)
    order = np.argsort(key, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(levels.shape[1])[None, :], axis=1)
    flip = (rank < count[:, None]) & movable
    levels -= np.where(up, 1, -1) * flip


def uniform_grid(
    rows: np.ndarray,
    bits: int,
    scale_dtype: type = np.float32,
    search: bool = True,
    keep_sums: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A uniform grid of 2^bits levels per row, including zero.

    The grid spans [min(row, 0), max(row, 0)] shrunk by the factor in ``_CLIP_RATIOS``
    that gives the row the least squared error (``search``); values beyond it clip to
    the end levels. With ``keep_sums``, rounding is then adjusted so that each row's
    decoded values add up to its original sum within half a step: rounding errors no
    longer shift a row's mean (a data-free bias correction; k-means and the per-channel
    codebook keep the sums by construction).

    Args:
        rows: values, one row per group (tensor, channel or block), shape [R, M].
        bits: grid levels are 2**bits.
        scale_dtype: dtype the scales are stored in; levels are computed with it.
        search: choose the range per row by least squared error.
        keep_sums: keep each row's sum within half a step.

    Returns:
        (scale [R] in ``scale_dtype``, zero point [R] in 0..2^bits-1, levels [R, M] in
        0..2^bits-1, both int64): a value decodes to ``(level - zero_point) * scale``.
    """
    top = (1 << bits) - 1
    lo = np.minimum(rows.min(axis=1), 0).astype(np.float64)
    hi = np.maximum(rows.max(axis=1), 0).astype(np.float64)
    best_scale: np.ndarray = np.ones(rows.shape[0], scale_dtype)
    best_zero = np.zeros(rows.shape[0], np.int64)
    levels = np.empty(rows.shape, np.int64)
    step = max(1, _ASSIGN_CHUNK // max(rows.shape[1], 1))
    for start in range(0, rows.shape[0], step):
        part = slice(start, start + step)
        values = rows[part].astype(np.float64)
        best_error = np.full(values.shape[0], np.inf)
        for ratio in _CLIP_RATIOS if search else (1.0,):
            scale = ((hi[part] - lo[part]) * ratio / top).astype(scale_dtype)
            scale[~(scale > 0)] = 1  # an all-zero group, or a scale that underflowed
            wide = scale.astype(np.float64)
            zero = np.clip(np.rint(-lo[part] * ratio / wide), 0, top).astype(np.int64)
            grid = np.clip(np.rint(values / wide[:, None]) + zero[:, None], 0, top)
            error = np.sum(((grid - zero[:, None]) * wide[:, None] - values) ** 2, axis=1)
            better = error < best_error
            best_error[better] = error[better]
            best_scale[part][better] = scale[better]
            best_zero[part][better] = zero[better]
            levels[part][better] = grid[better]
        if keep_sums:
            wide = best_scale[part].astype(np.float64)
            position = values / wide[:, None] + best_zero[part, None]
            _keep_sums(position, levels[part], top)
    return best_scale, best_zero, levels


def _reseed_empty(
    centroids: np.ndarray,
    total: np.ndarray,
    sums: np.ndarray,
    safe: np.ndarray,
    square: np.ndarray,
    bounds: np.ndarray,
    ordered: np.ndarray,
) -> bool:
    """Move empty clusters into the clusters with the largest squared error (in place).

    Each empty centroid goes halfway between the mean and the largest value of one of
    the worst clusters, which the next assignment then splits; clusters without error
    (a single repeated value) are never split. Returns whether any centroid moved.
    """
    empty = total <= 0
    moved = False
    for i in np.flatnonzero(empty.any(axis=1)):
        error = np.diff(square[i, bounds[i]]) - sums[i] ** 2 / safe[i]
        error[~(total[i] > 0)] = 0.0
        worst = [j for j in np.argsort(-error, kind="stable") if error[j] > 1e-12]
        slots = np.flatnonzero(empty[i])[: len(worst)]
        for slot, j in zip(slots, worst, strict=False):
            centroids[i, slot] = (centroids[i, j] + ordered[i, bounds[i, j + 1] - 1]) / 2
            moved = True
        centroids[i] = np.sort(centroids[i])
    return moved


def kmeans_1d(
    rows: np.ndarray,
    k: int,
    weights: np.ndarray | None = None,
    max_iter: int = _KMEANS_MAX_ITER,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Weighted 1-D k-means (Lloyd) of each row, centroids initialised evenly over [min, max].

    Values are sorted once per row; with sorted centroids, each cluster is a contiguous
    run of the sorted values, found by binary search for the midpoints between
    centroids, and its weighted mean comes from prefix sums: an iteration costs
    O(R k log M). All rows are handled together: row ``i`` is normalised to [0, 1] and
    shifted to [2i, 2i + 1], so one search over the concatenation serves every row.
    Rows of more than ``_KMEANS_MAX_FIT`` elements in all are fitted on an evenly
    strided sample; every value is then assigned to its nearest centroid.

    Args:
        rows: values, one row per group, shape [R, M].
        k: clusters per row (at most M).
        weights: non-negative weight of each value (shape [R, M]); None weighs all alike.
        max_iter: Lloyd iterations at most.

    Returns:
        (codebook [R, k] float64; assignment [R, M] int64 of each value to its nearest
        centroid before the last update of the codebook from the values; iterations run).
    """
    r, m = rows.shape
    lo = rows.min(axis=1).astype(np.float64)
    span = rows.max(axis=1).astype(np.float64) - lo
    span[span == 0] = 1.0
    stride = max(1, math.ceil(r * m / _KMEANS_MAX_FIT))
    sample = (rows[:, ::stride].astype(np.float64) - lo[:, None]) / span[:, None]
    n = sample.shape[1]
    order = np.argsort(sample, axis=1, kind="stable")
    ordered = np.take_along_axis(sample, order, 1)
    weight = (
        np.ones_like(ordered)
        if weights is None
        else np.take_along_axis(weights[:, ::stride].astype(np.float64), order, 1)
    )
    mass = np.zeros((r, n + 1))
    np.cumsum(weight, axis=1, out=mass[:, 1:])
    moment = np.zeros((r, n + 1))
    np.cumsum(weight * ordered, axis=1, out=moment[:, 1:])
    square = np.zeros((r, n + 1))
    np.cumsum(weight * ordered * ordered, axis=1, out=square[:, 1:])
    shift = 2.0 * np.arange(r)
    flat = (ordered + shift[:, None]).ravel()
    first = (np.arange(r) * n)[:, None]
    centroids = np.tile(np.linspace(0.0, 1.0, k), (r, 1))
    previous = None
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        mids = (centroids[:, 1:] + centroids[:, :-1]) / 2
        cuts = np.searchsorted(flat, (mids + shift[:, None]).ravel()).reshape(r, k - 1) - first
        bounds = np.concatenate(
            [np.zeros((r, 1), np.int64), cuts, np.full((r, 1), n, np.int64)], axis=1
        )
        if previous is not None and np.array_equal(bounds, previous):
            break
        total = np.diff(np.take_along_axis(mass, bounds, 1), axis=1)
        sums = np.diff(np.take_along_axis(moment, bounds, 1), axis=1)
        safe = np.where(total > 0, total, 1.0)
        updated = np.where(total > 0, sums / safe, centroids)
        reseeded = _reseed_empty(updated, total, sums, safe, square, bounds, ordered)
        moved = float(np.max(np.abs(updated - centroids))) if updated.size else 0.0
        centroids, previous = updated, bounds
        if moved <= _KMEANS_TOL and not reseeded:
            break
    centroids = np.sort(centroids, axis=1)
    codebook = centroids * span[:, None] + lo[:, None]
    assignment = np.empty((r, m), np.int64)
    for i in range(r):
        mids = (codebook[i, 1:] + codebook[i, :-1]) / 2
        for start in range(0, m, _ASSIGN_CHUNK):
            part = rows[i, start : start + _ASSIGN_CHUNK].astype(np.float64)
            assignment[i, start : start + _ASSIGN_CHUNK] = np.searchsorted(mids, part)
    # A last update from the values themselves (not their normalised copies), so a
    # cluster of one repeated value (zero, say) holds exactly that value.
    slots = (assignment + (np.arange(r) * k)[:, None]).ravel()
    w = None if weights is None else np.broadcast_to(weights, rows.shape).ravel()
    count = np.bincount(slots, weights=w, minlength=r * k).reshape(r, k)
    w_values = rows.astype(np.float64) if w is None else rows * weights
    total = np.bincount(slots, weights=np.ravel(w_values), minlength=r * k).reshape(r, k)
    codebook = np.where(count > 0, total / np.where(count > 0, count, 1.0), codebook)
    return codebook, assignment, iterations


def _sqnr_db(original: np.ndarray, decoded: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when exact)."""
    a = original.astype(np.float64).ravel()
    noise = float(np.sum((a - decoded.astype(np.float64).ravel()) ** 2))
    signal = float(np.sum(a * a))
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10 * math.log10(signal / noise)

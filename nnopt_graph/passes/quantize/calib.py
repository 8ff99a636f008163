"""Streaming calibration statistics for quantization: ranges, histograms, KL thresholds."""

from __future__ import annotations

__all__ = [
    "CALIBRATORS",
    "HistogramStats",
    "TensorStats",
    "collect_histograms",
    "collect_stats",
    "entropy_range",
    "mse_range",
    "percentile_range",
]

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

logger = logging.getLogger(__name__)

CALIBRATORS = ("minmax", "percentile", "entropy", "mse")

# Histograms see at most this many elements of one tensor per batch (a fixed stride
# through the flattened tensor); the exact min/max come from the first sweep anyway.
_HISTOGRAM_SAMPLE = 1 << 20


@dataclasses.dataclass
class TensorStats:
    """Running statistics of one tensor over the calibration data.

    Attributes:
        low: smallest value seen.
        high: largest value seen.
        channel_axis: axis of the per-channel statistics, or None when not collected.
        channel_sum: per-channel sum over all other axes (for input means).
        channel_low: per-channel minimum (for SmoothQuant).
        channel_high: per-channel maximum.
        channel_count: elements summed per channel.
    """

    low: float = math.inf
    high: float = -math.inf
    channel_axis: int | None = None
    channel_sum: np.ndarray | None = None
    channel_low: np.ndarray | None = None
    channel_high: np.ndarray | None = None
    channel_count: int = 0

    def add(self, array: np.ndarray) -> None:
        """Fold one batch of values in."""
        if array.size == 0:
            return
        if not np.issubdtype(array.dtype, np.floating):
            array = array.astype(np.float32)
        if not np.all(np.isfinite(array)):
            array = np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0)
        self.low = min(self.low, float(array.min()))
        self.high = max(self.high, float(array.max()))
        if self.channel_axis is None or array.ndim == 0:
            return
        axis = self.channel_axis % array.ndim
        others = tuple(i for i in range(array.ndim) if i != axis)
        total = array.sum(axis=others, dtype=np.float64)
        low = array.min(axis=others).astype(np.float64)
        high = array.max(axis=others).astype(np.float64)
        if self.channel_sum is None or self.channel_sum.shape != total.shape:
            self.channel_sum, self.channel_low, self.channel_high = total, low, high
            self.channel_count = array.size // array.shape[axis]
            return
        assert self.channel_low is not None and self.channel_high is not None
        self.channel_sum += total
        self.channel_low = np.minimum(self.channel_low, low)
        self.channel_high = np.maximum(self.channel_high, high)
        self.channel_count += array.size // array.shape[axis]

    @property
    def channel_mean(self) -> np.ndarray | None:
        """Per-channel mean, or None when not collected."""
        if self.channel_sum is None or self.channel_count == 0:
            return None
        return self.channel_sum / self.channel_count

    @property
    def channel_absmax(self) -> np.ndarray | None:
        """Per-channel largest absolute value, or None when not collected."""
        if self.channel_low is None or self.channel_high is None:
            return None
        return np.maximum(np.abs(self.channel_low), np.abs(self.channel_high))


def collect_stats(
    model: ir.Model,
    names: Sequence[str],
    dataset: Any,
    *,
    channel_axes: Mapping[str, int] | None = None,
    threads: int | None = 2,
    capture: Any,
) -> dict[str, TensorStats]:
    """Min/max of each named main-graph value (and per-channel sums where asked) in one sweep.

    Memory holds one batch's tapped activations at a time, whatever the sample count.
    """
    axes = dict(channel_axes or {})
    stats = {name: TensorStats(channel_axis=axes.get(name)) for name in names}

    def on_batch(batch: dict[str, np.ndarray]) -> None:
        for name, array in batch.items():
            stats[name].add(np.asarray(array))

    if names:
        feeds = capture(model, list(names), dataset, on_batch, threads=threads)
        logger.debug("calibration sweep: %d feeds, %d values", feeds, len(names))
    return stats


@dataclasses.dataclass
class HistogramStats:
    """A fixed-bin histogram on a range symmetric about zero, ``[-limit, limit]``.

    A symmetric range makes the histogram of |x| exact (fold the two halves), which the
    entropy calibrator needs; the signed histogram serves the percentile calibrator.
    """

    low: float
    high: float
    limit: float
    counts: np.ndarray

    @classmethod
    def empty(cls, low: float, high: float, bins: int) -> HistogramStats:
        """A histogram for values seen in [low, high]; ``bins`` is rounded up to even."""
        bins += bins % 2
        limit = max(abs(low), abs(high), 1e-12)
        return cls(low, high, limit, np.zeros(bins, dtype=np.int64))

    def add(self, array: np.ndarray) -> None:
        """Count one batch (a strided subsample of at most 2**20 elements)."""
        flat = np.asarray(array, dtype=np.float32).reshape(-1)
        if flat.size > _HISTOGRAM_SAMPLE:
            flat = flat[:: int(math.ceil(flat.size / _HISTOGRAM_SAMPLE))]
        flat = flat[np.isfinite(flat)]
        bins = len(self.counts)
        index = ((flat + self.limit) * (bins / (2 * self.limit))).astype(np.int64)
        np.clip(index, 0, bins - 1, out=index)
        self.counts += np.bincount(index, minlength=bins)

    @property
    def edges(self) -> np.ndarray:
        """Bin edges, ``len(counts) + 1`` of them."""
        return np.linspace(-self.limit, self.limit, len(self.counts) + 1)


def collect_histograms(
    model: ir.Model,
    ranges: Mapping[str, tuple[float, float]],
    dataset: Any,
    *,
    bins: int = 2048,
    threads: int | None = 2,
    capture: Any,
) -> dict[str, HistogramStats]:
    """Histograms of each named value on the range a first min/max sweep found."""
    hists = {name: HistogramStats.empty(lo, hi, bins) for name, (lo, hi) in ranges.items()}

    def on_batch(batch: dict[str, np.ndarray]) -> None:
        for name, array in batch.items():
            hists[name].add(np.asarray(array))

    if hists:
        capture(model, list(hists), dataset, on_batch, threads=threads)
    return hists


def percentile_range(hist: HistogramStats, percentile: float) -> tuple[float, float]:
    """Two-sided percentile clipping: drop ``100 - percentile`` percent at each tail.

    The result stays within the observed [low, high] and always contains zero.
    """
    total = hist.counts.sum()
    if total == 0:
        return hist.low, hist.high
    cdf = np.cumsum(hist.counts) / total
    tail = (100.0 - percentile) / 100.0
    edges = hist.edges
    lo_index = int(np.searchsorted(cdf, tail, side="left"))
    hi_index = int(np.searchsorted(cdf, 1.0 - tail, side="left"))
    lo = max(hist.low, float(edges[lo_index]))
    hi = min(hist.high, float(edges[min(hi_index + 1, len(edges) - 1)]))
    return min(lo, 0.0), max(hi, 0.0)


def _kl_divergence(reference: np.ndarray, candidate: np.ndarray) -> float:
    p = reference / reference.sum()
    q = candidate / max(candidate.sum(), 1e-30)
    mask = p > 0
    q = np.where(q > 0, q, 1e-12)
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def entropy_range(
    hist: HistogramStats, quantized_bins: int | None = None, candidates: int = 256
) -> tuple[float, float]:
    """Threshold of |x| minimising KL(P || Q) between clipped and quantized histograms.

    TensorRT's entropy calibration on the folded |x| histogram: for each candidate
    threshold the tail beyond it is added to the last kept bin (P), P is merged into
    ``quantized_bins`` levels and expanded back over its non-empty bins (Q), and the
    threshold with the smallest divergence wins. Returns [max(low, -t), min(high, t)].
    ``quantized_bins`` defaults to 255 for non-negative values (all of uint8 covers
    [0, t]) and 128 otherwise (int8's levels on each side).
    """
    if quantized_bins is None:
        quantized_bins = 255 if hist.low >= 0 else 128
    half = len(hist.counts) // 2
    folded = hist.counts[half:] + hist.counts[:half][::-1]
    total = folded.sum()
    if total == 0 or half <= quantized_bins:
        return hist.low, hist.high
    width = hist.limit / half
    step = max(1, (half - quantized_bins) // candidates)
    best_kl, best_i = math.inf, half
    for i in range(quantized_bins, half + 1, step):
        kept = folded[:i].astype(np.float64)
        reference = kept.copy()
        reference[-1] += folded[i:].sum()
        # The bin at zero is exact in any quantization (zero is representable): it stays
        # unmerged, so a spike of zeros (ReLU outputs) does not pull the threshold down.
        rest = kept.copy()
        rest[0] = 0.0
        bounds = np.linspace(0, i, quantized_bins + 1).astype(np.int64)
        starts = bounds[:-1]
        merged = np.add.reduceat(rest, starts)
        nonzero = np.add.reduceat((rest > 0).astype(np.float64), starts)
        level = np.repeat(np.arange(quantized_bins), np.diff(bounds))
        expanded = np.where(rest > 0, (merged / np.maximum(nonzero, 1))[level], 0.0)
        expanded[0] = kept[0]
        kl = _kl_divergence(reference, expanded)
        if kl < best_kl:
            best_kl, best_i = kl, i
    threshold = best_i * width
    return min(max(hist.low, -threshold), 0.0), max(min(hist.high, threshold), 0.0)


_TAILS = (0.0, 1e-6, 1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)


def mse_range(hist: HistogramStats, levels: int = 256) -> tuple[float, float]:
    """The clipping range with the least expected squared error after quantization.

    Candidates drop a tail fraction (0 to 1%) at each end independently; for each, the
    error of quantizing every bin centre to ``levels`` uniform steps (clipping included)
    is summed over the histogram, and the smallest wins. Always contains zero.
    """
    total = hist.counts.sum()
    if total == 0:
        return hist.low, hist.high
    edges = hist.edges
    centres = (edges[:-1] + edges[1:]) / 2
    weights = hist.counts.astype(np.float64)
    cdf = np.cumsum(weights) / total
    lows = sorted(
        {max(hist.low, float(edges[np.searchsorted(cdf, t, side="left")])) for t in _TAILS}
    )
    highs = sorted(
        {
            min(
                hist.high,
                float(
                    edges[min(int(np.searchsorted(cdf, 1.0 - t, side="left")) + 1, len(edges) - 1)]
                ),
            )
            for t in _TAILS
        }
    )
    best, best_err = (hist.low, hist.high), math.inf
    for lo in lows:
        for hi in highs:
            lo0, hi0 = min(lo, 0.0), max(hi, 0.0)
            if hi0 <= lo0:
                continue
            step = (hi0 - lo0) / (levels - 1)
            q = np.clip(np.rint((np.clip(centres, lo0, hi0) - lo0) / step) * step + lo0, lo0, hi0)
            err = float(np.sum(weights * (centres - q) ** 2))
            if err < best_err:
                best, best_err = (lo0, hi0), err
    return best

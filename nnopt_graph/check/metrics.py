"""Per-sample fidelity metrics of a candidate's outputs against a reference's.

Every metric is computed for each sample (feed) on its own; reductions over samples
(min, p5, median, ...) are taken afterwards, so one ruined input cannot hide behind the
average. Non-finite values are never zeroed: where reference and candidate hold NaN/Inf
in the same places those positions are left out, and where they differ the sample has no
finite metric at all (NaN), which fails every budget.
"""

from __future__ import annotations

__all__ = [
    "METRICS",
    "OutputFidelity",
    "SampleMetrics",
    "min_cosine",
    "reduce_values",
    "sample_metrics",
]

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

# Metric name -> whether larger is better (decides the default reduction: worst case).
METRICS: dict[str, bool] = {
    "cosine": True,
    "sqnr": True,
    "top1": True,
    "rel_l2": False,
    "max_abs": False,
}


@dataclasses.dataclass(frozen=True)
class SampleMetrics:
    """One output's metrics on one sample.

    Attributes:
        cosine: of the flattened finite values; 1.0 when both are exactly equal
            (zeros included), NaN when non-finite positions differ.
        rel_l2: ||ref - cand|| / ||ref|| (0 when equal, inf when ref is zero and cand not).
        max_abs: largest absolute difference.
        sqnr: 10 log10(||ref||^2 / ||ref - cand||^2) in dB (inf when equal).
        top1: fraction of rows (over the last axis) whose argmax agrees; None when the
            last axis has one element or the output is not numeric.
        nonfinite_mismatch: NaN/Inf positions differ between the two.
    """

    cosine: float
    rel_l2: float
    max_abs: float
    sqnr: float
    top1: float | None
    nonfinite_mismatch: bool = False


def _as_float(array: np.ndarray) -> np.ndarray:
    return np.asarray(array).astype(np.float64, copy=False).ravel()


def _nonfinite_masks_equal(r: np.ndarray, c: np.ndarray) -> tuple[bool, np.ndarray]:
    """(same NaN/+Inf/-Inf positions, mask of positions finite in both)."""
    finite_r, finite_c = np.isfinite(r), np.isfinite(c)
    if finite_r.all() and finite_c.all():
        return True, finite_r
    same = (
        np.array_equal(np.isnan(r), np.isnan(c))
        and np.array_equal(np.isposinf(r), np.isposinf(c))
        and np.array_equal(np.isneginf(r), np.isneginf(c))
    )
    return same, finite_r & finite_c


def _top1(reference: np.ndarray, candidate: np.ndarray) -> float | None:
    if reference.ndim == 0 or reference.shape[-1] <= 1 or reference.size == 0:
        return None
    if not np.issubdtype(reference.dtype, np.number):
        return None
    ra = np.argmax(reference.reshape(-1, reference.shape[-1]), axis=-1)
    ca = np.argmax(candidate.reshape(-1, candidate.shape[-1]), axis=-1)
    return float(np.mean(ra == ca))


def sample_metrics(reference: np.ndarray, candidate: np.ndarray) -> SampleMetrics:
    """All metrics of one output on one sample (shapes must already match)."""
    reference, candidate = np.asarray(reference), np.asarray(candidate)
    r, c = _as_float(reference), _as_float(candidate)
    same_nonfinite, finite = _nonfinite_masks_equal(r, c)
    top1 = _top1(reference, candidate)
    if not same_nonfinite:
        return SampleMetrics(math.nan, math.inf, math.inf, -math.inf, top1, True)
    if not finite.all():
        r, c = r[finite], c[finite]
    diff = r - c
    err_sq = float(diff @ diff)
    ref_sq = float(r @ r)
    cand_sq = float(c @ c)
    max_abs = float(np.max(np.abs(diff))) if diff.size else 0.0
    if err_sq == 0.0:
        cosine = 1.0 if r.size else math.nan
    elif ref_sq == 0.0 or cand_sq == 0.0:
        cosine = 0.0
    else:
        cosine = min(1.0, float(r @ c) / math.sqrt(ref_sq * cand_sq))
    if ref_sq:
        rel_l2 = math.sqrt(err_sq / ref_sq)
    else:
        rel_l2 = 0.0 if err_sq == 0.0 else math.inf
    if err_sq == 0.0:
        sqnr = math.inf
    elif ref_sq == 0.0:
        sqnr = -math.inf
    else:
        sqnr = 10.0 * math.log10(ref_sq / err_sq)
    return SampleMetrics(cosine, rel_l2, max_abs, sqnr, top1)


def min_cosine(reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]]) -> float:
    """The worst sample's cosine over all outputs (NaN counts as the worst).

    ``reference`` and ``candidate`` hold, per sample, the outputs in the same order.
    """
    worst = 1.0
    for ref, cand in zip(reference, candidate, strict=True):
        for r, c in zip(ref, cand, strict=True):
            value = sample_metrics(r, c).cosine
            worst = min(worst, -1.0 if value != value else value)
    return worst


def reduce_values(values: Sequence[float], reduction: str) -> float:
    """Reduce per-sample values: min, max, mean, median or pN (N-th percentile).

    NaN values make every reduction NaN: an unmeasurable sample is never averaged away.
    """
    if not values:
        return math.nan
    array = np.asarray(values, dtype=np.float64)
    if np.isnan(array).any():
        return math.nan
    if reduction == "min":
        return float(array.min())
    if reduction == "max":
        return float(array.max())
    if reduction == "mean":
        with np.errstate(invalid="ignore"):
            return float(array.mean())
    if reduction == "median":
        return float(np.median(array))
    if reduction.startswith("p"):
        # 'lower' picks a measured sample, never an interpolation between two.
        return float(np.percentile(array, float(reduction[1:]), method="lower"))
    raise ValueError(f"unknown reduction '{reduction}'")


def _json_number(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


@dataclasses.dataclass
class OutputFidelity:
    """One output's per-sample metrics over all compared samples."""

    name: str
    samples: list[SampleMetrics]
    shape_match: bool = True
    dtype_match: bool = True
    problems: list[str] = dataclasses.field(default_factory=list)

    def values(self, metric: str) -> list[float]:
        """Per-sample values of a metric (samples without top1 left out)."""
        if not self.shape_match:
            # A changed shape has no meaningful metric: the worst value of each.
            worst = {"cosine": math.nan, "top1": 0.0, "sqnr": -math.inf}
            return [worst.get(metric, math.inf)]
        out = [getattr(s, metric) for s in self.samples]
        return [v for v in out if v is not None]

    def reduce(self, metric: str, reduction: str) -> float:
        """A metric reduced over samples."""
        return reduce_values(self.values(metric), reduction)

    def worst_index(self, metric: str) -> int | None:
        """Index of the worst sample for a metric (NaN counts as worst)."""
        values = [getattr(s, metric) for s in self.samples]
        scored = [(i, v) for i, v in enumerate(values) if v is not None]
        if not scored:
            return None
        higher_better = METRICS[metric]

        def badness(item: tuple[int, float]) -> float:
            v = item[1]
            if math.isnan(v):
                return math.inf
            return -v if higher_better else v

        return max(scored, key=badness)[0]

    # Backwards-compatible aggregate views (the worst sample).
    @property
    def cosine(self) -> float:
        """Worst sample's cosine."""
        return self.reduce("cosine", "min")

    @property
    def max_abs(self) -> float:
        """Largest absolute difference over samples."""
        return self.reduce("max_abs", "max")

    @property
    def rel_l2(self) -> float:
        """Worst sample's relative L2 error."""
        return self.reduce("rel_l2", "max")

    @property
    def sqnr(self) -> float:
        """Worst sample's SQNR in dB."""
        return self.reduce("sqnr", "min")

    @property
    def top1(self) -> float | None:
        """Agreement rate of the argmax over samples (None without a class axis)."""
        if not self.shape_match:
            return 0.0
        values = self.values("top1")
        return float(np.mean(values)) if values else None

    def summary(self, metric: str) -> dict[str, Any]:
        """min/p5/median (or max/p95/median for errors), worst index, per-sample values."""
        values = self.values(metric)
        if not values:
            return {"available": False}
        if METRICS[metric]:
            keys = ("min", "p5", "median", "mean")
        else:
            keys = ("max", "p95", "median", "mean")
        out: dict[str, Any] = {k: _json_number(self.reduce(metric, k)) for k in keys}
        out["worst_index"] = self.worst_index(metric)
        nonfinite = [v for v in values if not math.isfinite(v)]
        if nonfinite:
            out["nonfinite_samples"] = len(nonfinite)
            out["note"] = (
                "null: some samples have no finite value (NaN where the other model is "
                "finite, a zero reference, or an exact match for sqnr)"
            )
        out["values"] = [_json_number(v) for v in values]
        return out

    def to_json(self) -> dict[str, Any]:
        """The report's per-output entry (strict JSON: no NaN/Infinity)."""
        return {
            "name": self.name,
            "samples": len(self.samples),
            "shape_match": self.shape_match,
            "dtype_match": self.dtype_match,
            "problems": list(self.problems),
            **{metric: self.summary(metric) for metric in METRICS},
        }

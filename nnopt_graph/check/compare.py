"""The one comparison of a candidate model against its reference, used everywhere.

``verify``, ``--verify-each``, the guard and ``nnopt-graph compare`` all call
``compare_models``: per output and per sample it records every fidelity metric, and,
given a tolerance, whether the outputs are equal (see ``equality``).
"""

from __future__ import annotations

__all__ = ["Comparison", "compare_models"]

import dataclasses
import math
import os
from typing import Any

import numpy as np

from nnopt_graph.check.equality import Tolerance, value_problems
from nnopt_graph.check.metrics import METRICS, OutputFidelity, sample_metrics
from nnopt_graph.runtime.data import Dataset
from nnopt_graph.runtime.execute import ReferenceOutputs, paired_outputs

# Equality problems kept per comparison (the first ones; the count is kept in full).
_MAX_PROBLEMS = 8


@dataclasses.dataclass
class Comparison:
    """Per-output, per-sample agreement of a candidate with its reference."""

    outputs: list[OutputFidelity]
    samples: int
    tolerance: Tolerance | None = None
    problems: list[str] = dataclasses.field(default_factory=list)
    unequal_samples: int = 0

    @property
    def equal(self) -> bool | None:
        """Whether every output of every sample is equal under the tolerance (None: not asked)."""
        if self.tolerance is None:
            return None
        return not self.problems and self.shapes_match

    @property
    def shapes_match(self) -> bool:
        """Whether every output kept its shape and dtype."""
        return all(o.shape_match and o.dtype_match for o in self.outputs)

    @property
    def cosine_min(self) -> float:
        """The worst sample's cosine over all outputs (1.0 without outputs)."""
        return self.metric("cosine") if self.outputs else 1.0

    def metric(self, name: str, reduction: str | None = None) -> float:
        """A metric reduced over samples, worst over outputs.

        The default reduction is the worst sample (min for cosine/sqnr/top1, max for
        errors); top1 defaults to the agreement rate (mean). Outputs without the metric
        (top1 without a class axis) are left out; NaN when none has it.
        """
        higher_better = METRICS[name]
        if reduction is None:
            reduction = "mean" if name == "top1" else ("min" if higher_better else "max")
        values = []
        for out in self.outputs:
            if out.values(name):
                values.append(out.reduce(name, reduction))
        if not values:
            return math.nan
        if any(math.isnan(v) for v in values):
            return math.nan
        return min(values) if higher_better else max(values)

    def worst(self) -> dict[str, float | None]:
        """Each metric's worst-case value (strict-JSON safe: None when not finite/absent)."""
        out: dict[str, float | None] = {}
        for name in METRICS:
            value = self.metric(name)
            out[name] = value if math.isfinite(value) else None
        return out

    def to_json(self) -> dict[str, Any]:
        """The report's fidelity entry (strict JSON)."""
        worst = self.worst()
        return {
            "samples": self.samples,
            "equal": self.equal,
            "tolerance": dataclasses.asdict(self.tolerance) if self.tolerance else None,
            "problems": list(self.problems),
            "unequal_samples": self.unequal_samples,
            "shapes_match": self.shapes_match,
            "worst": worst,
            "cosine_min": worst["cosine"],
            "per_output": {o.name: o.to_json() for o in self.outputs},
        }


def _flat(value: Any) -> np.ndarray:
    """A tensor, or a Sequence/Map output flattened (maps in key order) for the metrics."""
    if isinstance(value, dict):
        return np.concatenate(
            [_flat(value[k]).ravel() for k in sorted(value, key=str)] or [np.zeros(0)]
        )
    if isinstance(value, list):
        return np.concatenate([_flat(v).ravel() for v in value] or [np.zeros(0)])
    return np.asarray(value)


class _Collector:
    """Per-output state while samples stream in."""

    def __init__(self, names: list[str], tolerance: Tolerance | None) -> None:
        self.outputs = [OutputFidelity(n, []) for n in names]
        self.tolerance = tolerance
        self.problems: list[str] = []
        self.unequal = 0
        self.samples = 0

    def add(self, reference: list[Any], candidate: list[Any]) -> None:
        sample_problems: list[str] = []
        for out, ref, cand in zip(self.outputs, reference, candidate, strict=True):
            if self.tolerance is not None:
                sample_problems += value_problems(out.name, ref, cand, self.tolerance)
            structured = isinstance(ref, (list, dict)) or isinstance(cand, (list, dict))
            r, c = _flat(ref), _flat(cand)
            if r.shape != c.shape:
                out.shape_match = False
                continue
            if not structured and r.dtype != c.dtype:
                out.dtype_match = False
            metrics = sample_metrics(r, c)
            if structured:
                metrics = dataclasses.replace(metrics, top1=None)
            out.samples.append(metrics)
        if sample_problems:
            self.unequal += 1
            room = _MAX_PROBLEMS - len(self.problems)
            self.problems += [f"sample {self.samples}: {p}" for p in sample_problems[:room]]
        self.samples += 1


def compare_models(
    reference: str | os.PathLike[str] | bytes | ReferenceOutputs,
    candidate: str | os.PathLike[str] | bytes,
    dataset: Dataset,
    *,
    tolerance: Tolerance | None = None,
    batch_size: int = 1,
    threads: int | None = None,
) -> Comparison:
    """Run both models on every feed (CPU EP) and measure their agreement per sample.

    ``reference`` may be the reference's outputs computed ahead of time on ``dataset``
    (``runtime.execute.reference_outputs``): then only the candidate runs.

    Raises:
        CheckFailedError: either model cannot be loaded or run, or the output names differ.
    """
    collector: _Collector | None = None
    for names, ref_out, cand_out in paired_outputs(
        reference, candidate, dataset, batch_size=batch_size, threads=threads
    ):
        if collector is None:
            collector = _Collector(names, tolerance)
        collector.add(ref_out, cand_out)
    if collector is None:
        return Comparison([], 0, tolerance)
    for out in collector.outputs:
        if not out.shape_match:
            out.problems.append("shape changed")
        if not out.dtype_match:
            out.problems.append("dtype changed")
    return Comparison(
        collector.outputs, collector.samples, tolerance, collector.problems, collector.unequal
    )

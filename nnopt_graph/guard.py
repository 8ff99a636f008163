"""Accuracy guard: budget expressions, measuring a candidate against the original."""

from __future__ import annotations

__all__ = ["Condition", "Guard", "GuardOutcome", "parse_guard"]

import dataclasses
import logging
import math
import operator
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx_ir as ir

from nnopt_graph import io
from nnopt_graph.errors import BadInputError
from nnopt_graph.runtime.data import Dataset
from nnopt_graph.verify import VerifyResult, compare_models

logger = logging.getLogger(__name__)

METRICS = ("cosine", "max_abs", "rel_l2", "sqnr", "top1", "metric")
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}
_CONDITION = re.compile(r"^\s*([a-z_0-9]+)\s*(>=|<=|>|<)\s*([-+0-9.eE]+|inf)\s*$")

# A user metric receives the path of the candidate model and returns a number.
MetricFn = Callable[[str], float]


@dataclasses.dataclass(frozen=True)
class Condition:
    """One budget term, e.g. ``cosine>=0.99``."""

    metric: str
    op: str
    threshold: float

    def holds(self, value: float) -> bool:
        """Whether a measured value satisfies the term (NaN never does)."""
        return not math.isnan(value) and _OPS[self.op](value, self.threshold)

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.threshold:g}"


def parse_guard(text: str) -> list[Condition]:
    """Parse ``cosine>=0.99,top1>=0.98`` (comma = all must hold).

    Raises:
        BadInputError: malformed term or unknown metric.
    """
    conditions = []
    for part in text.split(","):
        match = _CONDITION.match(part)
        if not match:
            raise BadInputError(
                f"bad --guard term '{part.strip()}': expected METRIC>=NUMBER or METRIC<=NUMBER"
            )
        metric, op, number = match.groups()
        if metric not in METRICS:
            raise BadInputError(f"bad --guard metric '{metric}' (known: {', '.join(METRICS)})")
        conditions.append(Condition(metric, op, float(number)))
    return conditions


@dataclasses.dataclass
class GuardOutcome:
    """A measurement of a candidate: metric values and whether every term holds."""

    passed: bool
    values: dict[str, float]
    failed: list[str]
    fidelity: VerifyResult | None

    def to_json(self) -> dict[str, Any]:
        """The report's entry."""
        return {
            "passed": self.passed,
            "values": {k: (v if math.isfinite(v) else str(v)) for k, v in self.values.items()},
            "failed": self.failed,
            "fidelity": self.fidelity.to_json() if self.fidelity else None,
        }


class Guard:
    """Measures candidates against the original model on held-out data."""

    def __init__(
        self,
        expr: str,
        reference: str | os.PathLike[str],
        dataset: Dataset,
        metric: MetricFn | None = None,
    ) -> None:
        self.expr = expr
        self.conditions = parse_guard(expr)
        if any(c.metric == "metric" for c in self.conditions) and metric is None:
            raise BadInputError("--guard uses 'metric', which needs a metric function (Python API)")
        self.reference = Path(reference)
        self.dataset = dataset
        self.metric = metric
        if dataset.num_samples == 0:
            raise BadInputError("the guard has no held-out samples to measure on")

    def measure_path(self, candidate: Path) -> GuardOutcome:
        """Measure a model file against the reference."""
        fidelity = compare_models(self.reference, candidate, self.dataset)
        values = {
            name: fidelity.metric(name) for name in ("cosine", "max_abs", "rel_l2", "sqnr", "top1")
        }
        if self.metric is not None:
            values["metric"] = float(self.metric(str(candidate)))
        failed = [
            f"{c} (measured {values.get(c.metric, math.nan):.6g})"
            for c in self.conditions
            if not c.holds(values.get(c.metric, math.nan)) or not fidelity.shapes_match
        ]
        return GuardOutcome(not failed, values, failed, fidelity)

    def measure(self, model: ir.Model) -> GuardOutcome:
        """Write an in-memory candidate to a temporary file and measure it."""
        with tempfile.TemporaryDirectory(prefix="nnopt-guard-") as tmp:
            path = Path(tmp, "candidate.onnx")
            io.save(model, path)
            return self.measure_path(path)

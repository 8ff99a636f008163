"""The accuracy guard: budget expressions over per-sample metrics, measured on held-out data.

Grammar (comma = all must hold)::

    EXPR      := TERM ("," TERM)*
    TERM      := METRIC ["." REDUCTION] OP NUMBER
    METRIC    := cosine | rel_l2 | max_abs | sqnr | top1 | metric
    REDUCTION := min | max | mean | median | pN      (N in (0, 100), e.g. p5)
    OP        := >= | <= | > | <

Every metric is measured per held-out sample and per output, then reduced over samples;
the worst output decides. Without a reduction the worst sample counts (``cosine>=0.99``
means ``cosine.min>=0.99``, ``rel_l2<=0.05`` means ``rel_l2.max<=0.05``); ``top1`` is the
argmax agreement rate over samples (``top1.mean``); ``metric`` is the user's hook value.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_GUARD",
    "MIN_HELD_OUT",
    "Condition",
    "Guard",
    "GuardOutcome",
    "MetricFn",
    "parse_guard",
]

import dataclasses
import logging
import math
import operator
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx_ir as ir

from nnopt_graph.check.compare import Comparison, compare_models
from nnopt_graph.check.metrics import METRICS
from nnopt_graph.errors import BadInputError
from nnopt_graph.runtime.data import Dataset
from nnopt_graph.runtime.isolate import run_isolated
from nnopt_graph.runtime.scratch import scratch_file

logger = logging.getLogger(__name__)

# What a pipeline with lossy passes must keep when the user gives no --guard.
DEFAULT_GUARD = "cosine.min>=0.99"
# Fewer held-out samples than this and the guard's verdict is weak: it says so.
MIN_HELD_OUT = 16

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}
_TERM = re.compile(
    r"^\s*(?P<metric>[a-z_0-9]+)(?:\.(?P<reduction>[a-z0-9_.]+))?\s*"
    r"(?P<op>>=|<=|>|<)\s*(?P<number>\S+)\s*$"
)
_REDUCTIONS = ("min", "max", "mean", "median")
_PERCENTILE = re.compile(r"^p(\d+(?:\.\d+)?)$")

# A user metric receives the path of the candidate model and returns a number.
MetricFn = Callable[[str], float]


def _default_reduction(metric: str) -> str:
    if metric == "top1":
        return "mean"
    if metric == "metric":
        return "value"
    return "min" if METRICS[metric] else "max"


@dataclasses.dataclass(frozen=True)
class Condition:
    """One budget term, e.g. ``cosine.min>=0.99``."""

    metric: str
    reduction: str
    op: str
    threshold: float

    def holds(self, value: float) -> bool:
        """Whether a measured value satisfies the term (NaN never does)."""
        return not math.isnan(value) and _OPS[self.op](value, self.threshold)

    def __str__(self) -> str:
        reduction = "" if self.reduction == "value" else f".{self.reduction}"
        return f"{self.metric}{reduction}{self.op}{self.threshold:g}"


def _bad(part: str, why: str) -> BadInputError:
    return BadInputError(f"bad --guard term '{part.strip()}': {why}")


def parse_guard(text: str) -> list[Condition]:
    """Parse a budget expression (see the module docstring).

    Raises:
        BadInputError: malformed term, unknown metric or reduction, non-finite number.
    """
    conditions = []
    for part in text.split(","):
        match = _TERM.match(part)
        if not match:
            raise _bad(part, "expected METRIC[.REDUCTION] OP NUMBER, e.g. cosine.min>=0.99")
        metric, reduction, op, number = match.group("metric", "reduction", "op", "number")
        if metric not in (*METRICS, "metric"):
            known = ", ".join((*METRICS, "metric"))
            raise _bad(part, f"unknown metric '{metric}' (known: {known})")
        if reduction is None:
            reduction = _default_reduction(metric)
        elif metric == "metric":
            raise _bad(part, "'metric' is one number from your function: it takes no reduction")
        elif reduction not in _REDUCTIONS:
            pct = _PERCENTILE.match(reduction)
            if not pct or not 0 < float(pct.group(1)) < 100:
                raise _bad(
                    part,
                    f"unknown reduction '{reduction}' (min, max, mean, median, pN with 0<N<100)",
                )
        try:
            threshold = float(number)
        except ValueError:
            raise _bad(part, f"'{number}' is not a number") from None
        if not math.isfinite(threshold):
            raise _bad(part, "the bound must be a finite number")
        conditions.append(Condition(metric, reduction, op, threshold))
    return conditions


@dataclasses.dataclass
class GuardOutcome:
    """A measurement of a candidate: each term's value, whether all hold, and the figures."""

    passed: bool
    values: dict[str, float]
    failed: list[str]
    fidelity: Comparison | None
    samples: int = 0
    worst: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The report's entry (strict JSON: non-finite values as null)."""
        return {
            "passed": self.passed,
            "values": {k: (v if math.isfinite(v) else None) for k, v in self.values.items()},
            "failed": self.failed,
            "samples": self.samples,
            "worst": self.worst,
            "fidelity": self.fidelity.to_json() if self.fidelity else None,
        }


class Guard:
    """Measures candidates against the original model on held-out data, per sample."""

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
        self.warnings: list[str] = []
        if dataset.num_samples < MIN_HELD_OUT:
            self.warnings.append(
                f"the guard measures on only {dataset.num_samples} held-out sample(s) "
                f"(fewer than {MIN_HELD_OUT}): its verdict may not hold on other inputs; "
                "give --eval DATA or a larger --calib"
            )

    @property
    def samples(self) -> int:
        """Held-out samples the guard measures on."""
        return self.dataset.num_samples

    def _value(self, condition: Condition, fidelity: Comparison, user: float | None) -> float:
        if condition.metric == "metric":
            return math.nan if user is None else user
        return fidelity.metric(condition.metric, condition.reduction)

    def _worst_sample(self, condition: Condition, fidelity: Comparison) -> str:
        """Where a failing value came from: the deciding (worst) output and its worst sample."""
        if condition.metric == "metric":
            return ""
        higher_better = METRICS[condition.metric]
        scored = []
        for out in fidelity.outputs:
            if out.values(condition.metric):
                value = out.reduce(condition.metric, condition.reduction)
                badness = math.inf if math.isnan(value) else (-value if higher_better else value)
                scored.append((badness, out))
        if not scored:
            return ""
        worst = max(scored, key=lambda item: item[0])[1]
        index = worst.worst_index(condition.metric)
        return "" if index is None else f" on output '{worst.name}', worst sample #{index}"

    def measure_path(self, candidate: Path) -> GuardOutcome:
        """Measure a model file against the reference."""
        # In a child process: an ONNX Runtime crash on a candidate fails the job in one
        # line instead of killing it (only the metrics come back).
        fidelity = run_isolated(
            compare_models,
            self.reference,
            candidate,
            self.dataset,
            what="running a candidate for the guard",
        )
        user = float(self.metric(str(candidate))) if self.metric is not None else None
        values: dict[str, float] = {}
        failed = []
        for c in self.conditions:
            value = self._value(c, fidelity, user)
            values[str(c)] = value
            if not fidelity.shapes_match:
                failed.append(f"{c}: an output changed shape or dtype")
            elif math.isnan(value):
                why = (
                    "no output has a class axis"
                    if c.metric == "top1" and not any(o.values("top1") for o in fidelity.outputs)
                    else "not measurable: a sample has no finite values to compare (NaN/Inf)"
                )
                failed.append(f"{c}: {why}")
            elif not c.holds(value):
                failed.append(f"{c} (measured {value:.6g}{self._worst_sample(c, fidelity)})")
        return GuardOutcome(
            not failed, values, failed, fidelity, fidelity.samples, fidelity.worst()
        )

    def measure(self, model: ir.Model) -> GuardOutcome:
        """Measure an in-memory candidate (written to a temporary file for ONNX Runtime)."""
        with scratch_file(model) as path:
            return self.measure_path(path)

"""Per-group pruning ratios from measured sensitivity curves under a weight-parameter budget.

The ``search`` allocation of prune-channels measures, for every candidate group, how
much the model's worst output cosine drops when only that group loses a fraction of its
units (a sensitivity curve over a few ratios). This module turns those curves into
per-group ratios that together remove a budget of weight parameters (``ratio`` times
all weight parameters of the model's weighted layers), taking parameters where they
cost the least sensitivity per parameter removed: each curve is made monotone and
replaced by its lower convex hull, the hull segments of all groups are sorted by slope
(sensitivity per parameter) and taken in order until the budget is met, the last one
partially. For separable convex costs this greedy order is optimal.
"""

from __future__ import annotations

__all__ = [
    "Allocation",
    "allocate_budget",
    "allocate_params",
    "allocate_units",
    "global_ratios",
    "sensitivity_levels",
    "removed_params",
    "total_weight_params",
    "unit_param_costs",
]

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from nnopt_graph.analysis.channels import WEIGHT_ROLES, ChannelGroup
from nnopt_graph.analysis.walk import STANDARD_DOMAINS
from nnopt_graph.core.constants import const_array

_WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


@dataclasses.dataclass(frozen=True)
class Allocation:
    """The ratio chosen for one group and why.

    Attributes:
        ratio: fraction of the group's units to remove.
        params: weight parameters this removes (planned).
        reason: a short sentence for the report.
    """

    ratio: float
    params: int
    reason: str


def unit_param_costs(group: ChannelGroup) -> np.ndarray:
    """Weight parameters (Conv/Gemm/MatMul weights of the group) each unit's removal frees."""
    costs = np.zeros(group.num_units)
    for space in group.spaces:
        if not space.is_constant or not space.has_role(*WEIGHT_ROLES) or space.size == 0:
            continue
        array = const_array(space.value)
        if array is None:
            continue
        per_index = array.size // space.size
        costs += per_index * np.bincount(space.unit_of, minlength=group.num_units)
    return costs


def total_weight_params(model: ir.Model) -> int:
    """Constant weight parameters of the main graph's Conv, ConvTranspose, Gemm and MatMul."""
    total = 0
    seen: set[int] = set()
    for node in model.graph:
        if node.op_type not in _WEIGHTED or node.domain not in STANDARD_DOMAINS:
            continue
        for value in node.inputs[:2]:
            array = const_array(value)
            if value is not None and array is not None and id(value) not in seen:
                seen.add(id(value))
                total += int(array.size)
    return total


def sensitivity_levels(ratio: float, cap: float) -> list[float]:
    """Ratios at which a group's sensitivity is measured: ratio/2, ratio, 2x, 3x (<= cap)."""
    levels = {round(min(cap, f * ratio), 6) for f in (0.5, 1.0, 2.0, 3.0)}
    return sorted(v for v in levels if v > 0)


def _hull(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Lower convex hull of (x, y) points sorted by x, starting at (0, 0)."""
    hull: list[tuple[float, float]] = []
    for p in points:
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            # Drop the middle point when it lies on or above the chord to p.
            if (y2 - y1) * (p[0] - x1) >= (p[1] - y1) * (x2 - x1):
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def allocate_params(
    groups: Sequence[ChannelGroup],
    curves: Mapping[int, Mapping[float, float]],
    budget: float,
    max_ratio: float,
) -> dict[int, Allocation]:
    """Per-group ratios removing ``budget`` weight parameters at the least sensitivity.

    Args:
        groups: the candidate groups.
        curves: per group id, measured sensitivity (1 - worst cosine) at some ratios;
            groups without a curve are left unchanged (ratio 0).
        budget: weight parameters to remove in total.
        max_ratio: no group loses more than this fraction of its units.

    Returns:
        Per group id, the allocation (ratio, planned params, reason).
    """
    segments: list[tuple[float, int, float, float]] = []  # (slope, gid, dx, x_end)
    caps: dict[int, float] = {}
    unit_cost: dict[int, float] = {}
    for group in groups:
        curve = curves.get(group.id)
        costs = unit_param_costs(group)
        free = group.prunable_units
        if not curve or not len(free) or costs[free].sum() <= 0:
            continue
        unit_cost[group.id] = float(costs[free].mean())
        cap_units = min(math.floor(max_ratio * group.num_units + 1e-9), len(free))
        caps[group.id] = cap_units * unit_cost[group.id]
        points = [(0.0, 0.0)]
        worst = 0.0
        for ratio in sorted(curve):
            worst = max(worst, float(curve[ratio]))  # more removal never helps
            x = min(ratio * group.num_units, cap_units) * unit_cost[group.id]
            if x > points[-1][0]:
                points.append((x, worst))
        if caps[group.id] > points[-1][0]:
            # Beyond the last measured ratio: extrapolate its slope (no free lunch).
            (x1, y1), (x2, y2) = points[-2], points[-1]
            slope = (y2 - y1) / (x2 - x1) if x2 > x1 else 0.0
            points.append((caps[group.id], y2 + slope * (caps[group.id] - x2)))
        hull = _hull(points)
        for (x1, y1), (x2, y2) in zip(hull, hull[1:], strict=False):
            segments.append(((y2 - y1) / (x2 - x1), group.id, x2 - x1, x2))
    segments.sort(key=lambda s: (s[0], s[1], s[3]))
    taken = dict.fromkeys(caps, 0.0)
    last_slope: dict[int, float] = {}
    left = float(budget)
    for slope, gid, dx, _ in segments:
        if left <= 0:
            break
        step = min(dx, left)
        taken[gid] += step
        left -= step
        last_slope[gid] = slope
    result: dict[int, Allocation] = {}
    for group in groups:
        if group.id not in caps:
            reason = "no sensitivity measured" if not curves.get(group.id) else "no weights"
            result[group.id] = Allocation(0.0, 0, reason)
            continue
        units = min(
            int(math.floor(taken[group.id] / unit_cost[group.id] + 0.5)),
            int(round(caps[group.id] / unit_cost[group.id])),
        )
        ratio = units / group.num_units
        params = int(round(units * unit_cost[group.id]))
        if units == 0:
            reason = "kept: other groups lose less per parameter"
        elif taken[group.id] >= caps[group.id] - 1e-9:
            reason = f"at max-layer-ratio {max_ratio:g}: insensitive (cheapest per parameter)"
        else:
            reason = (
                f"marginal sensitivity {last_slope.get(group.id, 0.0):.3g} per parameter "
                "when the budget was met"
            )
        result[group.id] = Allocation(ratio, params, reason)
    return result


def removed_params(groups: Sequence[ChannelGroup], ratios: Mapping[int, float]) -> float:
    """Weight parameters removed when each group loses ``ratios[id]`` of its units.

    A weight pruned on two axes (a Conv between two pruned groups, an FFN matrix whose
    rows and columns both go) loses ``1 - (1 - f1)(1 - f2)`` of its entries, not the sum.
    """
    kept: dict[int, tuple[int, float]] = {}  # id(value) -> (size, kept fraction)
    for group in groups:
        fraction = ratios.get(group.id, 0.0)
        for space in group.spaces:
            if not space.is_constant or not space.has_role(*WEIGHT_ROLES):
                continue
            array = const_array(space.value)
            if array is None:
                continue
            size, left = kept.get(id(space.value), (int(array.size), 1.0))
            kept[id(space.value)] = (size, left * (1.0 - fraction))
    return float(sum(size * (1.0 - left) for size, left in kept.values()))


def allocate_budget(
    groups: Sequence[ChannelGroup],
    curves: Mapping[int, Mapping[float, float]],
    budget: float,
    max_ratio: float,
    rounds: int = 8,
) -> dict[int, Allocation]:
    """``allocate_params`` corrected for weights shared by two pruned groups.

    The per-unit costs count a weight pruned on both axes twice; the planned budget is
    rescaled (secant steps) until the exact count (``removed_params``) meets ``budget``.
    """
    target = float(budget)
    chosen = allocate_params(groups, curves, target, max_ratio)
    for _ in range(rounds):
        actual = removed_params(groups, {gid: a.ratio for gid, a in chosen.items()})
        if actual <= 0 or abs(actual - budget) <= 0.005 * budget:
            break
        target *= budget / actual
        again = allocate_params(groups, curves, target, max_ratio)
        if again == chosen:
            break
        chosen = again
    return chosen


def global_ratios(
    groups: Sequence[ChannelGroup],
    scores: dict[int, np.ndarray],
    ratio: float,
    max_ratio: float,
) -> dict[int, float]:
    """Per-group ratios from one ranking of mean-normalized importances across groups."""
    entries: list[tuple[float, int]] = []
    total = 0
    for group in groups:
        s = scores[group.id]
        free = group.prunable_units
        mean = float(s[free].mean()) if len(free) and s[free].mean() > 0 else 1.0
        entries.extend((float(s[u]) / mean, group.id) for u in free)
        total += group.num_units
    entries.sort()
    budget = int(math.floor(ratio * total + 0.5))
    caps = {g.id: int(math.floor(max_ratio * g.num_units + 1e-9)) for g in groups}
    taken = dict.fromkeys(caps, 0)
    for _, gid in entries:
        if budget <= 0:
            break
        if taken[gid] < caps[gid]:
            taken[gid] += 1
            budget -= 1
    return {g.id: taken[g.id] / g.num_units for g in groups}


def allocate_units(
    groups: Sequence[ChannelGroup], sensitivity: dict[int, float], ratio: float, max_ratio: float
) -> dict[int, float]:
    """Per-group ratios inversely related to sensitivity, averaging ``ratio`` over units."""
    known = [g for g in groups if sensitivity.get(g.id) is not None]
    ratios = {g.id: ratio for g in groups}
    if len(known) < 2:
        return ratios
    values = np.array([sensitivity[g.id] for g in known])
    eps = 1e-6 + 0.05 * float(values.mean())
    weight = 1.0 / np.sqrt(values + eps)
    units = np.array([g.num_units for g in known], dtype=np.float64)
    target = ratio * units.sum()
    lo, hi = 0.0, 1e6
    for _ in range(100):
        mid = (lo + hi) / 2
        if (np.clip(mid * weight, 0.0, max_ratio) * units).sum() < target:
            lo = mid
        else:
            hi = mid
    for group, r in zip(known, np.clip(hi * weight, 0.0, max_ratio), strict=True):
        ratios[group.id] = float(r)
    return ratios

"""Reconstruction-aware unit importance: structured Optimal Brain Surgeon on the sinks.

prune-channels refits the layers that lose inputs by least squares, so what a unit
really costs is not its own magnitude but the part of its contribution that the kept
units cannot predict. Structured OBS (Hassibi & Stork 1993; the group form used by
OBC, Frantar & Alistarh 2022, and ZipLM, Kurtic et al. 2023) gives that cost in closed
form from the Gram matrix H = XᵀX of a sink's input X: removing the rows U of its
weight W, with the rest re-fitted, adds tr(W_Uᵀ ((H⁻¹)_UU)⁻¹ W_U) to the squared output
error. Units are removed greedily, cheapest first, with W and H⁻¹ updated after each
step; a unit's score is the cumulative cost, as a share of the sinks' output energy, at
which it goes. The scores are monotone in the greedy order, so removing the k
lowest-scoring units is the greedy choice of k, and shares compare across groups.

Supported sinks: MatMul and Gemm (without transA) with a constant 2-D weight, which
contracts the last axis of their data input. Groups with any other sink (Conv, whose im2col
features are channels x kernel positions) return None: the caller falls back to
``activation`` importance.
"""

from __future__ import annotations

__all__ = ["MAX_FEATURES", "collect_grams", "gram_collector", "gram_taps", "obs_scores"]

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from nnopt_graph.analysis.channels import ROLE_IN, ChannelGroup, ChannelSpace
from nnopt_graph.core.constants import const_array
from nnopt_graph.runtime.data import Dataset

if TYPE_CHECKING:
    from nnopt_graph.runtime.services import RuntimeServices

# Widest sink input whose Gram matrix is kept (4096² float64 = 128 MiB).
MAX_FEATURES = 4096
# Least dampening of H (relative to its mean diagonal): keeps H invertible when a
# channel is dead or channels are collinear, even with ridge=0.
_MIN_DAMP = 1e-8
# Units removed together per greedy step: 1/64 of those alive (one at a time below 128).
_STEP_DIVISOR = 64

Tap = tuple[str, int]


def _sink_taps(space: ChannelSpace) -> list[Tap] | None:
    """The data input (name, axis) of each MatMul/Gemm reading ``space``; None if any other."""
    taps: list[Tap] = []
    for role in space.roles:
        if role.role != ROLE_IN:
            continue
        node = role.node
        if node.op_type not in ("MatMul", "Gemm") or role.data is None:
            return None
        value, axis = role.data
        if not value.name:
            return None
        trans_a = node.attributes.get("transA")
        if node.op_type == "Gemm" and trans_a is not None and trans_a.as_int():
            return None
        taps.append((value.name, axis))
    return taps


def gram_taps(groups: Sequence[ChannelGroup], main_graph: ir.Graph) -> list[Tap]:
    """Sink inputs (main graph, at most MAX_FEATURES wide) whose Gram matrices OBS needs."""
    taps: list[Tap] = []
    for group in groups:
        if group.graph is not main_graph:
            continue
        for space in group.sinks:
            found = _sink_taps(space)
            if found is None or space.size > MAX_FEATURES:
                continue
            taps.extend(t for t in found if t not in taps)
    return taps


def gram_collector(
    taps: Sequence[Tap],
) -> tuple[Callable[[dict[str, np.ndarray]], None], dict[Tap, np.ndarray]]:
    """(on_batch, grams): feed captured batches to on_batch; grams fills with [X 1]ᵀ[X 1].

    Rows are positions; the column of ones stands for the bias the refit may change, so
    a unit whose contribution is constant costs nothing. Float64 sums of per-batch
    float32 products.
    """
    grams: dict[Tap, np.ndarray] = {}

    def on_batch(batch: dict[str, np.ndarray]) -> None:
        for name, axis in taps:
            array = batch.get(name)
            if array is None or array.ndim != axis + 1:  # a 2-D weight contracts the last axis
                continue
            rows = np.moveaxis(array, axis, -1).reshape(-1, array.shape[axis])
            rows = np.concatenate([rows, np.ones((len(rows), 1), rows.dtype)], axis=1)  # bias
            # One batch's product in float32 (twice as fast), summed over batches in float64.
            gram = (rows.T @ rows).astype(np.float64)
            if (name, axis) in grams:
                grams[(name, axis)] += gram
            else:
                grams[(name, axis)] = gram

    return on_batch, grams


def collect_grams(
    runtime: RuntimeServices, model: ir.Model, taps: Sequence[Tap], dataset: Dataset
) -> dict[Tap, np.ndarray]:
    """[X 1]ᵀ[X 1] (float64) of each tapped activation over the calibration data."""
    on_batch, grams = gram_collector(taps)
    names = sorted({name for name, _ in taps})
    if names:
        runtime.capture(model, names, dataset, on_batch, threads=None)
    return grams


class _Sink:
    """One sink's live weight rows W [R, outputs], inverse Gram and unit per row.

    The last row is the bias feature (unit id 2**30, past every real unit): it is never
    removed, and removals move onto it what is constant in the removed units' output.
    """

    def __init__(
        self, weight: np.ndarray, gram: np.ndarray, unit_of: np.ndarray, damp: float
    ) -> None:
        weight = np.concatenate([weight, np.zeros((1, weight.shape[1]))])
        gram = gram + damp * max(float(np.mean(np.diag(gram))), 1e-12) * np.eye(len(gram))
        self.energy = float(np.sum((gram @ weight) * weight))
        self.weight = weight
        self.hinv = np.linalg.inv(gram)
        self.unit_of = np.append(np.asarray(unit_of), 1 << 30)

    def costs(self, units: np.ndarray, num_units: int) -> np.ndarray:
        """Per unit, the squared output error its removal alone adds (the rest re-fitted)."""
        rows = self.unit_of < num_units
        per_unit = np.bincount(self.unit_of[rows], minlength=num_units)
        if per_unit.max(initial=0) <= 1:  # one row per unit (neurons): the diagonal suffices
            out = np.zeros(num_units)
            diag = np.maximum(np.diag(self.hinv)[rows], 1e-300)
            out[self.unit_of[rows]] = np.sum(np.square(self.weight[rows]), axis=1) / diag
            return out[units]
        return np.array([self._joint_cost(np.nonzero(self.unit_of == u)[0]) for u in units])

    def remove(self, units: Sequence[int]) -> float:
        """Take ``units`` out, moving what the kept rows can predict onto them (OBS update).

        Returns the squared output error the joint removal adds.
        """
        gone = np.isin(self.unit_of, units)
        idx = np.nonzero(gone)[0]
        if idx.size == 0:
            return 0.0
        keep = np.nonzero(~gone)[0]
        block = self.hinv[np.ix_(idx, idx)]
        cols = self.hinv[np.ix_(keep, idx)]
        solved = np.linalg.solve(block, np.concatenate([self.weight[idx], cols.T], axis=1))
        outputs = self.weight.shape[1]
        cost = float(np.sum(self.weight[idx] * solved[:, :outputs]))
        self.weight = self.weight[keep] - cols @ solved[:, :outputs]
        self.hinv = self.hinv[np.ix_(keep, keep)] - cols @ solved[:, outputs:]
        self.unit_of = self.unit_of[keep]
        return cost

    def _joint_cost(self, idx: np.ndarray) -> float:
        if idx.size == 0:
            return 0.0
        w = self.weight[idx]
        return float(np.sum(w * np.linalg.solve(self.hinv[np.ix_(idx, idx)], w)))


def _sinks(group: ChannelGroup, grams: dict[Tap, np.ndarray], damp: float) -> list[_Sink] | None:
    sinks: list[_Sink] = []
    for space in group.sinks:
        taps = _sink_taps(space)
        array = const_array(space.value)
        if taps is None or array is None or not np.issubdtype(array.dtype, np.floating):
            return None
        weight = np.moveaxis(array.astype(np.float64), space.axis, 0).reshape(space.size, -1)
        for tap in taps:
            gram = grams.get(tap)
            if gram is None or gram.shape[0] != space.size + 1:
                return None
            sinks.append(_Sink(weight.copy(), gram, space.unit_of, damp))
    return sinks or None


def obs_scores(
    group: ChannelGroup,
    grams: dict[Tap, np.ndarray],
    limit: int | None = None,
    ridge: float = 1e-3,
) -> np.ndarray | None:
    """Per unit, the cumulative share of output energy lost when the greedy removes it.

    Each step removes the cheapest 1/_STEP_DIVISOR of the live units together (one at
    a time for a few units, as for heads), spreading the step's joint cost over them
    in the order of their single costs. ``limit`` bounds the units removed (the most
    the pass may take); those left score above every removed one, by their single
    cost. Frozen units score +inf. None when a sink is not a supported MatMul/Gemm or
    lacks its Gram. ``ridge`` dampens H as the refit does (relative to its mean
    diagonal), so the costs are those of the refit that follows.
    """
    sinks = _sinks(group, grams, max(ridge, _MIN_DAMP))
    if sinks is None:
        return None
    energy = max(sum(s.energy for s in sinks), 1e-300)
    units_total = group.num_units
    scores = np.full(units_total, np.inf)
    alive = np.array(group.prunable_units, dtype=int)
    budget = len(alive) if limit is None else min(limit, len(alive))
    total = 0.0
    while budget > 0:
        costs = np.sum([s.costs(alive, units_total) for s in sinks], axis=0)
        take = min(budget, max(1, len(alive) // _STEP_DIVISOR))
        order = np.argsort(costs, kind="stable")[:take]
        picked = alive[order]
        joint = max(sum(s.remove(picked.tolist()) for s in sinks), 0.0)
        singles = np.maximum(costs[order], 0.0)
        share = np.cumsum(singles) / singles.sum() if singles.sum() > 0 else np.ones(take)
        scores[picked] = (total + joint * share) / energy
        total += joint
        alive = np.delete(alive, order)
        budget -= take
    if alive.size:
        costs = np.sum([s.costs(alive, units_total) for s in sinks], axis=0)
        scores[alive] = (total + np.maximum(costs, 0.0)) / energy + 1e-12
    return scores

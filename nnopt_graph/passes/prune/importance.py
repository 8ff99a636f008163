"""Importance of the units of channel groups: weight magnitude, BN scale, activations.

``obs`` (passes/prune/obs.py) scores a unit by the output error the least-squares refit
cannot recover when it goes, from the Gram matrices of the sinks' inputs.

``fluctuation`` follows FLAP (An et al. 2024, "Fluctuation-based Adaptive Structured
Pruning for Large Language Models"): an input channel of a sink weight matters by how much
it varies around its mean over the calibration data (its mean can be moved into the bias)
times the squared norm of the weight column reading it.
"""

from __future__ import annotations

__all__ = [
    "IMPORTANCE_KINDS",
    "ChannelStats",
    "activation_taps",
    "auto_kind",
    "channel_stats_collector",
    "collect_activation_means",
    "collect_channel_stats",
    "collect_importance_data",
    "group_importance",
]

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from nnopt_graph.analysis.channels import (
    ROLE_BN_SCALE,
    ROLE_IN,
    WEIGHT_ROLES,
    ChannelGroup,
    ChannelSpace,
)
from nnopt_graph.core.constants import const_array
from nnopt_graph.passes.prune.obs import gram_collector, gram_taps, obs_scores
from nnopt_graph.runtime.data import Dataset

if TYPE_CHECKING:
    from nnopt_graph.runtime.services import RuntimeServices

logger = logging.getLogger(__name__)

IMPORTANCE_KINDS = ("auto", "l1", "l2", "bn-scale", "activation", "fluctuation", "obs")
_DATA_KINDS = ("auto", "activation", "fluctuation", "obs")
_DENSE = frozenset({"MatMul", "Gemm"})


def auto_kind(group: ChannelGroup) -> str:
    """``auto``'s choice: fluctuation where only MatMul/Gemm read the group, else activation.

    FLAP's fluctuation is made for transformer FFN neurons and heads: on the trained
    MiniLM it keeps the sentence embedding at a worst held-out cosine of 0.966 against
    activation's 0.944, at the same weights and latency (bench/results/prune_obs.md).
    CNN groups keep activation, measured on every CNN figure in bench/results.
    """
    readers = {r.node.op_type for s in group.sinks for r in s.roles if r.role == ROLE_IN}
    return "fluctuation" if readers and readers <= _DENSE else "activation"


# (value name, axis) of an activation whose per-channel mean |x| is measured.
Tap = tuple[str, int]


def _per_index(array: np.ndarray, axis: int, kind: str) -> np.ndarray:
    """Per index along ``axis``: sum of |w| (l1) or of w² (l2) over the other axes."""
    moved = np.moveaxis(np.asarray(array, dtype=np.float64), axis, 0).reshape(array.shape[axis], -1)
    return np.abs(moved).sum(axis=1) if kind == "l1" else np.square(moved).sum(axis=1)


def _weight_norms(space: ChannelSpace, kind: str) -> np.ndarray | None:
    array = const_array(space.value)
    if array is None or not np.issubdtype(array.dtype, np.floating):
        return None
    return _per_index(array, space.axis, kind)


def _sum_by_unit(
    group: ChannelGroup, space: ChannelSpace, values: np.ndarray, out: np.ndarray
) -> None:
    np.add.at(out, space.unit_of, values)


def _magnitude(group: ChannelGroup, kind: str) -> np.ndarray:
    """L1 or L2 norm of every weight slice of each unit, over all coupled weights."""
    scores = np.zeros(group.num_units)
    for space in group.spaces:
        if not space.is_constant or not space.has_role(*WEIGHT_ROLES):
            continue
        norms = _weight_norms(space, kind)
        if norms is not None:
            _sum_by_unit(group, space, norms, scores)
    return scores if kind == "l1" else np.sqrt(scores)


def activation_taps(groups: Sequence[ChannelGroup], main_graph: ir.Graph) -> list[Tap]:
    """The sinks' data inputs (main graph only) whose channel means activation importance needs."""
    taps: list[Tap] = []
    main_values = {id(v) for v in main_graph.inputs}
    main_values.update(id(v) for n in main_graph for v in n.outputs)
    for group in groups:
        if group.graph is not main_graph:
            continue
        for space in group.spaces:
            for role in space.roles:
                if role.role != ROLE_IN or role.data is None:
                    continue
                value, axis = role.data
                if value.name and id(value) in main_values and (value.name, axis) not in taps:
                    taps.append((value.name, axis))
    return taps


@dataclasses.dataclass(frozen=True)
class ChannelStats:
    """Per-channel statistics of one activation over the calibration data.

    Attributes:
        mean_abs: mean |x|.
        mean: mean x (what bias compensation moves into the next layer's bias).
        var: variance of x (sample variance, what ``fluctuation`` importance measures).
        count: values per channel.
    """

    mean_abs: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    count: int


def channel_stats_collector(
    taps: Sequence[Tap],
) -> tuple[Callable[[dict[str, np.ndarray]], None], Callable[[], dict[Tap, ChannelStats]]]:
    """(on_batch, finish): feed captured batches to on_batch, then finish() gives the stats."""
    sums: dict[Tap, list[np.ndarray]] = {}
    counts: dict[Tap, int] = {}

    def on_batch(batch: dict[str, np.ndarray]) -> None:
        for name, axis in taps:
            array = batch.get(name)
            if array is None or array.ndim <= axis:
                continue
            moved = np.moveaxis(array.astype(np.float64), axis, 0).reshape(array.shape[axis], -1)
            parts = [np.abs(moved).sum(axis=1), moved.sum(axis=1), np.square(moved).sum(axis=1)]
            if (name, axis) in sums:
                sums[(name, axis)] = [a + b for a, b in zip(sums[(name, axis)], parts, strict=True)]
            else:
                sums[(name, axis)] = parts
            counts[(name, axis)] = counts.get((name, axis), 0) + moved.shape[1]

    def finish() -> dict[Tap, ChannelStats]:
        stats: dict[Tap, ChannelStats] = {}
        for tap, (abs_sum, total, squares) in sums.items():
            n = max(counts[tap], 1)
            mean = total / n
            var = np.maximum(squares / n - np.square(mean), 0.0) * (n / max(n - 1, 1))
            stats[tap] = ChannelStats(abs_sum / n, mean, var, counts[tap])
        return stats

    return on_batch, finish


def collect_channel_stats(
    runtime: RuntimeServices,
    model: ir.Model,
    taps: Sequence[Tap],
    dataset: Dataset,
    batch_size: int = 1,
) -> dict[Tap, ChannelStats]:
    """Mean |x|, mean and variance per channel of each tapped activation."""
    on_batch, finish = channel_stats_collector(taps)
    names = sorted({name for name, _ in taps})
    if names:
        runtime.capture(model, names, dataset, on_batch, batch_size=batch_size, threads=None)
    return finish()


def collect_activation_means(
    runtime: RuntimeServices,
    model: ir.Model,
    taps: Sequence[Tap],
    dataset: Dataset,
    batch_size: int = 1,
) -> dict[Tap, np.ndarray]:
    """Mean |x| per channel of each tapped activation over the calibration data."""
    stats = collect_channel_stats(runtime, model, taps, dataset, batch_size)
    return {tap: value.mean_abs for tap, value in stats.items()}


def collect_importance_data(
    runtime: RuntimeServices,
    model: ir.Model,
    groups: Sequence[ChannelGroup],
    dataset: Dataset | None,
    kind: str,
    compensate: bool,
) -> tuple[dict[Tap, ChannelStats], dict[Tap, np.ndarray]]:
    """The calibration statistics ``kind`` (and bias compensation) need: (stats, Grams)."""
    if dataset is None or (kind not in _DATA_KINDS and not compensate):
        if kind in _DATA_KINDS:
            logger.info("prune-channels: importance=%s needs calibration data; using l2", kind)
        return {}, {}
    stat_taps = activation_taps(groups, model.graph)
    stats_on_batch, finish = channel_stats_collector(stat_taps)
    grams_taps = gram_taps(groups, model.graph) if kind == "obs" else []
    grams_on_batch, grams = gram_collector(grams_taps)

    def on_batch(batch: dict[str, np.ndarray]) -> None:
        stats_on_batch(batch)
        grams_on_batch(batch)

    # One run over the calibration data for both (the model is the costly part).
    names = sorted({name for name, _ in [*stat_taps, *grams_taps]})
    if names:
        runtime.capture(model, names, dataset, on_batch, threads=None)
    return finish(), grams


def group_importance(
    group: ChannelGroup,
    kind: str,
    activation_means: dict[Tap, np.ndarray] | None = None,
    variances: dict[Tap, np.ndarray] | None = None,
    grams: dict[Tap, np.ndarray] | None = None,
    limit: int | None = None,
    ridge: float = 1e-3,
) -> tuple[np.ndarray, str]:
    """Importance of each unit of a group, and the kind actually used.

    ``l1``/``l2``: magnitude of every coupled weight slice (the producers' output
    channels, the consumers' input channels, depthwise/grouped weights) summed per unit.
    ``bn-scale``: |gamma| of the BatchNormalizations in the group (``l2`` when none is
    left, e.g. after fold-batchnorm). ``activation``: for each sink, mean |x| of its
    input channel times the L2 norm of the weight slice reading it, summed per unit
    (``l2`` for groups without measured sinks). ``fluctuation`` (FLAP): for each sink,
    the variance of its input channel times the squared L2 norm of the weight slice
    reading it, summed per unit (``variances`` needed; ``l2`` without them).
    ``auto``: ``auto_kind``'s choice for the group. ``obs``: the greedy structured-OBS
    order over at most ``limit`` units (``grams`` needed; ``activation`` for groups whose
    sinks it does not cover), its costs those of the refit with ``ridge``.
    """
    if kind == "auto":
        kind = auto_kind(group)
    if kind == "obs":
        scores = obs_scores(group, grams, limit, ridge) if grams else None
        if scores is not None:
            return scores, kind
        kind = "activation"
    if kind == "fluctuation":
        return _data_weighted(group, variances, squared=True, kind=kind)
    if kind == "activation":
        return _data_weighted(group, activation_means, squared=False, kind=kind)
    if kind == "bn-scale":
        scores = np.zeros(group.num_units)
        found = False
        for space in group.spaces:
            if space.is_constant and space.has_role(ROLE_BN_SCALE):
                array = const_array(space.value)
                if array is not None:
                    _sum_by_unit(group, space, np.abs(array.astype(np.float64).ravel()), scores)
                    found = True
        if found:
            return scores, kind
        return _magnitude(group, "l2"), "l2"
    return _magnitude(group, kind), kind


def _data_weighted(
    group: ChannelGroup,
    per_channel: dict[Tap, np.ndarray] | None,
    *,
    squared: bool,
    kind: str,
) -> tuple[np.ndarray, str]:
    """Sum over sinks of a per-channel statistic times the weight slice's (squared) norm."""
    scores = np.zeros(group.num_units)
    found = False
    for space in group.spaces:
        if not space.is_constant or per_channel is None:
            continue
        for role in space.roles:
            if role.role != ROLE_IN or role.data is None:
                continue
            value, axis = role.data
            stat = per_channel.get((value.name or "", axis))
            norms = _weight_norms(space, "l2")  # sum of squares per index
            if stat is None or norms is None or stat.shape[0] != space.size:
                continue
            _sum_by_unit(group, space, stat * (norms if squared else np.sqrt(norms)), scores)
            found = True
    if found:
        return scores, kind
    return _magnitude(group, "l2"), "l2"

"""Which units of a channel group go: how many at a ratio, and the lowest-scoring free ones."""

from __future__ import annotations

__all__ = [
    "AUTO_MIN_UNITS",
    "AUTO_STEP",
    "align_keep",
    "removal_count",
    "round_step",
    "select_units",
    "unit_classes",
    "unit_counts",
]

import math

import numpy as np

from nnopt_graph.analysis.channels import ChannelGroup

# round-to=0 (auto): 16 channels, ONNX Runtime's NCHWc Conv block with AVX-512 (a multiple
# of AVX2's 8) and of MLAS's GEMM panels, for groups of at least AUTO_MIN_UNITS single
# channels; smaller groups are left unaligned, where a step of 16 would be most of them.
AUTO_STEP = 16
AUTO_MIN_UNITS = 64


def round_step(group: ChannelGroup, round_to: int) -> int:
    """The alignment step for a group: ``round_to``, or with 0 the automatic choice."""
    if round_to > 0:
        return round_to
    return AUTO_STEP if group.unit_width == 1 and group.num_units >= AUTO_MIN_UNITS else 1


def unit_counts(group: ChannelGroup) -> np.ndarray:
    """[spaces, units]: indices each unit holds in each space."""
    return np.stack([np.bincount(s.unit_of, minlength=group.num_units) for s in group.spaces])


def removal_count(group: ChannelGroup, ratio: float, max_layer_ratio: float, round_to: int) -> int:
    """Units to remove at ``ratio``, capped and rounded to widths of ``round_step``'s step."""
    units = group.num_units
    max_remove = min(int(math.floor(max_layer_ratio * units + 1e-9)), len(group.prunable_units))
    remove = min(int(math.floor(ratio * units + 0.5)), max_remove)
    step = round_step(group, round_to)
    if step > 1 and group.unit_width == 1 and remove > 0:
        kept = int(math.floor((units - remove) / step + 0.5)) * step
        kept = min(max(kept, step), units)
        if units - kept > max_remove:
            kept = min(units, int(math.ceil((units - max_remove) / step)) * step)
        remove = units - kept
    return max(remove, 0)


def select_units(
    group: ChannelGroup,
    scores: np.ndarray,
    remove: int,
    round_to: int = 1,
    max_layer_ratio: float = 1.0,
) -> np.ndarray:
    """Keep-indices after removing up to ``remove`` free units of lowest score.

    Every space keeps at least one index. Where ``round_step`` gives a step > 1 (``round_to``
    > 1, or 0 on a wide group), the choice is then aligned (``align_keep``) so that every
    tensor axis keeps a multiple of it.
    """
    if remove <= 0:
        return np.arange(group.num_units)
    counts = unit_counts(group)
    remaining = counts.sum(axis=1)
    free = group.prunable_units
    order = free[np.argsort(scores[free], kind="stable")]
    removed: list[int] = []
    for unit in order:
        if len(removed) >= remove:
            break
        after = remaining - counts[:, unit]
        if (after <= 0).any():
            continue
        remaining = after
        removed.append(int(unit))
    keep = np.ones(group.num_units, dtype=bool)
    keep[removed] = False
    kept = np.nonzero(keep)[0]
    step = round_step(group, round_to)
    if step > 1 and group.unit_width == 1:
        return align_keep(group, scores, kept, step, max_layer_ratio)
    return kept


def unit_classes(group: ChannelGroup) -> list[np.ndarray]:
    """Units partitioned by the set of spaces holding them.

    A Concat or Split puts each producer's channels in their own class; a space's width
    is the sum of its classes' kept counts, so aligning every class aligns every space.
    """
    present = unit_counts(group) > 0
    classes: dict[bytes, list[int]] = {}
    for unit in range(group.num_units):
        classes.setdefault(present[:, unit].tobytes(), []).append(unit)
    return [np.asarray(units) for units in classes.values()]


def align_keep(
    group: ChannelGroup,
    scores: np.ndarray,
    kept: np.ndarray,
    step: int,
    max_layer_ratio: float,
) -> np.ndarray:
    """``kept`` with each unit class's count rounded to a multiple of ``step``.

    Why: a width-level rounding of the whole group leaves the segments of a Concat or
    Split at any count (63, 117, ...), and ONNX Runtime's blocked CPU Conv (NCHWc, 8 or
    16 channels a block) then pads the outputs or falls back to the plain kernel with
    layout reorders around it: the removed channels save no time. Within a class the
    lowest-scoring free units go first; a class smaller than ``step``, or one whose
    frozen units or ``max_layer_ratio`` cap forbid every multiple, keeps its count.
    """
    is_kept = np.zeros(group.num_units, dtype=bool)
    is_kept[kept] = True
    frozen = group.unit_frozen
    result = np.zeros(group.num_units, dtype=bool)
    for units in unit_classes(group):
        size = len(units)
        now = int(is_kept[units].sum())
        lowest = max(
            int(frozen[units].sum()), size - int(math.floor(max_layer_ratio * size + 1e-9))
        )
        target = _aligned_count(now, size, step, max(lowest, 1))
        order = units[np.argsort(-np.where(frozen[units], np.inf, scores[units]), kind="stable")]
        result[order[:target]] = True
    return np.nonzero(result)[0]


def _aligned_count(now: int, size: int, step: int, lowest: int) -> int:
    """The multiple of ``step`` nearest ``now`` in [lowest, size], else ``now`` itself.

    An untouched class (``now == size``) stays whole: its width is the input's.
    """
    if now == size:
        return size
    choices = [k for k in range(step, size + 1, step) if k >= lowest]
    if not choices:
        return now
    return min(choices, key=lambda k: (abs(k - now), -k))

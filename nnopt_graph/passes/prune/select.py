"""Which units of a channel group go: how many at a ratio, and the lowest-scoring free ones."""

from __future__ import annotations

__all__ = ["removal_count", "select_units", "unit_counts"]

import math

import numpy as np

from nnopt_graph.analysis.channels import ChannelGroup


def unit_counts(group: ChannelGroup) -> np.ndarray:
    """[spaces, units]: indices each unit holds in each space."""
    return np.stack([np.bincount(s.unit_of, minlength=group.num_units) for s in group.spaces])


def removal_count(group: ChannelGroup, ratio: float, max_layer_ratio: float, round_to: int) -> int:
    """Units to remove from a group at ``ratio``, capped and rounded to ``round_to`` widths."""
    units = group.num_units
    max_remove = min(int(math.floor(max_layer_ratio * units + 1e-9)), len(group.prunable_units))
    remove = min(int(math.floor(ratio * units + 0.5)), max_remove)
    step = round_to
    if step > 1 and group.unit_width == 1 and remove > 0:
        kept = int(math.floor((units - remove) / step + 0.5)) * step
        kept = min(max(kept, step), units)
        if units - kept > max_remove:
            kept = min(units, int(math.ceil((units - max_remove) / step)) * step)
        remove = units - kept
    return max(remove, 0)


def select_units(group: ChannelGroup, scores: np.ndarray, remove: int) -> np.ndarray:
    """Keep-indices after removing up to ``remove`` free units of lowest score.

    Every space keeps at least one index.
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
    return np.nonzero(keep)[0]

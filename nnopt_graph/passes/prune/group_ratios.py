"""Per-group ratios given by the user: ``group-ratios="*.attn.*=0.5,*.ffn.*=0.125"``.

Users who know their model (or who explore the fidelity/latency frontier, as
bench/prune_zoo_frontier.py does) set some groups' ratios by hand. Patterns are
shell-style globs matched against the group names the pass reports (its primary layer's
node name, e.g. ``encoder.layer.1.attn.query.matmul``); the first pattern that matches a
group wins, and groups no pattern matches keep the pass's own allocation.
"""

from __future__ import annotations

__all__ = ["GroupRatio", "match_group_ratios", "parse_group_ratios", "scale_group_ratios"]

import dataclasses
import fnmatch
import math
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class GroupRatio:
    """One ``pattern=ratio`` entry."""

    pattern: str
    ratio: float


def parse_group_ratios(text: str) -> list[GroupRatio]:
    """The entries of a ``group-ratios`` value, in order.

    Raises:
        ValueError: an entry is not ``pattern=ratio`` or its ratio is not in [0, 1).
    """
    entries: list[GroupRatio] = []
    for part in text.split(","):
        item = part.strip()
        if not item:
            continue
        pattern, sep, value = item.rpartition("=")
        pattern = pattern.strip()
        if not sep or not pattern:
            raise ValueError(f"group-ratios entry '{item}' is not pattern=ratio")
        try:
            ratio = float(value)
        except ValueError:
            raise ValueError(f"group-ratios entry '{item}': '{value}' is not a number") from None
        if not math.isfinite(ratio) or not 0.0 <= ratio < 1.0:
            raise ValueError(f"group-ratios entry '{item}': ratio {value} is outside [0, 1)")
        entries.append(GroupRatio(pattern, ratio))
    return entries


def match_group_ratios(
    entries: Sequence[GroupRatio], names: Sequence[str]
) -> tuple[dict[str, GroupRatio], list[str]]:
    """(per matched name, its first matching entry), and the patterns matching no name."""
    matched: dict[str, GroupRatio] = {}
    used: set[str] = set()
    for name in names:
        for entry in entries:
            if fnmatch.fnmatchcase(name, entry.pattern):
                matched[name] = entry
                used.add(entry.pattern)
                break
    unused = [e.pattern for e in entries if e.pattern not in used]
    return matched, unused


def scale_group_ratios(text: str, factor: float) -> str:
    """The same entries with every ratio times ``factor`` (the pass's back-off)."""
    return ",".join(f"{e.pattern}={round(e.ratio * factor, 6):g}" for e in parse_group_ratios(text))

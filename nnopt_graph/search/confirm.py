"""The confirmation stage: re-time the shortlist, the preset and the input in one run, then pick.

The search ranks candidates by a modelled latency (search.modelled: deterministic, but a
model); each candidate's latency was also measured once, alone, at whatever load the
machine had at that moment, and on a shared machine those figures are off by more than the
differences between candidates. Before best.onnx is chosen, the k fastest candidates of the
front by the modelled latency, the fastest candidate meeting the guard by its own measured
figure (when not among them: a hedge against the model's errors), the target preset
(always, so best is never measurably slower than it), a second session of the reference
(the A-vs-A noise band) and the input are timed together in one interleaved windowed run,
and best is the fastest of that run. The run is in the driver
process, also under ``--ray``: there the driver should be a machine of the target kind (or
``--confirm 0`` keeps the workers' per-candidate figures).
"""

from __future__ import annotations

__all__ = [
    "CONFIRM_DEFAULT",
    "Confirmation",
    "Timer",
    "confirm_best",
    "default_timer",
    "shortlist",
]

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

logger = logging.getLogger(__name__)

# Candidates of the front re-timed besides the preset (0 = no confirmation stage).
CONFIRM_DEFAULT = 3
# >= 20 windows of >= 50 ms, >= 2 s of the reference in all, 2 threads.
CONFIRM_PROTOCOL: dict[str, Any] = {
    "runs": 20,
    "warmup": 3,
    "threads": 2,
    "min_seconds": 2.0,
    "window_seconds": 0.05,
}

# paths (the first is the reference), one feed -> runtime.quant_bench.LatencyComparison
Timer = Callable[[list[str], Mapping[str, Any]], Any]


def default_timer(paths: list[str], feed: Mapping[str, Any]) -> Any:
    """The interleaved windowed run of ``CONFIRM_PROTOCOL`` (runtime.quant_bench)."""
    from nnopt_graph.runtime.quant_bench import compare_latency

    return compare_latency(paths, feed, **CONFIRM_PROTOCOL)


@dataclasses.dataclass
class Confirmation:
    """What the confirmation run measured and chose.

    Attributes:
        best: the record chosen as best.onnx (the fastest of the run, ties to the reference).
        reference: the pipeline every ratio is relative to (the preset when it met the guard).
        entries: per timed model, fastest first: ``pipeline``, ``role`` (preset, candidate),
            ``first_ratio`` (the candidate's own measured latency / input), ``modelled``
            (its modelled latency / input), ``ratio`` (min/median/max of
            per-window model / reference), ``vs_input`` (median ratio / the input's) and
            ``score`` (what ranks it: its median, the reference's is min(1, A-vs-A median)).
        noise: A-vs-A, the reference against a second session of itself (min/median/max),
            or None when the run was skipped.
        windows: windows timed (0 when only one model could be chosen: nothing re-timed).
    """

    best: dict[str, Any]
    reference: str
    entries: list[dict[str, Any]]
    noise: dict[str, float] | None
    windows: int

    def to_json(self) -> dict[str, Any]:
        """The confirmation as recorded in front.json."""
        return {
            "best": self.best["pipeline"],
            "reference": self.reference,
            "windows": self.windows,
            "noise_a_vs_a": self.noise,
            "protocol": CONFIRM_PROTOCOL,
            "entries": self.entries,
        }


def _feasible(record: Mapping[str, Any]) -> bool:
    return record.get("status") == "ok" and bool(record.get("guard_passed"))


def _first(record: Mapping[str, Any]) -> float:
    return float(record["latency_ratio"]["median"])


def shortlist(
    front: Sequence[dict[str, Any]],
    preset: dict[str, Any] | None,
    k: int,
    measured: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The models to re-time: the preset, the k fastest of the front, the measured pick.

    The preset comes first when it met the guard (not counted among the k); the front's
    candidates are ranked by the modelled latency (outputs.rank_key); ``measured`` (the
    fastest candidate by its own measured figure) is added last when it is not already
    there. Candidates that did not meet the guard are never shortlisted.
    """
    from nnopt_graph.search.outputs import rank_key

    chosen: list[dict[str, Any]] = []
    if preset is not None and _feasible(preset):
        chosen.append(preset)
    others = sorted(
        (r for r in front if _feasible(r) and r is not preset and r["pipeline"] != _name(preset)),
        key=rank_key,
    )
    chosen += others[: max(0, k)]
    if (
        measured is not None
        and k > 0
        and _feasible(measured)
        and measured["pipeline"] not in {r["pipeline"] for r in chosen}
    ):
        chosen.append(measured)
    return chosen


def _modelled(record: Mapping[str, Any]) -> float | None:
    value = (record.get("modelled") or {}).get("ratio")
    return float(value) if isinstance(value, (int, float)) else None


def _name(record: Mapping[str, Any] | None) -> str | None:
    return None if record is None else str(record["pipeline"])


def confirm_best(
    front: Sequence[dict[str, Any]],
    preset: dict[str, Any] | None,
    k: int,
    input_path: str,
    feed: Mapping[str, Any],
    timer: Timer = default_timer,
    measured: dict[str, Any] | None = None,
) -> Confirmation | None:
    """Re-time the shortlist with the input in one run and choose best.onnx from it.

    Args:
        front: the Pareto-front records meeting the guard.
        preset: the target preset's record (or None when it was not evaluated).
        k: candidates of the front besides the preset.
        input_path: the input model (timed last, for the ratios to the input).
        feed: one input feed.
        timer: ``timer(paths, feed)`` -> an object with ``ratio`` (per path, min/median/max
            of per-window time / the first path's) and ``runs`` (windows).
        measured: the fastest candidate meeting the guard by its own measured figure,
            re-timed too when the shortlist does not hold it.

    Returns:
        The confirmation, or None when no model meets the guard (then no best.onnx).
    """
    models = shortlist(front, preset, k, measured)
    if not models:
        return None
    reference = models[0]
    role = {id(preset): "preset"} if preset is not None else {}
    if len(models) == 1:
        entry = {
            "pipeline": reference["pipeline"],
            "role": role.get(id(reference), "candidate"),
            "first_ratio": _first(reference),
            "modelled": _modelled(reference),
            "ratio": None,
            "vs_input": None,
        }
        logger.info("confirmation: one model meets the guard, nothing re-timed")
        return Confirmation(reference, reference["pipeline"], [entry], None, 0)
    # reference, the reference again (A-vs-A), the others, the input.
    paths = [reference["model"], reference["model"]] + [m["model"] for m in models[1:]]
    paths.append(input_path)
    timing = timer(paths, feed)
    ratios = list(timing.ratio)
    input_median = float(ratios[-1]["median"])
    per_model = [ratios[0]] + ratios[2:-1]
    entries = []
    for m, r in zip(models, per_model, strict=True):
        entries.append(
            {
                "pipeline": m["pipeline"],
                "role": role.get(id(m), "candidate"),
                "first_ratio": _first(m),
                "modelled": _modelled(m),
                "ratio": {key: float(r[key]) for key in ("min", "median", "max")},
                "vs_input": float(r["median"]) / input_median if input_median > 0 else None,
            }
        )
    noise = {key: float(ratios[1][key]) for key in ("min", "median", "max")}
    # The reference counts as the faster of its two sessions: a candidate must beat the
    # reference by more than the A-vs-A copy read off it. Then the fastest median wins;
    # a tie goes to the earlier model (the reference first).
    for i, entry in enumerate(entries):
        entry["score"] = min(1.0, noise["median"]) if i == 0 else entry["ratio"]["median"]
    order = sorted(range(len(models)), key=lambda i: (entries[i]["score"], i))
    best = models[order[0]]
    logger.info(
        "confirmation: %s fastest of %d re-timed (x%.3f of %s; A-vs-A %.3f)",
        best["pipeline"],
        len(models),
        entries[order[0]]["ratio"]["median"],
        reference["pipeline"],
        noise["median"],
    )
    return Confirmation(
        best, reference["pipeline"], [entries[i] for i in order], noise, int(timing.runs)
    )

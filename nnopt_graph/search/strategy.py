"""Search strategies: Optuna multi-objective TPE or NSGA-II (seeded, warm-started), random, grid."""

from __future__ import annotations

__all__ = [
    "STRATEGIES",
    "GridStrategy",
    "OptunaStrategy",
    "make_strategy",
    "objectives",
    "warm_start",
]

import logging
import math
from typing import Any

from nnopt_graph.search.space import SearchSpace

logger = logging.getLogger(__name__)

# Objectives, all minimized: modelled latency ratio to the input (search.modelled, not the
# timed figure: deterministic, so the same seed asks the same candidates everywhere),
# 1 - worst cosine, size in bytes.
OBJECTIVE_NAMES = ("modelled_latency_ratio", "one_minus_worst_cosine", "size")
STRATEGIES = ("tpe", "nsga2", "random", "grid")
# At most this many corner candidates in the warm start (a space with several unordered
# stages has a product of their variants there); the sampler explores the rest.
CORNER_LIMIT = 8


def objectives(record: dict[str, Any]) -> tuple[float, float, float] | None:
    """A record's objective values (all minimized), or None when it has none.

    The worst cosine comes from ONNX Runtime's CPU EP at fixed threads on byte-identical
    models, so it is the same wherever the candidate was built (tests/search check it
    bit for bit); it is used as measured, not rounded.
    """
    if record.get("status") != "ok":
        return None
    modelled = (record.get("modelled") or {}).get("ratio")
    if not isinstance(modelled, (int, float)):
        return None
    worst = record.get("worst") or {}
    cosine = worst.get("cosine")
    cos = float(cosine) if isinstance(cosine, (int, float)) and math.isfinite(cosine) else 0.0
    return (float(modelled), 1.0 - cos, float(record["size"]))


def _constraints(trial: Any) -> list[float]:
    # <= 0 is feasible: a candidate meeting the guard.
    return [float(trial.user_attrs.get("violation", 1.0))]


def warm_start(space: SearchSpace) -> list[dict[str, str]]:
    """The presets, the aggressive corner's first candidate, the middle, the corner's rest.

    Why the corner: every lossy pass backs off or rolls back when it would break the guard,
    so even the most aggressive candidates usually meet it, and they give the fastest
    feasible models more often than not. Why the middle (``space.middle``): when the corner
    fails the guard or is slow (rapidocr-rec: prune 0.5 is over the guard, the fast models
    are at 0.2-0.4), TPE told only the two ends samples the middle last. So after the
    presets (the target preset first, then the lossless default) come the corner candidate
    with the target preset's variants, the middle candidate, then the corner's other
    variants (``space.most_lossy``; at most ``CORNER_LIMIT`` corner candidates), and the
    sampler takes over from there. The order was chosen by replaying TPE against six
    evaluated grids (bench/search_warm_ablation.py; the middle probe moved rapidocr-rec's
    48-candidate space from 7.8 to 4.0 trials to within 5% of the re-timed best, digits'
    from 4.0 to 5.0).
    It depends on the space only (no model, no seed).
    """
    out: list[dict[str, str]] = []
    presets = space.preset_choices()
    lead = presets[0] if presets else None
    corner = space.most_lossy(lead)[:CORNER_LIMIT]
    for choice in presets + corner[:1] + [space.middle(lead)] + corner[1:]:
        if choice not in out:
            out.append(choice)
    return out


class OptunaStrategy:
    """Asks Optuna for candidates and tells it their results (ask-and-tell, batch by batch).

    ``tpe``: multivariate multi-objective TPE; ``nsga2``: NSGA-II with a small population;
    ``random``: Optuna's seeded random sampler (no warm start: the baseline). TPE and
    NSGA-II take the guard as a constraint and start with the warm-start candidates (the
    presets, the aggressive corner, the middle; see ``warm_start``); TPE's startup trials are
    exactly those, so its model-based asks begin right after. An ordered stage (prune
    ratio, 2:4) is asked as an integer index, so the sampler sees that 0.3 lies between
    0.2 and 0.4.
    """

    def __init__(self, space: SearchSpace, seed: int, kind: str = "tpe") -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.space = space
        self._optuna = optuna
        # Optuna >= 5 takes constraints from Trial.set_constraint; older ones from a function.
        self._set_constraint = hasattr(optuna.trial.Trial, "set_constraint")
        extra: dict[str, Any] = {} if self._set_constraint else {"constraints_func": _constraints}
        warm = warm_start(space) if kind != "random" else []
        sampler: Any
        if kind == "tpe":
            sampler = optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=max(1, len(warm)), multivariate=True, **extra
            )
        elif kind == "nsga2":
            population = max(4, min(16, space.size // 4))
            sampler = optuna.samplers.NSGAIISampler(seed=seed, population_size=population, **extra)
        elif kind == "random":
            sampler = optuna.samplers.RandomSampler(seed=seed)
        else:
            raise ValueError(f"unknown strategy {kind!r}")
        self.study = optuna.create_study(directions=["minimize"] * 3, sampler=sampler)
        for choice in warm:
            self.study.enqueue_trial(self._params(choice))

    def _params(self, choice: dict[str, str]) -> dict[str, Any]:
        return {
            name: choices.index(choice[name]) if name in self.space.ordered else choice[name]
            for name, choices in self.space.stages
        }

    def ask(self) -> tuple[Any, dict[str, str]]:
        """The next trial and its candidate (stage name -> choice)."""
        trial = self.study.ask()
        choice = {}
        for name, choices in self.space.stages:
            if name in self.space.ordered:
                choice[name] = choices[trial.suggest_int(name, 0, len(choices) - 1)]
            else:
                choice[name] = trial.suggest_categorical(name, list(choices))
        return trial, choice

    def tell(self, trial: Any, record: dict[str, Any]) -> None:
        """Report a candidate's record: failed or skipped candidates fail the trial."""
        values = objectives(record)
        if values is None:
            self.study.tell(trial, state=self._optuna.trial.TrialState.FAIL)
            return
        violation = 0.0 if record.get("guard_passed") else 1.0
        trial.set_user_attr("violation", violation)
        if self._set_constraint:
            trial.set_constraint("guard", violation)
        self.study.tell(trial, list(values))


class GridStrategy:
    """Every candidate of the full grid in its fixed order (a baseline; deterministic)."""

    def __init__(self, space: SearchSpace) -> None:
        self._order = list(space.candidates())
        self._next = 0

    def ask(self) -> tuple[Any, dict[str, str]]:
        """The next candidate of the grid (wrapping round when all were asked)."""
        choice = self._order[self._next % len(self._order)]
        self._next += 1
        return None, dict(choice)

    def tell(self, trial: Any, record: dict[str, Any]) -> None:
        """Nothing to learn."""


def make_strategy(
    space: SearchSpace, seed: int, kind: str = "tpe"
) -> OptunaStrategy | GridStrategy:
    """The strategy named ``kind`` (one of STRATEGIES)."""
    if kind == "grid":
        return GridStrategy(space)
    return OptunaStrategy(space, seed, kind)

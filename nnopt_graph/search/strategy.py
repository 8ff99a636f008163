"""The search strategy: Optuna's multi-objective TPE, seeded, warm-started with the presets."""

from __future__ import annotations

__all__ = ["OptunaStrategy", "objectives"]

import logging
import math
from typing import Any

from nnopt_graph.search.space import SearchSpace

logger = logging.getLogger(__name__)

# Objectives, all minimized: latency ratio to the input, 1 - worst cosine, size in bytes.
OBJECTIVE_NAMES = ("latency_ratio", "one_minus_worst_cosine", "size")


def objectives(record: dict[str, Any]) -> tuple[float, float, float] | None:
    """A record's objective values (all minimized), or None when it has none."""
    if record.get("status") != "ok":
        return None
    worst = record.get("worst") or {}
    cosine = worst.get("cosine")
    cos = float(cosine) if isinstance(cosine, (int, float)) and math.isfinite(cosine) else 0.0
    return (float(record["latency_ratio"]["median"]), 1.0 - cos, float(record["size"]))


def _constraints(trial: Any) -> list[float]:
    # <= 0 is feasible: a candidate meeting the guard.
    return [float(trial.user_attrs.get("violation", 1.0))]


class OptunaStrategy:
    """Asks Optuna for candidates and tells it their results (ask-and-tell, batch by batch)."""

    def __init__(self, space: SearchSpace, seed: int) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.space = space
        self._optuna = optuna
        # Optuna >= 5 takes constraints from Trial.set_constraint; older ones from a function.
        self._set_constraint = hasattr(optuna.trial.Trial, "set_constraint")
        extra: dict[str, Any] = {} if self._set_constraint else {"constraints_func": _constraints}
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=4, **extra)
        self.study = optuna.create_study(directions=["minimize"] * 3, sampler=sampler)
        for preset in space.preset_choices():
            self.study.enqueue_trial(preset)

    def ask(self) -> tuple[Any, dict[str, str]]:
        """The next trial and its candidate (stage name -> choice)."""
        trial = self.study.ask()
        choice = {
            name: trial.suggest_categorical(name, list(choices))
            for name, choices in self.space.stages
        }
        return trial, choice

    def tell(self, trial: Any, record: dict[str, Any]) -> None:
        """Report a candidate's record: failed candidates fail the trial."""
        values = objectives(record)
        if values is None:
            self.study.tell(trial, state=self._optuna.trial.TrialState.FAIL)
            return
        violation = 0.0 if record.get("guard_passed") else 1.0
        trial.set_user_attr("violation", violation)
        if self._set_constraint:
            trial.set_constraint("guard", violation)
        self.study.tell(trial, list(values))

"""The pass manager: runs passes in order, with instruments around each."""

from __future__ import annotations

__all__ = ["Instrument", "PassManager", "PassRecord"]

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

import onnx_ir as ir

from nnopt_graph.core import progress
from nnopt_graph.errors import NnoptError, PassFailedError
from nnopt_graph.pipeline.base import Pass, PassContext, PassResult, is_skip_stat
from nnopt_graph.pipeline.grammar import Pipeline, option_fields

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class PassRecord:
    """What one pass of a run did, as the report shows it."""

    name: str
    options: dict[str, Any]
    modified: bool
    stats: dict[str, int]
    seconds: float
    fidelity: dict[str, Any] | None = None
    decisions: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    guard_action: str | None = None
    # applied | backed off | rolled back | skipped (lossy passes); changed | unchanged.
    outcome: str = "unchanged"
    outcome_detail: str = ""
    notes: list[str] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The report's per-pass entry."""
        return dataclasses.asdict(self)


class Instrument:
    """Hooks around each pass; instruments may print (passes may not)."""

    def before_pass(self, pass_: Pass, model: ir.Model) -> None:  # noqa: B027  (optional hook)
        """Called before a pass runs."""

    def after_pass(self, pass_: Pass, model: ir.Model, record: PassRecord) -> None:  # noqa: B027
        """Called after a pass ran and its postconditions held."""

    def after_pipeline(self, model: ir.Model, records: list[PassRecord]) -> None:  # noqa: B027
        """Called once all passes ran."""


def _options_dict(pass_: Pass) -> dict[str, Any]:
    return {key: getattr(pass_.options, f.name) for key, f, _ in option_fields(type(pass_))}


def _changed_options(before: Pass, after: Pass) -> str:
    old, new = _options_dict(before), _options_dict(after)
    diff = [f"{k}={new[k]}" for k in new if new[k] != old.get(k)]
    return " ".join(diff) or "a weaker setting"


def _stats_text(stats: dict[str, int], limit: int = 4) -> str:
    changes = [(k, v) for k, v in stats.items() if v and not is_skip_stat(k)]
    return ", ".join(f"{k} {v}" for k, v in changes[:limit])


def _skip_reason(result: PassResult) -> str:
    if result.notes:
        return "; ".join(result.notes)
    skips = [
        f"{k[len('skipped-') :]} ({v})" for k, v in result.stats.items() if v and is_skip_stat(k)
    ]
    return "nothing to do" + (f": skipped {', '.join(skips)}" if skips else "")


def _figures(outcome: Any) -> str:
    values = "; ".join(
        f"{name} {value:.6g}" for name, value in outcome.values.items() if value == value
    )
    return f"{values} over {outcome.samples} held-out samples"


class PassManager:
    """Runs a pipeline's passes on a model, recording each one.

    Passes change the model in place. A lossy pass run under a guard works on the model
    too, but when the guard rejects it the manager restores a snapshot taken before the
    pass (or tries the pass's weaker ``back_off()`` version): after ``run`` the final
    model is ``self.model``, which is a different object after a rollback.
    """

    def __init__(
        self,
        pipeline: Pipeline | Sequence[Pass],
        *,
        context: PassContext | None = None,
        instruments: Sequence[Instrument] = (),
        guard: Any = None,
    ) -> None:
        if isinstance(pipeline, Pipeline):
            self.passes = [spec.instantiate() for spec in pipeline.passes]
        else:
            self.passes = list(pipeline)
        self.context = context or PassContext()
        self.instruments = list(instruments)
        self.guard = guard
        self.model: ir.Model | None = None

    def _run_one(self, pass_: Pass, model: ir.Model, done: list[str]) -> PassResult:
        try:
            pass_.requires(model)
            result = pass_.run(model, self.context)
            if not isinstance(result, PassResult):
                raise TypeError(f"run() returned {type(result).__name__}, not PassResult")
            pass_.ensures(model)
        except NnoptError:
            raise
        except Exception as exc:
            logger.debug("pass %s raised", pass_.name, exc_info=True)
            raise PassFailedError(pass_.name, done, f"{type(exc).__name__}: {exc}") from exc
        return result

    def _run_guarded(
        self, pass_: Pass, model: ir.Model, done: list[str]
    ) -> tuple[ir.Model, Pass, PassResult, dict[str, Any] | None, str, str]:
        """Run a lossy pass under the guard, backing off or rolling back on failure.

        Returns (model, the attempt kept, its result, guard figures, outcome, detail):
        outcome is applied, backed off (detail: to what, and what the stronger setting
        failed), rolled back (the figures that broke the budget) or skipped.
        """
        snapshot = model.clone()
        attempt = pass_
        first_failure: str | None = None
        while True:
            result = self._run_one(attempt, model, done)
            if not result.modified:
                if attempt is pass_:
                    return model, attempt, result, None, "skipped", _skip_reason(result)
                # The weaker setting changed nothing: the same as rolling back.
                result.decisions.append({"guard": "rolled back", "failed": first_failure})
                detail = f"{first_failure}; weaker settings changed nothing"
                return snapshot, attempt, result, None, "rolled back", detail
            outcome = self.guard.measure(model)
            if outcome.passed:
                changes = _stats_text(result.stats)
                if attempt is pass_:
                    detail = f"{changes}; {_figures(outcome)}"
                    action = "applied"
                else:
                    detail = (
                        f"to {_changed_options(pass_, attempt)} ({changes}; {_figures(outcome)}) "
                        f"because the requested setting failed {first_failure}"
                    )
                    action = "backed off"
                logger.info("guard: %s %s (%s)", attempt.name, action, outcome.values)
                return model, attempt, result, outcome.to_json(), action, detail
            failure = "; ".join(outcome.failed)
            first_failure = first_failure or failure
            logger.info("guard: %s fails %s", attempt.name, failure)
            weaker = attempt.back_off()
            model = snapshot.clone()
            if weaker is None:
                result.stats = {k: 0 for k in result.stats}
                result.decisions.append({"guard": "rolled back", "failed": outcome.failed})
                detail = (
                    first_failure
                    if attempt is pass_
                    else (f"{first_failure}; the weakest setting still failed {failure}")
                )
                return model, attempt, result, outcome.to_json(), "rolled back", detail
            attempt = weaker

    def run(self, model: ir.Model) -> list[PassRecord]:
        """Run every pass in order; the final model is then ``self.model``.

        Raises:
            PassFailedError: a pass raised or its pre/postconditions failed; the error
                names it and the passes that ran before it.
        """
        records: list[PassRecord] = []
        done: list[str] = []
        for pass_ in self.passes:
            for instrument in self.instruments:
                instrument.before_pass(pass_, model)
            start = time.perf_counter()
            fidelity = None
            action = None
            ran = pass_
            label = f"pass {len(done) + 1}/{len(self.passes)} {pass_.name}"
            if pass_.lossy and self.guard is not None:
                with progress.step(label):
                    model, ran, result, fidelity, action, detail = self._run_guarded(
                        pass_, model, done
                    )
                outcome = action
            else:
                with progress.step(label):
                    result = self._run_one(pass_, model, done)
                outcome = "changed" if result.modified else "unchanged"
                detail = _stats_text(result.stats) if result.modified else ""
                if pass_.lossy and not result.modified:
                    outcome, detail = "skipped", _skip_reason(result)
                elif pass_.lossy:
                    outcome = "applied"
            record = PassRecord(
                name=pass_.name,
                options=_options_dict(ran),
                modified=result.modified,
                stats=dict(result.stats),
                seconds=time.perf_counter() - start,
                fidelity=fidelity,
                decisions=list(result.decisions),
                guard_action=action,
                outcome=outcome,
                outcome_detail=detail,
                notes=list(result.notes),
            )
            logger.info("pass %s: %s", pass_.name, record.stats)
            try:
                for instrument in self.instruments:
                    instrument.after_pass(pass_, model, record)
            except PassFailedError:
                raise
            except NnoptError as exc:
                raise PassFailedError(pass_.name, done, str(exc)) from exc
            records.append(record)
            done.append(pass_.name)
        for instrument in self.instruments:
            instrument.after_pipeline(model, records)
        self.model = model
        return records

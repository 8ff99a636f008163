"""The search job: ask the strategy, evaluate batches on an executor, write the front and best."""

from __future__ import annotations

__all__ = ["SearchResult", "pareto_front", "run_search"]

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

from nnopt_graph.errors import BadInputError, CheckFailedError
from nnopt_graph.search.cache import CandidateCache, candidate_key, file_sha256
from nnopt_graph.search.evaluate import blas_threads
from nnopt_graph.search.outputs import front_of, pareto_front, write_outputs
from nnopt_graph.search.space import SearchSpace, load_space

logger = logging.getLogger(__name__)

DEFAULT_TRIALS = 20
# Candidates asked per round before any of them is told. Fixed, not the worker count: the
# strategy's asks (and the guard-failure skips between rounds) depend on what it was told
# before each ask, so the same seed and batch ask the same candidates on 1 worker or 16,
# locally or on Ray. Up to this many are evaluated at once; --batch raises it.
ASK_BATCH = 2


@dataclasses.dataclass
class SearchResult:
    """What a search did for one model.

    Attributes:
        outdir: where front.json, front.md, front/, best.onnx and cache.jsonl are.
        records: every distinct candidate's record, in the order first asked; candidates
            skipped as at least as lossy as one that failed the guard come last
            (``status`` ``skipped``, with a ``reason``).
        front: the Pareto-front records (meeting the guard), fastest first by the
            modelled latency.
        best: the fastest record meeting the guard, or None.
        evaluated: candidates evaluated by this run (not taken from the cache).
        trials: Optuna trials asked (duplicates included).
        confirmation: the confirmation run best was chosen from (None when off or nothing
            met the guard).
    """

    outdir: Path
    records: list[dict[str, Any]]
    front: list[dict[str, Any]]
    best: dict[str, Any] | None
    evaluated: int
    trials: int
    confirmation: Any = None


def _check_inputs(model: Path, calib: Path, eval_data: Path | None) -> None:
    import onnx

    from nnopt_graph.core import io
    from nnopt_graph.runtime.data import input_specs, load_dataset

    for p in (model, calib, eval_data):
        if p is not None and not p.exists():
            raise BadInputError(f"{p}: no such file or folder")
    try:
        onnx.checker.check_model(str(model))
        specs = input_specs(io.load(model))
    except BadInputError:
        raise
    except Exception as exc:
        text = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise BadInputError(f"{model}: invalid model: {text}") from exc
    for p in (calib, eval_data):
        if p is not None:
            load_dataset(p, specs)


def _search_one(
    model: Path,
    outdir: Path,
    *,
    target: str,
    calib: Path,
    eval_data: Path | None,
    guard: str | None,
    trials: int | None,
    budget_minutes: float | None,
    space: SearchSpace,
    executor: Any,
    seed: int,
    confirm: int = 0,
    timer: Any = None,
    strategy_kind: str = "tpe",
    batch: int = ASK_BATCH,
) -> SearchResult:
    from nnopt_graph.search.strategy import make_strategy

    outdir.mkdir(parents=True, exist_ok=True)
    cache = CandidateCache(outdir)
    input_sha = file_sha256(model)
    assert input_sha is not None
    data_shas = [file_sha256(calib), file_sha256(eval_data)]
    strategy = make_strategy(space, seed, strategy_kind)
    limit = trials if trials is not None else (space.size if budget_minutes else DEFAULT_TRIALS)
    limit = min(limit, space.size)
    deadline = time.monotonic() + budget_minutes * 60 if budget_minutes else None
    threads = max(1, min(2, (os.cpu_count() or 1) // executor.workers))
    blas = blas_threads()
    seen: dict[str, dict[str, Any]] = {}
    # Candidates not evaluated: at least as lossy as one that failed the guard.
    skipped: dict[str, dict[str, Any]] = {}
    infeasible: list[tuple[dict[str, str], str]] = []
    evaluated = asked = 0
    max_asks = 20 * space.size

    def learn(choice: dict[str, str], record: dict[str, Any]) -> None:
        if record.get("status") == "ok" and not record.get("guard_passed"):
            infeasible.append((choice, record["pipeline"]))

    while len(seen) < limit and asked < max_asks and len(seen) + len(skipped) < space.size:
        if deadline is not None and time.monotonic() > deadline:
            logger.info("budget of %s minutes spent", budget_minutes)
            break
        # One round: ``batch`` distinct candidates asked, then all told, in the order asked.
        # A candidate found in the cache counts in the round and is told with the others,
        # as if evaluated now: a resumed run asks exactly what the first run asked.
        pending: dict[str, list[Any]] = {}
        asked_now: list[str] = []
        known: dict[str, dict[str, Any]] = {}
        jobs: dict[str, dict[str, Any]] = {}
        choices: dict[str, dict[str, str]] = {}
        while (
            len(asked_now) < batch
            and len(seen) + len(asked_now) < limit
            and asked < max_asks
            and len(seen) + len(skipped) + len(asked_now) < space.size
        ):
            trial, choice = strategy.ask()
            asked += 1
            text = space.pipeline(choice)
            if text in seen or text in skipped:
                strategy.tell(trial, seen.get(text) or skipped[text])
                continue
            if text in pending:
                pending[text].append(trial)
                continue
            worse = next((t for c, t in infeasible if space.at_least_as_lossy(choice, c)), None)
            if worse is not None:
                skipped[text] = {
                    "pipeline": text,
                    "status": "skipped",
                    "reason": f"at least as lossy as '{worse}', which failed the guard",
                }
                logger.info("candidate %s skipped: %s", text, skipped[text]["reason"])
                strategy.tell(trial, skipped[text])
                continue
            pending[text] = [trial]
            choices[text] = choice
            asked_now.append(text)
            key = candidate_key(input_sha, text, data_shas, target, guard)
            cached = cache.get(key)
            if cached is not None:
                known[text] = cached
                continue
            jobs[text] = {
                "input": str(model),
                "output": str(outdir / "candidates" / key[:16] / "model.onnx"),
                "pipeline": text,
                "target": target,
                "calib": str(calib),
                "eval": None if eval_data is None else str(eval_data),
                "guard": guard,
                "threads": threads,
                "blas_threads": blas,
                "seed": seed,
                "key": key,
            }
        if not asked_now:
            continue
        if jobs:
            for job, record in zip(jobs.values(), executor.map(list(jobs.values())), strict=True):
                record["model"] = job["output"] if record.get("status") == "ok" else None
                cache.put(job["key"], record)
                evaluated += 1
                known[job["pipeline"]] = record
                logger.info(
                    "candidate %s: %s", job["pipeline"], record.get("error") or record["status"]
                )
        for text in asked_now:
            record = known[text]
            seen[text] = record
            learn(choices[text], record)
            for trial in pending[text]:
                strategy.tell(trial, record)
    records = list(seen.values())
    front = front_of(records)
    records += list(skipped.values())
    confirmation = None
    if confirm > 0:
        from nnopt_graph.search.confirm import confirm_best, default_timer

        presets = space.preset_choices()
        preset = seen.get(space.pipeline(presets[0])) if presets else None
        feasible = [r for r in records if r.get("status") == "ok" and r.get("guard_passed")]
        measured = min(
            feasible,
            key=lambda r: (r["latency_ratio"]["median"], r["pipeline"]),
            default=None,
        )
        confirmation = confirm_best(
            front,
            preset,
            confirm,
            str(model),
            _feed(model, eval_data or calib),
            timer=timer or default_timer,
            measured=measured,
        )
    meta = {
        "input": str(model),
        "target": target,
        "guard": guard or "cosine.min>=0.99 (default)",
        "seed": seed,
        "strategy": strategy_kind,
        "trials_asked": asked,
        "evaluated": evaluated,
        "skipped": len(skipped),
        "space": space.to_json(),
    }
    best = write_outputs(outdir, records, meta, front, confirmation)
    return SearchResult(outdir, records, front, best, evaluated, asked, confirmation)


def _feed(model: Path, data: Path) -> dict[str, Any]:
    """The first sample of the data, the feed the confirmation run times every model on."""
    from nnopt_graph.core import io
    from nnopt_graph.runtime.data import input_specs, load_dataset

    return dict(next(load_dataset(data, input_specs(io.load(model))).batches(1)))


def run_search(
    model: str | os.PathLike[str],
    outdir: str | os.PathLike[str],
    *,
    target: str,
    calib: str | os.PathLike[str],
    eval_data: str | os.PathLike[str] | None = None,
    guard: str | None = None,
    trials: int | None = None,
    budget_minutes: float | None = None,
    space: str | os.PathLike[str] | None = None,
    ray: str | None = None,
    seed: int = 0,
    workers: int = 1,
    confirm: int | None = None,
    confirm_timer: Any = None,
    strategy: str = "tpe",
    batch: int = ASK_BATCH,
) -> list[SearchResult]:
    """Search the space for each model (a file, or every .onnx in a folder).

    A folder's models go to ``OUTDIR/<stem>/``. Each OUTDIR gets ``front.json``,
    ``front.md``, ``front/NN.onnx`` + ``NN.pipeline.txt``, ``best.onnx`` +
    ``best.pipeline.txt``, ``report.html`` (the front plotted) and ``cache.jsonl``
    (a re-run takes evaluated candidates from it).

    The strategy and the front rank candidates by their modelled latency
    (search.modelled: deterministic, so the same seed asks the same candidates and gives
    the same front on any executor); each candidate's latency is measured too. Before
    best.onnx is chosen, the ``confirm`` fastest candidates of the front by the model, the
    fastest by its measured figure, the target preset (the space's first preset) and the
    input are re-timed together in one interleaved windowed run (search.confirm), and best
    is the fastest of that run; 0 turns the stage off (best = the fastest by the model).
    ``batch`` candidates are asked per round and evaluated on up to ``workers`` at once:
    the candidates asked depend on the seed and the batch, not on the workers or executor.
    ``confirm_timer`` replaces the timed run (tests inject a deterministic one).

    Raises:
        BadInputError: unusable model, data, space, guard or options (exit 2).
        CheckFailedError: no candidate met the guard (exit 1; the front files are written).
    """
    from nnopt_graph.job import TARGETS
    from nnopt_graph.search.executors import make_executor

    if target not in TARGETS:
        raise BadInputError(f"unknown target '{target}' (choose from {', '.join(TARGETS)})")
    if trials is not None and trials < 1:
        raise BadInputError(f"--trials must be at least 1, not {trials}")
    if budget_minutes is not None and budget_minutes <= 0:
        raise BadInputError(f"--budget-minutes must be positive, not {budget_minutes}")
    if workers < 1:
        raise BadInputError(f"--workers must be at least 1, not {workers}")
    if batch < 1:
        raise BadInputError(f"--batch must be at least 1, not {batch}")
    if workers > batch:
        logger.warning(
            "--workers %d > --batch %d: at most %d candidates are evaluated at once",
            workers,
            batch,
            batch,
        )
    from nnopt_graph.search.confirm import CONFIRM_DEFAULT
    from nnopt_graph.search.strategy import STRATEGIES

    if strategy not in STRATEGIES:
        raise BadInputError(f"unknown strategy '{strategy}' (choose from {', '.join(STRATEGIES)})")

    confirm = CONFIRM_DEFAULT if confirm is None else confirm
    if confirm < 0:
        raise BadInputError(f"--confirm must be at least 0, not {confirm}")
    src = Path(model)
    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise BadInputError(f"{out}: exists and is not a folder")
    if src.is_dir():
        models = sorted(src.glob("*.onnx"))
        if not models:
            raise BadInputError(f"{src}: no .onnx model in this folder")
        targets = [(m, out / m.stem) for m in models]
    else:
        targets = [(src, out)]
    calib_p = Path(calib)
    eval_p = None if eval_data is None else Path(eval_data)
    for m, _ in targets:
        _check_inputs(m, calib_p, eval_p)
    if guard is not None:
        from nnopt_graph.check.guard import parse_guard

        parse_guard(guard)
    the_space = load_space(space, target)
    executor = make_executor(ray, target, workers)
    try:
        results = [
            _search_one(
                m,
                o,
                target=target,
                calib=calib_p,
                eval_data=eval_p,
                guard=guard,
                trials=trials,
                budget_minutes=budget_minutes,
                space=the_space,
                executor=executor,
                seed=seed,
                confirm=confirm,
                timer=confirm_timer,
                strategy_kind=strategy,
                batch=batch,
            )
            for m, o in targets
        ]
    finally:
        executor.close()
    failed = [r for r in results if r.best is None]
    if failed:
        parts = []
        for r in failed:
            skipped = sum(x.get("status") == "skipped" for x in r.records)
            broken = sum(x.get("status") not in ("ok", "skipped") for x in r.records)
            over = len(r.records) - broken - skipped
            parts.append(
                f"{r.outdir} ({len(r.records)} candidates: {over} over the guard, "
                f"{skipped} skipped as at least as lossy as one over it, "
                f"{broken} failed to build)"
            )
        raise CheckFailedError(
            f"no candidate met the guard, no best.onnx written: {'; '.join(parts)}; see front.json"
        )
    return results

"""One candidate: build it with ``optimize`` (verified, guarded), then size, fidelity, latency."""

from __future__ import annotations

__all__ = ["evaluate_candidate"]

import logging
import os
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def _size(folder: Path) -> int:
    """Bytes of the written model: the .onnx file and any external data beside it."""
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and p.suffix != ".json")


def evaluate_candidate(job: dict[str, Any]) -> dict[str, Any]:
    """Build, verify, guard and time one candidate; never raises for a failed candidate.

    Args:
        job: ``input``, ``output`` (the model path to write), ``pipeline``, ``target``,
            ``calib``, ``eval``, ``guard``, ``threads``, ``runs``, ``seed``.

    Returns:
        A JSON-ready record: ``status`` (``ok`` or ``failed``), ``size``, ``guard_passed``,
        ``worst`` (worst-sample fidelity), ``outcomes`` (per pass), ``latency_ratio``
        (candidate / input, median of per-round ratios, with min and max) and ``error``.
    """
    from nnopt_graph.errors import NnoptError, one_line
    from nnopt_graph.job import optimize
    from nnopt_graph.runtime.data import input_specs, load_dataset
    from nnopt_graph.runtime.quant_bench import compare_latency

    start = time.perf_counter()
    out = Path(job["output"])
    out.parent.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"pipeline": job["pipeline"], "status": "failed"}
    try:
        result = optimize(
            job["input"],
            out,
            job["pipeline"],
            target=job["target"],
            calib=job["calib"],
            eval_data=job.get("eval"),
            guard=job.get("guard"),
            seed=job.get("seed", 0),
        )
    except NnoptError as exc:
        record["error"] = one_line(exc)
        record["seconds"] = time.perf_counter() - start
        return record
    report = result.report
    fidelity = report.get("fidelity") or {}
    guard = report.get("guard") or {}
    record.update(
        status="ok",
        size=_size(out.parent),
        guard_expr=guard.get("expr"),
        # A lossless pipeline is verified equal to the input: it meets any guard.
        guard_passed=True if guard.get("passed") is None else bool(guard.get("passed")),
        worst=fidelity.get("worst"),
        # What the guard did to each lossy pass ("applied", "backed off", "rolled back", ...).
        outcomes={
            r.name: r.outcome for r in result.records if r.outcome not in ("unchanged", "changed")
        },
    )
    eval_path = job.get("eval") or job["calib"]
    dataset = load_dataset(Path(eval_path), input_specs(result.model))
    feed = next(dataset.batches(1))
    timing = compare_latency(
        [job["input"], str(out)],
        feed,
        runs=job.get("runs", 20),
        warmup=3,
        threads=job.get("threads", 1),
        min_seconds=job.get("min_seconds", 1.0),
    )
    record["latency_ratio"] = timing.ratio[1]
    record["latency_runs"] = timing.runs
    record["worker_pid"] = os.getpid()
    record["seconds"] = time.perf_counter() - start
    return record

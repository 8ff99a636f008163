"""One candidate: build it with ``optimize`` (verified, guarded), then size, fidelity, latency."""

from __future__ import annotations

__all__ = ["blas_threads", "evaluate_candidate"]

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Latency protocol of every candidate: >= 20 windows of >= 10 ms (each model's fastest
# run in a window of rotating runs), >= 0.5 s of the input model in all.
WINDOW_SECONDS = 0.01
MIN_SECONDS = 0.5


def blas_threads() -> int | None:
    """Threads of this process's BLAS (numpy's OpenBLAS/MKL), or None when unknown."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    counts = [int(i["num_threads"]) for i in threadpool_info() if i.get("user_api") == "blas"]
    return max(counts) if counts else None


@contextlib.contextmanager
def _pinned_blas(threads: int | None) -> Iterator[None]:
    """Run with numpy's BLAS on ``threads`` threads (no change when None).

    Float reductions in BLAS (the passes' refits and Hessians) split differently over a
    different thread count, so the same pipeline writes other bytes in the last bit. A Ray
    worker starts with one BLAS thread (Ray sets OMP_NUM_THREADS=1), a local process with
    one per core: the search pins every evaluation to the driver's count.
    """
    if threads is None:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        logger.warning("threadpoolctl is missing: BLAS threads not pinned to %d", threads)
        yield
        return
    with threadpool_limits(limits=threads, user_api="blas"):
        yield


def _size(folder: Path) -> int:
    """Bytes of the written model: the .onnx file and any external data beside it."""
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and p.suffix != ".json")


def evaluate_candidate(job: dict[str, Any]) -> dict[str, Any]:
    """Build, verify, guard and time one candidate; never raises for a failed candidate.

    Args:
        job: ``input``, ``output`` (the model path to write), ``pipeline``, ``target``,
            ``calib``, ``eval``, ``guard``, ``threads`` (latency), ``runs``, ``seed`` and
            ``blas_threads`` (numpy's BLAS threads while building; None leaves them).

    Returns:
        A JSON-ready record: ``status`` (``ok`` or ``failed``), ``size``, ``guard_passed``,
        ``worst`` (worst-sample fidelity), ``outcomes`` (per pass), ``modelled``
        (search.modelled: the deterministic modelled latency / the input's, what the
        strategy and the front rank by), ``latency_ratio`` (measured: candidate / input,
        median of per-window ratios, with min and max) and ``error``.
    """
    from nnopt_graph.errors import NnoptError, one_line
    from nnopt_graph.job import optimize
    from nnopt_graph.runtime.data import input_specs, load_dataset
    from nnopt_graph.runtime.quant_bench import compare_latency
    from nnopt_graph.search.modelled import modelled_ratio

    start = time.perf_counter()
    out = Path(job["output"])
    out.parent.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"pipeline": job["pipeline"], "status": "failed"}
    try:
        with _pinned_blas(job.get("blas_threads")):
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
    try:
        record["modelled"] = modelled_ratio(
            out, job["input"], {k: list(v.shape) for k, v in feed.items()}
        )
    except Exception as exc:  # noqa: BLE001  (no figure: the strategy is told a failed trial)
        logger.warning("candidate %s: no modelled latency: %s", job["pipeline"], exc)
        record["modelled"] = {"ratio": None, "error": one_line(exc)}
    timing = compare_latency(
        [job["input"], str(out)],
        feed,
        runs=job.get("runs", 20),
        warmup=3,
        threads=job.get("threads", 1),
        min_seconds=job.get("min_seconds", MIN_SECONDS),
        window_seconds=job.get("window_seconds", WINDOW_SECONDS),
    )
    record["latency_ratio"] = timing.ratio[1]
    record["latency_runs"] = timing.runs
    record["worker_pid"] = os.getpid()
    record["seconds"] = time.perf_counter() - start
    return record

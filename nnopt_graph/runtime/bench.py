"""Latency benchmark of several models on ONNX Runtime execution providers, interleaved."""

from __future__ import annotations

__all__ = ["BenchResult", "benchmark"]

import dataclasses
import logging
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from nnopt_graph.core.io import load
from nnopt_graph.errors import BadInputError
from nnopt_graph.runtime.data import input_specs, random_dataset, resolve_shapes
from nnopt_graph.runtime.session import available_eps, create_session

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class BenchResult:
    """One model on one execution provider."""

    model: str
    ep: str
    available: bool
    runs: int = 0
    load_s: float | None = None
    latency_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    throughput_per_s: float | None = None
    ratio_vs_first: dict[str, float] | None = None
    peak_device_memory_bytes: int | None = None
    rss_growth_bytes: int | None = None
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _runner(
    session: ort.InferenceSession, feed: dict[str, np.ndarray], ep: str
) -> Callable[[], None]:
    """A callable that runs one inference; on GPUs with inputs and outputs on the device."""
    names = [o.name for o in session.get_outputs()]
    if ep == "cpu":
        return lambda: session.run(names, feed)
    binding = session.io_binding()
    for name, array in feed.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0))
    for name in names:
        binding.bind_output(name, "cuda", 0)

    def run() -> None:
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    return run


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def benchmark(
    models: Sequence[str | os.PathLike[str]],
    eps: Sequence[str] = ("cpu",),
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    runs: int = 20,
    warmup: int = 5,
    threads: int | None = 2,
    seed: int = 0,
) -> list[BenchResult]:
    """Time each model on each EP: same inputs, warm-up, fixed threads, interleaved runs.

    Runs are interleaved (A, B, B, A, A, B, ...) so drifts in machine speed hit every model
    alike; ``ratio_vs_first`` takes the per-round ratio to the first model, then its
    min/median/max. An EP missing from this ONNX Runtime build is reported unavailable,
    never replaced by the CPU.

    Raises:
        BadInputError: a model file is missing or invalid, or inputs cannot be made.
    """
    if runs < 1 or warmup < 0:
        raise BadInputError("--runs must be >= 1 and --warmup >= 0")
    have = set(available_eps())
    results: list[BenchResult] = []
    feeds = []
    for path in models:
        model = load(path)
        specs = input_specs(model)
        dataset = random_dataset(
            specs, resolve_shapes(specs, input_shapes), num_samples=1, seed=seed
        )
        feeds.append(next(dataset.batches()))
    for ep in eps:
        if ep not in have:
            results.extend(
                BenchResult(
                    str(m),
                    ep,
                    False,
                    note=f"execution provider '{ep}' not available in this onnxruntime build",
                )
                for m in models
            )
            continue
        sessions, runners, per_model = [], [], []
        for path, feed in zip(models, feeds, strict=True):
            before = _rss_bytes()
            start = time.perf_counter()
            session = create_session(path, ep, threads=threads if ep == "cpu" else None)
            load_s = time.perf_counter() - start
            result = BenchResult(
                str(path), ep, True, load_s=load_s, rss_growth_bytes=_rss_bytes() - before
            )
            if (
                ep != "cpu"
                and session.get_providers()[0]
                != {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}[ep]
            ):
                result.available = False
                result.note = f"session fell back to {session.get_providers()[0]}"
            sessions.append(session)
            runners.append(_runner(session, feed, ep))
            per_model.append(result)
        for run in runners:
            for _ in range(warmup):
                run()
        times: list[list[float]] = [[] for _ in runners]
        order = list(range(len(runners)))
        for round_ in range(runs):
            # Alternate the order each round so no model always runs right after another.
            for i in order if round_ % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                runners[i]()
                times[i].append(time.perf_counter() - start)
        batch = max(
            1,
            min(
                (int(next(iter(f.values())).shape[0]) if f and next(iter(f.values())).ndim else 1)
                for f in feeds
            ),
        )
        for i, result in enumerate(per_model):
            ms = [t * 1e3 for t in times[i]]
            result.runs = runs
            result.latency_ms = {
                "min": min(ms),
                "p50": statistics.median(ms),
                "p90": _percentile(ms, 90),
                "mean": statistics.fmean(ms),
                "max": max(ms),
            }
            # The median, like the latency quoted: one stalled run must not move it.
            result.throughput_per_s = batch * 1e3 / result.latency_ms["p50"]
            ratios = sorted(a / b for a, b in zip(times[i], times[0], strict=True))
            result.ratio_vs_first = {
                "min": ratios[0],
                "median": statistics.median(ratios),
                "max": ratios[-1],
            }
        results.extend(per_model)
        del sessions, runners
    return results


def existing(paths: Sequence[str]) -> list[Path]:
    """Validate model paths for the CLI."""
    out = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise BadInputError(f"{path}: no such file")
        out.append(path)
    return out

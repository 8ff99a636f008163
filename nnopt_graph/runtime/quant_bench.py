"""Interleaved CPU latency of several models with thread-pool spinning off (fair A/B timing)."""

from __future__ import annotations

__all__ = ["LatencyComparison", "compare_latency"]

import dataclasses
import logging
import os
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class LatencyComparison:
    """Per-model median latency and per-round ratios to the first model.

    Attributes:
        p50_ms: median latency of each model, in milliseconds.
        ratio: per model, min/median/max over rounds of its time divided by the first
            model's time in the same round.
        runs: timed rounds (windows, under the window protocol).
        runs_per_window: runs of each model in one window (1 without windows).
        times: per model, its time in each round in seconds (a window's fastest run).
    """

    p50_ms: list[float]
    ratio: list[dict[str, float]]
    runs: int
    runs_per_window: int = 1
    times: list[list[float]] = dataclasses.field(default_factory=list)


def _session(path: str | os.PathLike[str], threads: int, spinning: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle sessions' spinning pool threads steal the cores from the session being timed
    # when runs alternate between sessions on a small machine: turn spinning off.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(Path(path)), options, providers=["CPUExecutionProvider"])


def compare_latency(
    paths: Sequence[str | os.PathLike[str]],
    feed: Mapping[str, np.ndarray],
    *,
    runs: int = 20,
    warmup: int = 3,
    threads: int = 2,
    spinning: bool = False,
    min_seconds: float = 0.0,
    max_runs: int = 400,
    window_seconds: float = 0.0,
) -> LatencyComparison:
    """Time the models on one feed, alternating their order every round (A B C, C B A, ...).

    Every model reads the same inputs; each round runs each model once. With spinning
    off, a session's pool threads sleep between runs, so no session slows the next.
    ``min_seconds`` raises the round count (up to ``max_runs``) until the first model
    has run about that long, so sub-millisecond models get enough rounds to compare.

    With ``window_seconds`` > 0 a round is a window instead of one run per model: the
    models run in rotating order (A B C, B C A, C A B, ...; no model twice in a row)
    until the first has run about ``window_seconds`` (at least 3 runs each), and each
    model's time in the round is the fastest of its runs in that window. A single
    preempted run of a sub-millisecond model then no longer makes a round's ratio 50x
    (or 0.02x); load that slows a whole window slows every model in it alike.
    ``min_seconds`` then counts windows (``runs`` rounds at least, ``max_runs`` at most).
    """
    sessions = [_session(p, threads, spinning) for p in paths]
    names = [[o.name for o in s.get_outputs()] for s in sessions]
    feed = dict(feed)
    warm: list[float] = []
    for session, outs in zip(sessions, names, strict=False):
        for _ in range(warmup):
            start = time.perf_counter()
            session.run(outs, feed)
            warm.append(time.perf_counter() - start)
    per_run = max(statistics.median(warm[:warmup] or warm), 1e-6) if warm else 1e-6
    if window_seconds > 0:
        return _compare_windows(
            sessions, names, feed, runs, per_run, min_seconds, max_runs, window_seconds
        )
    if min_seconds > 0 and warm:
        runs = max(runs, min(max_runs, int(min_seconds / per_run) + 1))
    times: list[list[float]] = [[] for _ in sessions]
    order = list(range(len(sessions)))
    for round_ in range(runs):
        for i in order if round_ % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            sessions[i].run(names[i], feed)
            times[i].append(time.perf_counter() - start)
    return _comparison(times, runs)


def _comparison(times: list[list[float]], runs: int, runs_per_window: int = 1) -> LatencyComparison:
    ratios = []
    for t in times:
        per_round = sorted(a / b for a, b in zip(t, times[0], strict=False))
        ratios.append(
            {"min": per_round[0], "median": statistics.median(per_round), "max": per_round[-1]}
        )
    p50 = [statistics.median(t) * 1e3 for t in times]
    return LatencyComparison(p50, ratios, runs, runs_per_window, times)


def _compare_windows(
    sessions: list[ort.InferenceSession],
    names: list[list[str]],
    feed: dict[str, np.ndarray],
    runs: int,
    per_run: float,
    min_seconds: float,
    max_runs: int,
    window_seconds: float,
) -> LatencyComparison:
    """Rounds of windows in rotating order; a model's round time is its fastest run."""
    per_window = max(3, int(window_seconds / per_run) + 1)
    if min_seconds > 0:
        runs = max(runs, min(max_runs, int(min_seconds / (per_window * per_run)) + 1))
    n = len(sessions)
    times: list[list[float]] = [[] for _ in sessions]
    step = 0  # the rotation carries on across windows: no model runs twice in a row
    for _ in range(runs):
        best = [float("inf")] * n
        for _ in range(per_window):
            step += 1
            for k in range(n):
                i = (step + k) % n
                start = time.perf_counter()
                sessions[i].run(names[i], feed)
                best[i] = min(best[i], time.perf_counter() - start)
        for i in range(n):
            times[i].append(best[i])
    return _comparison(times, runs, per_window)

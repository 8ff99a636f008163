"""compare_latency's window protocol on fake sessions and a fake clock (no timing involved)."""

from __future__ import annotations

import pytest

from nnopt_graph.runtime import quant_bench


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Session:
    """Advances the fake clock by its next duration on every run; logs who ran."""

    def __init__(self, n: int, durations: list[float], clock: _Clock, log: list[int]) -> None:
        self.n, self.durations, self.clock, self.log = n, durations, clock, log
        self.calls = 0

    def run(self, names: list[str], feed: dict) -> None:
        self.clock.now += self.durations[self.calls % len(self.durations)]
        self.calls += 1
        self.log.append(self.n)


def _windows(durations: list[list[float]], monkeypatch: pytest.MonkeyPatch, **kw):
    clock, log = _Clock(), []
    monkeypatch.setattr(quant_bench.time, "perf_counter", clock)
    sessions = [_Session(i, d, clock, log) for i, d in enumerate(durations)]
    result = quant_bench._compare_windows(
        sessions, [["y"]] * len(sessions), {}, kw.pop("runs", 4), kw.pop("per_run", 1e-3), **kw
    )
    return result, log


def test_no_model_runs_twice_in_a_row(monkeypatch: pytest.MonkeyPatch) -> None:
    _, log = _windows([[1e-3]] * 3, monkeypatch, min_seconds=0.0, max_runs=400, window_seconds=0.01)
    assert all(a != b for a, b in zip(log, log[1:], strict=False))
    assert log.count(0) == log.count(1) == log.count(2)


def test_a_preempted_run_does_not_make_the_ratio(monkeypatch: pytest.MonkeyPatch) -> None:
    # B takes 2 ms, A 1 ms; one A run in every window is preempted for 50 ms.
    a = [1e-3] * 10 + [50e-3]
    result, _ = _windows(
        [a, [2e-3]], monkeypatch, runs=20, min_seconds=0.0, max_runs=400, window_seconds=0.01
    )
    assert result.ratio[1] == pytest.approx({"min": 2.0, "median": 2.0, "max": 2.0})
    assert result.runs == 20


def test_window_has_at_least_three_runs_each(monkeypatch: pytest.MonkeyPatch) -> None:
    # per_run far above the window: still 3 runs of each model per window.
    _, log = _windows(
        [[1e-3], [1e-3]],
        monkeypatch,
        runs=2,
        per_run=1.0,
        min_seconds=0.0,
        max_runs=400,
        window_seconds=0.01,
    )
    assert log.count(0) == log.count(1) == 6


def test_min_seconds_counts_windows_up_to_max_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    # 11 runs of 1 ms per window: 2 s need 182 windows, capped at 50.
    result, _ = _windows(
        [[1e-3], [1e-3]], monkeypatch, runs=20, min_seconds=2.0, max_runs=50, window_seconds=0.01
    )
    assert result.runs == 50
    result, _ = _windows(
        [[1e-3], [1e-3]], monkeypatch, runs=20, min_seconds=0.1, max_runs=50, window_seconds=0.01
    )
    assert result.runs == 20


def test_result_keeps_runs_per_window_and_per_round_times(monkeypatch: pytest.MonkeyPatch) -> None:
    # 10 ms windows of 1 ms runs: 11 runs each per window; every round's time is kept.
    result, _ = _windows(
        [[1e-3], [3e-3, 2e-3]],
        monkeypatch,
        runs=5,
        min_seconds=0.0,
        max_runs=50,
        window_seconds=0.01,
    )
    assert result.runs_per_window == 11
    assert [len(t) for t in result.times] == [5, 5]
    assert result.times[1] == pytest.approx([2e-3] * 5)  # a window's fastest run

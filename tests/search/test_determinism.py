"""The same search with the same seed gives the same front: the objectives are deterministic."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nnopt_graph.search.run import SearchResult, run_search
from nnopt_graph.search.space import SearchSpace
from nnopt_graph.search.strategy import objectives
from tests.search.digits import CALIB, HELDOUT, MODEL

GUARD = "cosine.min>=0.99"
# 6 candidates; the warm start asks 4 (the two presets, the corner prune 0.5 + int8, the
# middle prune 0.2 + int8), so TPE chooses the 5th among the other 2 from the objective
# values it was told.
SPACE = SearchSpace(
    "default",
    (
        ("prune", ("", "prune-channels{ratio=0.2}", "prune-channels{ratio=0.5}")),
        ("quantize", ("", "quantize-int8")),
    ),
    ((("prune", ""), ("quantize", "quantize-int8")), (("prune", ""), ("quantize", ""))),
    ("prune",),
)
TRIALS = 5
# Asked per round: the four warm-start candidates, then one TPE ask told all four.
BATCH = 4


def front_signature(result: SearchResult) -> list[tuple[str, Any]]:
    """The front as (pipeline, objective values), in front order."""
    return [(r["pipeline"], objectives(r)) for r in result.front]


@pytest.fixture()
def inputs(tmp_path: Path) -> dict[str, Path]:
    """The space file and smaller digits splits (128 calibration, 64 held-out images)."""
    space = tmp_path / "space.json"
    space.write_text(json.dumps(SPACE.to_json()))
    calib, held = tmp_path / "calib.npz", tmp_path / "held.npz"
    np.savez(calib, input=np.load(CALIB)["input"][:128])
    np.savez(held, input=np.load(HELDOUT)["input"][:64])
    return {"space": space, "calib": calib, "eval": held}


def search(outdir: Path, inputs: dict[str, Path], **kwargs: Any) -> SearchResult:
    """The digits search of these tests: seed 0, no confirmation run (best by the model)."""
    return run_search(
        MODEL,
        outdir,
        target="cpu",
        calib=inputs["calib"],
        eval_data=inputs["eval"],
        guard=GUARD,
        trials=TRIALS,
        space=inputs["space"],
        seed=0,
        confirm=0,
        batch=BATCH,
        **kwargs,
    )[0]


def test_one_and_two_workers_with_the_same_seed_give_the_same_front(
    tmp_path: Path, inputs: dict[str, Path]
) -> None:
    # The batch, not the worker count, decides what is asked before what is told.
    first = search(tmp_path / "a", inputs, workers=1)
    second = search(tmp_path / "b", inputs, workers=2)
    assert first.evaluated == second.evaluated == TRIALS
    # The same candidates asked in the same order, the same front with the same values.
    assert [r["pipeline"] for r in first.records] == [r["pipeline"] for r in second.records]
    assert front_signature(first) == front_signature(second)
    assert front_signature(first), "empty front"
    for a, b in zip(first.records, second.records, strict=True):
        assert a["modelled"] == b["modelled"]
        assert objectives(a) == objectives(b)
    # Without a confirmation run best is chosen by the model: the same file both times.
    assert first.best is not None and second.best is not None
    assert first.best["pipeline"] == second.best["pipeline"]
    assert (tmp_path / "a" / "best.onnx").read_bytes() == (
        tmp_path / "b" / "best.onnx"
    ).read_bytes()
    # The measured figures are still measured and recorded; they do not steer the search.
    assert all(r["latency_ratio"]["median"] > 0 for r in first.records)


def test_the_front_ignores_measured_latency() -> None:
    # Two records alike but for the measured figure: neither dominates the other's objectives.
    base = {
        "status": "ok",
        "guard_passed": True,
        "worst": {"cosine": 0.995},
        "size": 100,
        "modelled": {"ratio": 0.5},
    }
    fast = {**base, "pipeline": "x", "latency_ratio": {"min": 0.1, "median": 0.1, "max": 0.1}}
    slow = {**base, "pipeline": "y", "latency_ratio": {"min": 2.0, "median": 2.0, "max": 2.0}}
    from nnopt_graph.search.outputs import front_of

    assert [r["pipeline"] for r in front_of([slow, fast])] == ["x", "y"]
    # A lower modelled figure dominates whatever was measured.
    better = {**slow, "pipeline": "z", "modelled": {"ratio": 0.4}}
    assert [r["pipeline"] for r in front_of([fast, better])] == ["z"]
    # No modelled figure: no objectives, not on the front.
    assert objectives({**fast, "modelled": {"ratio": None}}) is None


class _CountingStrategy:
    """Asks the grid in order; logs how many results it had been told at each ask."""

    def __init__(self, space: SearchSpace) -> None:
        self._order = list(space.candidates())
        self.log: list[tuple[str, int]] = []
        self._told = 0

    def ask(self) -> tuple[None, dict[str, str]]:
        choice = self._order[len(self.log) % len(self._order)]
        self.log.append((SPACE.pipeline(choice), self._told))
        return None, dict(choice)

    def tell(self, trial: Any, record: dict[str, Any]) -> None:
        self._told += 1


class _CopyExecutor:
    """Evaluates nothing: writes the input as each candidate, with fixed objective values."""

    workers = 1

    def map(self, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        import shutil

        out = []
        for job in jobs:
            Path(job["output"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(job["input"], job["output"])
            out.append(
                {
                    "pipeline": job["pipeline"],
                    "status": "ok",
                    "guard_passed": True,
                    "modelled": {"ratio": 1.0 - 0.01 * len(job["pipeline"])},
                    "worst": {"cosine": 0.999},
                    "size": 100,
                    "latency_ratio": {"min": 1.0, "median": 1.0, "max": 1.0},
                }
            )
        return out

    def close(self) -> None:
        pass


@pytest.mark.parametrize("batch", [1, 2, 4])
def test_a_resumed_run_tells_the_strategy_what_the_first_run_told_it(
    tmp_path: Path, inputs: dict[str, Path], monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    # Cache hits count in their round and are told with the round, as evaluations are: the
    # strategy sees the same history at every ask, so a resumed run asks the same candidates.
    import nnopt_graph.search.run as run_mod
    import nnopt_graph.search.strategy as strategy_mod

    strategies: list[_CountingStrategy] = []

    def make(space: SearchSpace, seed: int, kind: str = "tpe") -> _CountingStrategy:
        strategies.append(_CountingStrategy(space))
        return strategies[-1]

    monkeypatch.setattr(strategy_mod, "make_strategy", make)
    kwargs: dict[str, Any] = dict(
        target="cpu",
        calib=inputs["calib"],
        eval_data=inputs["eval"],
        guard=GUARD,
        trials=5,
        budget_minutes=None,
        space=SPACE,
        executor=_CopyExecutor(),
        seed=0,
        batch=batch,
    )
    first = run_mod._search_one(MODEL, tmp_path / "out", **kwargs)
    again = run_mod._search_one(MODEL, tmp_path / "out", **kwargs)
    assert first.evaluated == 5 and again.evaluated == 0
    assert strategies[0].log == strategies[1].log
    # Within a round nothing is told: the k-th ask of a round saw only earlier rounds.
    assert [told for _, told in strategies[0].log] == [batch * (i // batch) for i in range(5)]

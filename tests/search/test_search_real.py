"""The local search on a real model (rapidocr's text-orientation classifier), small budget."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import pytest

from models import calib, fetch
from nnopt_graph.job import optimize
from nnopt_graph.search.run import run_search
from nnopt_graph.search.space import SearchSpace

_NAME = "rapidocr-cls"
GUARD = "cosine.min>=0.99"
PRUNE = "prune-channels{ratio=0.25}"
# Two candidates: the lossless default (the preset) and a pruned one the guard decides on.
SPACE = SearchSpace("default", (("prune", ("", PRUNE)),), ((("prune", ""),),), ("prune",))


def _search(model: Path, cal: Path, held: Path, space: Path, out: Path, **kwargs: Any) -> Any:
    """The two-candidate search of these tests (no confirmation run)."""
    return run_search(
        model,
        out,
        target="cpu",
        calib=cal,
        eval_data=held,
        guard=GUARD,
        trials=2,
        space=space,
        confirm=0,
        **kwargs,
    )[0]


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Path]:
    """One search of the two candidates: (model, calib, held-out data, OUTDIR)."""
    work = tmp_path_factory.mktemp("search-real")
    model = fetch.fetch(_NAME)  # a fetch failure fails the test: the registry is reachable
    cal = calib.write_calib_npz(_NAME, work / "calib.npz", samples=8, seed=0)
    held = calib.write_calib_npz(_NAME, work / "held.npz", samples=8, seed=100)
    space = work / "space.json"
    space.write_text(json.dumps(SPACE.to_json()))
    out = work / "out"
    _search(model, cal, held, space, out, workers=2)
    return model, cal, held, out


@pytest.mark.realmodels
def test_real_model_search_writes_a_best_that_meets_the_guard(searched, tmp_path) -> None:
    model, cal, held, out = searched
    front = json.loads((out / "front.json").read_text())
    pipelines = {r["pipeline"] for r in front["candidates"]}
    assert pipelines == {"default", f"default,{PRUNE}"}
    for r in front["candidates"]:
        assert r["status"] == "ok", r
        assert r["modelled"]["ratio"] > 0
        assert r["latency_ratio"]["median"] > 0
    best_text = (out / "best.pipeline.txt").read_text().strip()
    best = next(r for r in front["candidates"] if r["pipeline"] == best_text)
    assert best["guard_passed"] is True
    onnx.checker.check_model(str(out / "best.onnx"))
    # best's pipeline re-runs with opt: the same bytes, and it meets the same guard.
    again = optimize(
        model,
        tmp_path / "again.onnx",
        best_text,
        target="cpu",
        calib=cal,
        eval_data=held,
        guard=GUARD,
    )
    assert (tmp_path / "again.onnx").read_bytes() == (out / "best.onnx").read_bytes()
    assert again.report["guard"]["passed"] is not False
    assert again.report["fidelity"]["worst"]["cosine"] >= 0.99


@pytest.mark.realmodels
def test_real_model_search_resumes_without_evaluating(searched, tmp_path) -> None:
    model, cal, held, out = searched
    space = tmp_path / "space.json"
    space.write_text(json.dumps(SPACE.to_json()))
    again = _search(model, cal, held, space, out)
    assert again.evaluated == 0
    assert len(again.records) == 2

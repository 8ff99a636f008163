"""The search on Ray in local mode (2 CPUs): the same candidates, outcomes and bytes as local."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from nnopt_graph.search.run import run_search
from tests.search.digits import CALIB, HELDOUT, MODEL


def _sha(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.slow
def test_ray_local_mode_matches_local_executor(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    kwargs = dict(
        target="cpu", calib=CALIB, eval_data=HELDOUT, guard="cosine.min>=0.99", trials=3, seed=0
    )
    local = run_search(MODEL, tmp_path / "local", workers=1, **kwargs)[0]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = run_search(MODEL, tmp_path / "ray", ray="auto", workers=2, **kwargs)[0]
    finally:
        ray.shutdown()
    assert remote.evaluated == 3
    # The first trials are the seeded warm start and seeded random samples: the same
    # candidates, with the same deterministic fidelity, whichever executor ran them.
    by_local = {r["pipeline"]: r for r in local.records}
    by_ray = {r["pipeline"]: r for r in remote.records}
    assert set(by_local) == set(by_ray)
    for text, r in by_ray.items():
        mine = by_local[text]
        assert r["status"] == mine["status"] == "ok"
        assert r["guard_passed"] == mine["guard_passed"]
        assert r["outcomes"] == mine["outcomes"]
        assert r["size"] == mine["size"]
        # Every evaluation pins numpy's BLAS to the driver's thread count (a Ray worker
        # starts with one): the models are byte-identical, so their fidelity is too.
        assert _sha(r["model"]) == _sha(mine["model"]), text
        assert r["worst"] == mine["worst"]
    # The front files are copies of those models: the same bytes under the same names
    # wherever the two fronts hold the same pipeline.
    local_front = json.loads((tmp_path / "local" / "front.json").read_text())["front"]
    ray_front = json.loads((tmp_path / "ray" / "front.json").read_text())["front"]
    local_files = {e["pipeline"]: tmp_path / "local" / e["model"] for e in local_front}
    shared = [e for e in ray_front if e["pipeline"] in local_files]
    assert shared, "the fronts share no candidate"
    for e in shared:
        assert _sha(tmp_path / "ray" / e["model"]) == _sha(local_files[e["pipeline"]])
    assert (tmp_path / "ray" / "best.onnx").exists()
    assert len({r["worker_pid"] for r in remote.records}) >= 1


@pytest.mark.slow
def test_ray_local_mode_gives_the_same_front_as_the_local_executor(tmp_path: Path) -> None:
    """Same seed and batch, 1 local worker vs 2 Ray workers: the same candidates, the same front.

    The strategy is told the modelled latency (deterministic), not a timed one, so the asks
    after the warm start do not depend on the machine's load or on where a candidate ran.
    """
    ray = pytest.importorskip("ray")
    from nnopt_graph.search.strategy import objectives
    from tests.search.test_determinism import SPACE, front_signature

    space = tmp_path / "space.json"
    space.write_text(json.dumps(SPACE.to_json()))
    kwargs = dict(
        target="cpu",
        calib=CALIB,
        eval_data=HELDOUT,
        guard="cosine.min>=0.99",
        trials=5,
        seed=0,
        space=space,
        batch=2,
        confirm=0,
    )
    local = run_search(MODEL, tmp_path / "local", workers=1, **kwargs)[0]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = run_search(MODEL, tmp_path / "ray", ray="auto", workers=2, **kwargs)[0]
    finally:
        ray.shutdown()
    assert local.evaluated == remote.evaluated == 5
    assert [r["pipeline"] for r in local.records] == [r["pipeline"] for r in remote.records]
    for a, b in zip(local.records, remote.records, strict=True):
        assert objectives(a) == objectives(b), a["pipeline"]
        assert _sha(a["model"]) == _sha(b["model"]), a["pipeline"]
    assert front_signature(local) == front_signature(remote)
    assert front_signature(local), "empty front"
    # best without a confirmation run: by the model, so the same file.
    assert (tmp_path / "local" / "best.onnx").read_bytes() == (
        tmp_path / "ray" / "best.onnx"
    ).read_bytes()

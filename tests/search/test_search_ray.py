"""The search on Ray in local mode (2 CPUs): the same candidates, outcomes and bytes as local."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from nnopt_graph.search.run import run_search

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "models" / "digits"
MODEL = DIGITS / "digits_cnn.onnx"
CALIB = DIGITS / "digits_calib.npz"
HELDOUT = DIGITS / "digits_heldout.npz"


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

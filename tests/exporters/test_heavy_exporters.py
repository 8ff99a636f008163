"""Models from torch.onnx (TorchScript, dynamo), tf2onnx (Keras) and paddle2onnx.

Slow: they need the exporters themselves, which are not dependencies of the package::

    pip install torch==2.13.0 tensorflow tf2onnx paddlepaddle paddle2onnx
    python -m pytest -m slow tests/exporters

A missing exporter skips its cases with the package's name.
"""

from __future__ import annotations

import importlib.util

import onnx
import pytest

from tests.exporters.builders import HEAVY, build_isolated
from tests.exporters.exporters_util import optimize_both

NEEDS = {
    "torch.onnx (TorchScript)": ["torch"],
    "torch.onnx (dynamo)": ["torch", "onnxscript"],
    "tf2onnx (Keras)": ["tensorflow", "tf2onnx"],
    "paddle2onnx": ["paddle", "paddle2onnx"],
}


@pytest.mark.slow
@pytest.mark.parametrize("key", list(HEAVY), ids=lambda k: f"{k[0]}-{k[1]}")
def test_exported_model_verified_default_and_cpu(key, tmp_path):
    exporter, _ = key
    for module in NEEDS[exporter]:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{exporter} needs '{module}' (not a dependency of nnopt-graph)")
    model, calib = build_isolated(key, tmp_path)
    onnx.checker.check_model(str(model), full_check=True)
    results = optimize_both(model, calib, tmp_path)
    # Lossless default: equal within float re-association; --target cpu: within the guard.
    assert results["default"].fidelity.cosine_min >= 0.99999
    assert results["cpu"].fidelity.cosine_min >= 0.99
    for result in results.values():
        assert result.fidelity.shapes_match

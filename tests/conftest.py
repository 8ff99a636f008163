"""Shared fixtures: a tiny valid model on disk and a CLI runner."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def make_tiny_model(seed: int = 0) -> onnx.ModelProto:
    """Conv(3->4, 3x3, pad 1) + Relu on input ``x`` [N,3,8,8], output ``y`` [N,4,8,8]."""
    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["y"], name="relu"),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        initializer=[weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture
def tiny_model_path(tmp_path: Path) -> Path:
    """A small valid float model (Conv+Relu, input ``x`` [N,3,8,8]) written to disk."""
    path = tmp_path / "tiny.onnx"
    onnx.save_model(make_tiny_model(), path)
    return path


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run ``python -m nnopt_graph.cli ARGS`` and capture its text output."""
    return subprocess.run(
        [sys.executable, "-m", "nnopt_graph.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _reject_constant(token: str) -> None:
    raise ValueError(f"not strict JSON: {token}")


def strict_loads(text: str):
    """json.loads that rejects NaN/Infinity tokens, as jq, JavaScript and Go do."""
    import json

    return json.loads(text, parse_constant=_reject_constant)


@pytest.fixture(autouse=True)
def _every_json_file_a_test_writes_is_strict(request):
    """After each test: every .json file in its tmp_path parses under a strict parser."""
    yield
    tmp = request.node.funcargs.get("tmp_path")
    if tmp is None:
        return
    for path in Path(tmp).rglob("*.json"):
        strict_loads(path.read_text())

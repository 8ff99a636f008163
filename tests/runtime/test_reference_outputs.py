"""Reference outputs computed when the input is loaded: verification runs one session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from nnopt_graph import optimize
from nnopt_graph.check.compare import compare_models
from nnopt_graph.errors import CheckFailedError
from nnopt_graph.runtime import execute, session
from nnopt_graph.runtime.data import input_specs, random_dataset
from nnopt_graph.runtime.execute import ReferenceOutputs, reference_outputs


def _model(path: Path, scale: float = 2.0) -> Path:
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "s"], ["h"], name="mul"),
            helper.make_node("Identity", ["h"], ["y"], name="id"),
        ],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(np.full(4, scale, np.float32), "s")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, path)
    return path


def _data(path: Path):
    from nnopt_graph.core.io import load

    specs = input_specs(load(path))
    return random_dataset(specs, {"x": [1, 4]}, num_samples=3)


def test_stored_reference_gives_the_same_comparison(tmp_path: Path) -> None:
    ref = _model(tmp_path / "a.onnx")
    data = _data(ref)
    stored = reference_outputs(ref, data)
    assert stored is not None and len(stored.outputs) == 3 and stored.names == ["y"]
    direct = compare_models(ref, ref, data, tolerance=None)
    ahead = compare_models(stored, ref, data, tolerance=None)
    assert ahead.to_json() == direct.to_json()


def test_stored_reference_of_another_model_is_unequal(tmp_path: Path) -> None:
    from nnopt_graph.check.equality import LOSSLESS

    a, b = _model(tmp_path / "a.onnx"), _model(tmp_path / "b.onnx", scale=3.0)
    data = _data(a)
    stored = reference_outputs(a, data)
    assert stored is not None
    result = compare_models(stored, b, data, tolerance=LOSSLESS)
    assert result.equal is False and result.unequal_samples == 3


def test_names_that_differ_are_refused(tmp_path: Path) -> None:
    a = _model(tmp_path / "a.onnx")
    data = _data(a)
    stored = ReferenceOutputs(["z"], [[np.zeros((1, 4), np.float32)]] * 3)
    with pytest.raises(CheckFailedError, match="output names differ"):
        compare_models(stored, a, data)


def test_over_the_limit_nothing_is_kept(tmp_path: Path) -> None:
    a = _model(tmp_path / "a.onnx")
    assert reference_outputs(a, _data(a), limit_bytes=16) is None


def test_optimize_opens_one_session_of_the_input(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("NNOPT_GRAPH_NO_ISOLATION", "1")  # count sessions in this process
    opened: list[str] = []
    real = session.create_session

    def counting(model, *args, **kwargs):
        opened.append(Path(model).name)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(execute, "create_session", counting)
    monkeypatch.setattr(session, "create_session", counting)
    src = _model(tmp_path / "in.onnx")
    result = optimize(src, tmp_path / "out.onnx")
    assert result.fidelity is not None and result.fidelity.equal
    assert opened == ["in.onnx", "out.onnx"]


def test_without_check_the_input_is_only_loaded(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("NNOPT_GRAPH_NO_ISOLATION", "1")
    opened: list[str] = []
    real = session.create_session

    def counting(model, *args, **kwargs):
        opened.append(Path(model).name)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(execute, "create_session", counting)
    monkeypatch.setattr(session, "create_session", counting)
    src = _model(tmp_path / "in.onnx")
    result = optimize(src, tmp_path / "out.onnx", check=False)
    assert result.fidelity is None
    assert opened == ["in.onnx"]  # load_problem: ONNX Runtime must still load the input

"""Mutation tests: every way an output can be wrong is rejected by verify and by compare."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import run_cli
from onnx import TensorProto, helper, numpy_helper

from nnopt_graph.check.equality import LOSSLESS, array_problems
from nnopt_graph.check.verify import verify_written
from nnopt_graph.errors import CheckFailedError
from nnopt_graph.runtime.data import Dataset

BIG = (1000, 1000)  # a 10^6-element output


def _model(extra_nodes=(), extra_inits=(), rename=None) -> onnx.ModelProto:
    """x[1,1000] -> big = x^T x [1000,1000], prob = Sigmoid(x) [1,1000], idx = ArgMax(x) int64."""
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0]),
        helper.make_node("MatMul", ["xt", "x"], ["big0"]),
        helper.make_node("Sigmoid", ["x"], ["prob0"]),
        helper.make_node("Sigmoid", ["x2"], ["prob2_0"]),
        helper.make_node("ArgMax", ["x"], ["idx0"], axis=1, keepdims=1),
        helper.make_node("Identity", ["big0"], ["big"]),
        helper.make_node("Identity", ["prob0"], ["prob"]),
        helper.make_node("Identity", ["prob2_0"], ["prob2"]),
        helper.make_node("Identity", ["idx0"], ["idx"]),
    ]
    nodes = [n for n in nodes if n.output[0] not in {e.output[0] for e in extra_nodes}] + list(
        extra_nodes
    )
    outputs = [
        helper.make_tensor_value_info("big", TensorProto.FLOAT, list(BIG)),
        helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 1000]),
        helper.make_tensor_value_info("prob2", TensorProto.FLOAT, [1, 1000]),
        helper.make_tensor_value_info("idx", TensorProto.INT64, [1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "m",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1000]),
            helper.make_tensor_value_info("x2", TensorProto.FLOAT, [1, 1000]),
        ],
        outputs,
        initializer=list(extra_inits),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def _mutants() -> dict[str, onnx.ModelProto]:
    one = np.zeros(BIG, np.float32)
    one[123, 456] = 0.5
    nan = np.zeros((1, 1000), np.float32)
    nan[0, 7] = np.nan
    return {
        "output x2": _model(
            [helper.make_node("Mul", ["big0", "two"], ["big"])],
            [numpy_helper.from_array(np.array(2, np.float32), "two")],
        ),
        "output + 1e-2 |mean|": _model(
            [helper.make_node("Add", ["prob0", "shift"], ["prob"])],
            # the outputs' mean is about 0.5
            [numpy_helper.from_array(np.array(0.005, np.float32), "shift")],
        ),
        "one element of 10^6 changed": _model(
            [helper.make_node("Add", ["big0", "one"], ["big"])],
            [numpy_helper.from_array(one, "one")],
        ),
        "two outputs swapped": _model(
            [
                helper.make_node("Identity", ["prob2_0"], ["prob"]),
                helper.make_node("Identity", ["prob0"], ["prob2"]),
            ]
        ),
        "NaN injected": _model(
            [helper.make_node("Add", ["prob0", "nan"], ["prob"])],
            [numpy_helper.from_array(nan, "nan")],
        ),
        "int output off by one": _model(
            [helper.make_node("Add", ["idx0", "plus"], ["idx"])],
            [numpy_helper.from_array(np.array([[1]], np.int64), "plus")],
        ),
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mutants")
    ref = folder / "ref.onnx"
    onnx.save(_model(), ref)
    rng = np.random.default_rng(0)
    data = folder / "data.npz"
    np.savez(
        data,
        x=rng.standard_normal((3, 1, 1000)).astype(np.float32),
        x2=rng.standard_normal((3, 1, 1000)).astype(np.float32),
    )
    paths = {}
    for i, (name, model) in enumerate(_mutants().items()):
        paths[name] = folder / f"m{i}.onnx"
        onnx.save(model, paths[name])
    return ref, data, paths


def _dataset(data) -> Dataset:
    with np.load(data) as z:
        return Dataset({k: z[k] for k in z.files}, "given", frozenset(z.files))


def test_the_reference_equals_itself(files):
    ref, data, _ = files
    result = verify_written(ref, ref, _dataset(data))
    assert result.equal is True and result.samples == 3


@pytest.mark.parametrize("mutation", list(_mutants()))
def test_verify_rejects(files, mutation):
    ref, data, paths = files
    with pytest.raises(CheckFailedError, match="not equal to the input"):
        verify_written(ref, paths[mutation], _dataset(data))


@pytest.mark.parametrize("mutation", list(_mutants()))
def test_compare_tolerance_rejects(files, mutation):
    ref, data, paths = files
    proc = run_cli(
        "compare", ref, paths[mutation], "--calib", data, "--tolerance", "rel_l2.max<=1e-4"
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "DIFFERENT under rel_l2.max<=1e-4" in proc.stdout


@pytest.mark.parametrize("mutation", list(_mutants()))
def test_compare_default_equality_rejects(files, mutation):
    ref, data, paths = files
    proc = run_cli("compare", ref, paths[mutation], "--calib", data)
    assert proc.returncode == 1, proc.stdout + proc.stderr


def test_scaled_output_has_cosine_one_yet_is_not_equal():
    x = np.random.default_rng(1).standard_normal(100).astype(np.float32)
    from nnopt_graph.check.metrics import sample_metrics

    assert sample_metrics(x, 2 * x).cosine == pytest.approx(1.0)
    assert array_problems("y", x, 2 * x, LOSSLESS)


def test_reassociation_noise_is_equal():
    x = np.random.default_rng(2).standard_normal(10_000).astype(np.float32)
    noisy = (x.astype(np.float64) * (1 + 1e-7)).astype(np.float32)
    assert array_problems("y", x, noisy, LOSSLESS) == []


def test_nan_in_the_same_places_is_equal_elsewhere_not():
    a = np.array([1.0, np.nan, np.inf, -np.inf], np.float32)
    assert array_problems("y", a, a.copy(), LOSSLESS) == []
    b = a.copy()
    b[1] = 0.0
    assert any("NaN" in p for p in array_problems("y", a, b, LOSSLESS))
    c = a.copy()
    c[2] = -np.inf
    problems = array_problems("y", a, c, LOSSLESS)
    assert any("+Inf" in p for p in problems) and any("-Inf" in p for p in problems)


def test_dtype_and_shape_changes_are_not_equal():
    a = np.zeros((2, 3), np.float32)
    assert "dtype" in array_problems("y", a, a.astype(np.float16), LOSSLESS)[0]
    assert "shape" in array_problems("y", a, a.reshape(3, 2), LOSSLESS)[0]

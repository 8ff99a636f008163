"""The guard judges the worst held-out sample: ruining 2 of 64 inputs is rejected."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from nnopt_graph import optimize
from nnopt_graph.pipeline import registry
from nnopt_graph.pipeline.base import Pass, PassContext, PassResult

RUINED = (5, 40)


@dataclasses.dataclass(frozen=True)
class _NoOptions:
    pass


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "lin",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        initializer=[w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def _ruin(model: ir.Model) -> None:
    """y := Where(ReduceMax(x) == x[:, 0], reverse(y), y)."""
    graph = model.graph
    x, y = graph.inputs[0], graph.outputs[0]
    y.name = "y_float"
    consts = {
        "axes1": np.array([1], np.int64),
        "s0": np.array([0], np.int64),
        "e1": np.array([1], np.int64),
        "rev": np.arange(7, -1, -1, dtype=np.int64),
    }
    v = {}
    for name, array in consts.items():
        v[name] = ir.Value(name=name, const_value=ir.tensor(array, name=name))
        graph.register_initializer(v[name])
    top = ir.node("ReduceMax", [x, v["axes1"]], attributes={"keepdims": 1})
    first = ir.node("Slice", [x, v["s0"], v["e1"], v["axes1"]])
    cond = ir.node("Equal", [top.outputs[0], first.outputs[0]])
    reversed_ = ir.node("Gather", [y, v["rev"]], attributes={"axis": 1})
    where = ir.node("Where", [cond.outputs[0], reversed_.outputs[0], y])
    for node in (top, first, cond, reversed_, where):
        graph.append(node)
    out = where.outputs[0]
    out.name, out.dtype, out.shape = "y", y.dtype, y.shape
    graph.outputs[0] = out


class _Ruin(Pass):
    """Test-only lossy pass: reverses the output of inputs whose first value is their largest."""

    name = "test-ruin-some-inputs"
    lossy = True
    Options = _NoOptions

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        _ruin(model)
        return PassResult({"outputs-ruined": 1})


@pytest.fixture(autouse=True)
def _register(monkeypatch):
    monkeypatch.setitem(registry._REGISTRY, _Ruin.name, _Ruin)


def _data() -> np.ndarray:
    """64 held-out samples; in exactly RUINED the first value is the largest, at small scale."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 16)).astype(np.float32)
    for i in range(64):
        if i in RUINED:
            x[i, 0] = np.abs(x[i]).max() + 1.0
            x[i] *= 0.25  # little energy: the pooled cosine barely notices them
        elif x[i, 0] >= x[i].max():
            x[i, 0] = x[i].min() - 1.0
    return x


def test_two_ruined_samples_of_64_fail_the_default_guard_that_pooled_cosine_passes(tmp_path):
    src = tmp_path / "lin.onnx"
    onnx.save(_model(), src)
    x = _data()
    held = tmp_path / "held.npz"
    np.savez(held, x=x)
    result = optimize(
        src, tmp_path / "out.onnx", "test-ruin-some-inputs", calib=held, eval_data=held
    )
    record = result.records[0]
    assert record.outcome == "rolled back"
    values = record.fidelity["fidelity"]["per_output"]["y"]["cosine"]
    assert values["worst_index"] in RUINED and values["min"] < 0.5
    assert "cosine.min>=0.99 (measured" in record.outcome_detail

    # The same candidate measured the old way, pooled over all samples, would have passed.
    cand = ir.serde.deserialize_model(_model())
    _ruin(cand)
    ref_sess = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    cand_sess = ort.InferenceSession(
        ir.serde.serialize_model(cand).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    r = ref_sess.run(None, {"x": x})[0].astype(np.float64).ravel()
    c = cand_sess.run(None, {"x": x})[0].astype(np.float64).ravel()
    pooled = float(r @ c / (np.linalg.norm(r) * np.linalg.norm(c)))
    assert pooled >= 0.99, pooled
    print(
        f"pooled cosine {pooled:.4f}; worst sample cosine {values['min']:.4f} (sample {values['worst_index']})"
    )


def test_nan_held_out_data_is_never_a_free_pass(tmp_path):
    """All-NaN inputs make both models output NaN: no finite value to compare, so the guard fails."""
    from nnopt_graph.check.guard import Guard
    from nnopt_graph.runtime.data import Dataset

    src = tmp_path / "lin.onnx"
    onnx.save(_model(), src)
    nan = np.full((4, 1, 16), np.nan, np.float32)
    guard = Guard("cosine>=0.99", src, Dataset({"x": nan}, "given", frozenset({"x"})))
    outcome = guard.measure_path(src)  # even the model against itself
    assert not outcome.passed
    assert outcome.failed == [
        "cosine.min>=0.99: not measurable: a sample has no finite values to compare (NaN/Inf)"
    ]


def test_nan_held_out_file_is_refused_before_any_work(tmp_path):
    """The reported case: digits pruned at 0.9 with an all-NaN --eval file once "verified" at cosine 1."""
    from conftest import run_cli

    x = np.load("models/digits/digits_heldout.npz")["input"]
    nan = tmp_path / "nan.npz"
    np.savez(nan, input=np.full_like(x, np.nan))
    out = tmp_path / "out.onnx"
    proc = run_cli(
        "opt",
        "models/digits/digits_cnn.onnx",
        out,
        "-p",
        "prune-channels{ratio=0.9}",
        "--calib",
        "models/digits/digits_calib.npz",
        "--eval",
        nan,
    )
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("nnopt-graph: error: ") and "NaN" in line and "'input'" in line
    assert not out.exists()


def test_an_ort_crash_while_guarding_is_one_error_not_a_dead_process(tmp_path):
    """Split with an empty optional output makes ONNX Runtime segfault when run."""
    import pytest

    from nnopt_graph.check.guard import Guard
    from nnopt_graph.errors import CheckFailedError
    from nnopt_graph.runtime.data import Dataset

    node = helper.make_node("Split", ["X"], ["Y", ""], axis=0, num_outputs=2)
    graph = helper.make_graph(
        [node],
        "split",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4, 6])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 6])],
    )
    path = tmp_path / "split.onnx"
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8), path
    )
    data = Dataset({"X": np.ones((2, 4, 6), np.float32)}, "given", frozenset({"X"}))
    with pytest.raises(
        CheckFailedError, match=r"ONNX Runtime crashed running a candidate for the guard \(signal"
    ):
        Guard("cosine>=0.99", path, data).measure_path(path)


def _two_output_model(scale: float) -> onnx.ModelProto:
    """keep = x (untouched); y = x @ w, with sample 2's y negated when scale is -1."""
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w")
    sign = np.ones((4, 1, 1), np.float32)
    sign[2] = scale
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["x"], ["keep"]),
            helper.make_node("MatMul", ["x", "w"], ["mm"]),
            helper.make_node("Mul", ["mm", "sign"], ["y"]),
        ],
        "two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 1, 16])],
        [
            helper.make_tensor_value_info("keep", TensorProto.FLOAT, [4, 1, 16]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 1, 8]),
        ],
        initializer=[w, numpy_helper.from_array(sign, "sign")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def test_a_failed_guard_names_the_output_that_failed_not_the_first(tmp_path):
    """The first output is unchanged (cosine 1); the message blames 'y' and its sample."""
    from nnopt_graph.check.guard import Guard
    from nnopt_graph.runtime.data import Dataset

    ref, cand = tmp_path / "ref.onnx", tmp_path / "cand.onnx"
    onnx.save(_two_output_model(1.0), ref)
    onnx.save(_two_output_model(-1.0), cand)
    x = np.random.default_rng(2).standard_normal((3, 4, 1, 16)).astype(np.float32)
    guard = Guard("cosine>=0.99", ref, Dataset({"x": x}, "given", frozenset({"x"})))
    outcome = guard.measure_path(cand)
    assert not outcome.passed
    (failed,) = outcome.failed
    assert "on output 'y'" in failed and "'keep'" not in failed, failed

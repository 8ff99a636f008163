"""io.load / io.save: lazy external data, faithful round trips, atomic writes."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from conftest import make_tiny_model
from onnx import TensorProto, helper, numpy_helper

import nnopt_graph
from nnopt_graph.errors import CheckFailedError, PassFailedError
from nnopt_graph.io import load, save, staged_save
from nnopt_graph.pipeline import registry
from nnopt_graph.pipeline.base import Pass, PassContext, PassResult

TESTS_DIR = Path(__file__).resolve().parent


# Models.


def _big_weight_model(seed: int = 0) -> onnx.ModelProto:
    """MatMul+Add on ``x`` [N,64] with a 16 KiB weight (large enough to go external)."""
    rng = np.random.default_rng(seed)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["m"], name="matmul"),
            helper.make_node("Add", ["m", "b"], ["y"], name="add"),
        ],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])],
        initializer=[
            numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.standard_normal(64).astype(np.float32), "b"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _save_external(model: onnx.ModelProto, path: Path, location: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(
        model,
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=0,
    )
    assert (path.parent / location).is_file()
    return path


def _rich_model() -> onnx.ModelProto:
    """A model with everything a save must keep: opsets, metadata, functions, docs, If."""
    function = helper.make_function(
        "local",
        "AddTwice",
        ["a", "b"],
        ["c"],
        [
            helper.make_node("Add", ["a", "b"], ["t"]),
            helper.make_node("Add", ["t", "b"], ["c"]),
        ],
        opset_imports=[helper.make_opsetid("", 17)],
        doc_string="a + 2b",
    )
    then_graph = helper.make_graph(
        [helper.make_node("Relu", ["s"], ["then_out"], name="then_relu")],
        "then_branch",
        [],
        [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, [2, 3])],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Neg", ["s"], ["else_out"], name="else_neg")],
        "else_branch",
        [],
        [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, [2, 3])],
    )
    bias = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "bias")
    graph = helper.make_graph(
        [
            helper.make_node("AddTwice", ["x", "bias"], ["s"], name="add_twice", domain="local"),
            helper.make_node(
                "If",
                ["cond"],
                ["y"],
                name="branch",
                then_branch=then_graph,
                else_branch=else_graph,
                doc_string="pick a branch",
            ),
        ],
        "rich",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        initializer=[bias],
        doc_string="the main graph",
    )
    model = helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", 17),
            helper.make_opsetid("local", 1),
            helper.make_opsetid("com.example", 2),
        ],
        functions=[function],
        ir_version=8,
        producer_name="nnopt-tests",
        producer_version="1.2.3",
        doc_string="a model with everything",
    )
    helper.set_model_props(model, {"author": "tests", "license": "MIT"})
    onnx.checker.check_model(model, full_check=True)
    return model


def _weights(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(path)  # loads external data too
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _run(path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, feed)


# Lazy load.


def test_load_keeps_external_data_lazy(tmp_path: Path) -> None:
    path = _save_external(_big_weight_model(), tmp_path / "m.onnx", "w.data")
    model = load(path)
    for name in ("w", "b"):
        tensor = model.graph.initializers[name].const_value
        assert isinstance(tensor, ir.ExternalTensor), name
        assert tensor.raw is None, f"{name} was read at load time"
        assert tensor._array is None, f"{name} was read at load time"  # noqa: SLF001
        assert Path(tensor.base_dir) == tmp_path


def test_load_external_data_reads_correct_values(tmp_path: Path) -> None:
    proto = _big_weight_model()
    expected = numpy_helper.to_array(proto.graph.initializer[0])
    path = _save_external(proto, tmp_path / "m.onnx", "w.data")
    model = load(path)
    np.testing.assert_array_equal(model.graph.initializers["w"].const_value.numpy(), expected)


# Round trips.


def test_round_trip_keeps_model_properties(tmp_path: Path) -> None:
    source = tmp_path / "rich.onnx"
    onnx.save_model(_rich_model(), source)
    out = tmp_path / "out" / "rich.onnx"
    out.parent.mkdir()
    save(load(source), out)

    saved = onnx.load(out)
    onnx.checker.check_model(saved, full_check=True)
    assert {(o.domain, o.version) for o in saved.opset_import} == {
        ("", 17),
        ("local", 1),
        ("com.example", 2),
    }
    assert {p.key: p.value for p in saved.metadata_props} == {"author": "tests", "license": "MIT"}
    assert saved.producer_name == "nnopt-tests"
    assert saved.producer_version == "1.2.3"
    assert saved.doc_string == "a model with everything"
    assert saved.graph.doc_string == "the main graph"
    assert [(f.domain, f.name) for f in saved.functions] == [("local", "AddTwice")]
    assert saved.functions[0].doc_string == "a + 2b"
    if_node = next(n for n in saved.graph.node if n.op_type == "If")
    assert if_node.doc_string == "pick a branch"
    branches = {a.name: a.g for a in if_node.attribute}
    assert [n.op_type for n in branches["then_branch"].node] == ["Relu"]
    assert [n.op_type for n in branches["else_branch"].node] == ["Neg"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["rich.onnx"]

    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    for cond in (True, False):
        feed = {"x": x, "cond": np.array(cond)}
        np.testing.assert_array_equal(_run(out, feed)[0], _run(source, feed)[0])


def test_inline_model_saves_inline(tiny_model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    save(load(tiny_model_path), out)
    assert not (tmp_path / "out.onnx.data").exists()
    assert _weights(out).keys() == _weights(tiny_model_path).keys()


def test_external_model_saves_external(tmp_path: Path) -> None:
    source = _save_external(_big_weight_model(), tmp_path / "in" / "m.onnx", "w.data")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "m.onnx"
    save(load(source), out)

    assert sorted(p.name for p in out_dir.iterdir()) == ["m.onnx", "m.onnx.data"]
    proto = onnx.load(out, load_external_data=False)
    w = next(t for t in proto.graph.initializer if t.name == "w")
    assert w.data_location == TensorProto.EXTERNAL
    assert {e.key: e.value for e in w.external_data}["location"] == "m.onnx.data"
    reloaded = {k: v.const_value.numpy() for k, v in load(out).graph.initializers.items()}
    for name, array in _weights(source).items():
        np.testing.assert_array_equal(reloaded[name], array)


@pytest.mark.parametrize("location", ["w.data", "m.onnx.data"])
def test_save_in_place_with_external_data(tmp_path: Path, location: str) -> None:
    path = _save_external(_big_weight_model(), tmp_path / "m.onnx", location)
    expected = _weights(path)
    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    expected_out = _run(path, {"x": x})[0]
    for _ in range(3):  # alternating side files must not clobber the one being read
        model = load(path)
        save(model, path)
        for name, array in _weights(path).items():
            np.testing.assert_array_equal(array, expected[name], err_msg=name)
        np.testing.assert_array_equal(_run(path, {"x": x})[0], expected_out)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_staged_save_publishes_nothing_on_error(tiny_model_path: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "out.onnx"
    model = load(tiny_model_path)
    with pytest.raises(RuntimeError, match="verification failed"):
        with staged_save(model, out) as staged:
            assert staged.is_file()
            assert staged.parent.parent == out_dir
            raise RuntimeError("verification failed")
    assert list(out_dir.iterdir()) == []


def test_staged_save_external_publishes_nothing_on_error(tmp_path: Path) -> None:
    source = _save_external(_big_weight_model(), tmp_path / "in" / "m.onnx", "w.data")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(RuntimeError):
        with staged_save(load(source), out_dir / "m.onnx") as staged:
            assert (staged.parent / "m.onnx.data").is_file()
            raise RuntimeError("verification failed")
    assert list(out_dir.iterdir()) == []


def test_staged_save_error_keeps_existing_output(tiny_model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "existing.onnx"
    out.write_bytes(b"previous contents")
    with pytest.raises(RuntimeError):
        with staged_save(load(tiny_model_path), out):
            raise RuntimeError("verification failed")
    assert out.read_bytes() == b"previous contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.onnx", "tiny.onnx"]


# Passes that break the model: the job fails and writes nothing.


@dataclasses.dataclass(frozen=True)
class _ScaleOptions:
    factor: float = 3.0


class ScaleWeightPass(Pass):
    """Test only: multiply the first weight matrix or kernel by a factor, changing the outputs."""

    name = "test-scale-weight"
    Options = _ScaleOptions

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Scale the weight in place."""
        for value in model.graph.initializers.values():
            tensor = value.const_value
            if tensor is not None and len(tensor.shape) >= 2:
                value.const_value = ir.tensor(tensor.numpy() * self.options.factor, name=value.name)
                return PassResult({"weights-scaled": 1})
        return PassResult({"weights-scaled": 0})


class BreakOutputPass(Pass):
    """Test only: rewire the graph output to a value nothing produces."""

    name = "test-break-output"

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Replace the first graph output."""
        old = model.graph.outputs[0]
        model.graph.outputs[0] = ir.Value(name="undefined", type=old.type, shape=old.shape)
        return PassResult({"outputs-broken": 1})


TEST_PASSES = (ScaleWeightPass, BreakOutputPass)


@pytest.fixture
def breaking_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register the test passes for one test only, so other tests never see them."""
    registry.registered_passes()  # load the built-in passes first
    for cls in TEST_PASSES:
        monkeypatch.setitem(registry._REGISTRY, cls.name, cls)  # noqa: SLF001


@pytest.mark.usefixtures("breaking_passes")
def test_optimize_numeric_breakage_fails_check(tiny_model_path: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(CheckFailedError, match="not equal to the input"):
        nnopt_graph.optimize(tiny_model_path, out_dir / "out.onnx", "test-scale-weight", check=True)
    assert list(out_dir.iterdir()) == []


@pytest.mark.usefixtures("breaking_passes")
def test_optimize_structural_breakage_fails_verify_each(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(PassFailedError) as info:
        nnopt_graph.optimize(
            tiny_model_path,
            out_dir / "out.onnx",
            "infer-shapes,test-break-output",
            check=True,
            verify_each=True,
        )
    assert info.value.pass_name == "test-break-output"
    assert info.value.previous == ["infer-shapes"]
    assert list(out_dir.iterdir()) == []


@pytest.mark.usefixtures("breaking_passes")
def test_optimize_structural_breakage_fails_check(tiny_model_path: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(CheckFailedError, match="checker rejects"):
        nnopt_graph.optimize(tiny_model_path, out_dir / "out.onnx", "test-break-output", check=True)
    assert list(out_dir.iterdir()) == []


@pytest.mark.usefixtures("breaking_passes")
def test_optimize_harmless_test_pass_writes_output(tiny_model_path: Path, tmp_path: Path) -> None:
    # Control for the tests above: the same pass with factor 1 passes the check.
    out = tmp_path / "out.onnx"
    result = nnopt_graph.optimize(tiny_model_path, out, "test-scale-weight{factor=1.0}", check=True)
    assert result.output == out
    assert result.fidelity is not None and result.fidelity.cosine_min > 0.99999
    np.testing.assert_array_equal(_weights(out)["w"], _weights(tiny_model_path)["w"])


def test_optimize_in_place_with_external_data(tmp_path: Path) -> None:
    path = _save_external(_big_weight_model(), tmp_path / "m.onnx", "m.onnx.data")
    expected = _weights(path)
    result = nnopt_graph.optimize(path, path, check=True)
    assert result.fidelity is not None
    for name, array in _weights(path).items():
        np.testing.assert_array_equal(array, expected[name], err_msg=name)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.usefixtures("breaking_passes")
def test_optimize_in_place_failure_keeps_input(tmp_path: Path) -> None:
    path = _save_external(_big_weight_model(), tmp_path / "m.onnx", "m.onnx.data")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(CheckFailedError):
        nnopt_graph.optimize(path, path, "test-scale-weight{factor=-1.0}", check=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


_CLI_WITH_TEST_PASSES = """
import sys
sys.path.insert(0, {tests!r})
from nnopt_graph.cli import main
from nnopt_graph.pipeline import registry
import test_io
for cls in test_io.TEST_PASSES:
    registry.register_pass(cls)
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    ("pipeline", "extra", "expected"),
    [
        ("test-scale-weight", [], "not equal to the input"),
        ("test-break-output", [], "checker rejects"),
        ("test-break-output", ["--verify-each"], "pass 'test-break-output' failed"),
    ],
)
def test_cli_breakage_exits_1(
    tiny_model_path: Path, tmp_path: Path, pipeline: str, extra: list[str], expected: str
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    script = _CLI_WITH_TEST_PASSES.format(tests=str(TESTS_DIR))
    args = ["opt", str(tiny_model_path), str(out_dir / "out.onnx"), "-p", pipeline, *extra]
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("nnopt-graph: error: ")
    assert expected in lines[0]
    assert "Traceback" not in proc.stderr
    assert list(out_dir.iterdir()) == []


def test_tiny_model_fixture_is_valid(tiny_model_path: Path) -> None:
    model = onnx.load(tiny_model_path)
    assert [i.name for i in model.graph.input] == ["x"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 3, 8, 8]
    assert make_tiny_model().SerializeToString() == make_tiny_model().SerializeToString()

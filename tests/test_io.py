"""io.load / io.save: lazy external data, faithful round trips, atomic writes."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
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
from nnopt_graph.core import io as nnopt_io
from nnopt_graph.core.io import clean_stale_stages, load, referenced_data_files, save, staged_save
from nnopt_graph.errors import CheckFailedError, PassFailedError
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

    names = sorted(p.name for p in out_dir.iterdir())
    assert len(names) == 2 and names[0] == "m.onnx", names
    assert re.fullmatch(r"m\.onnx\.[0-9a-f]{16}\.data", names[1]), names
    proto = onnx.load(out, load_external_data=False)
    w = next(t for t in proto.graph.initializer if t.name == "w")
    assert w.data_location == TensorProto.EXTERNAL
    assert {e.key: e.value for e in w.external_data}["location"] == names[1]
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
            assert [p.name for p in staged.parent.glob("m.onnx.*.data")] != []
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
    result = nnopt_graph.optimize(path, path, check=True, in_place=True)
    assert result.fidelity is not None
    for name, array in _weights(path).items():
        np.testing.assert_array_equal(array, expected[name], err_msg=name)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.usefixtures("breaking_passes")
def test_optimize_in_place_failure_keeps_input(tmp_path: Path) -> None:
    path = _save_external(_big_weight_model(), tmp_path / "m.onnx", "m.onnx.data")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(CheckFailedError):
        nnopt_graph.optimize(
            path, path, "test-scale-weight{factor=-1.0}", check=True, in_place=True
        )
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


# Fault injection: an interrupt at every filesystem step of a two-file write.

_FS_STEPS = (
    (os, "mkdir"),
    (os, "open"),
    (os, "fsync"),
    (os, "replace"),
    (os, "rename"),
    (os, "unlink"),
    (os, "remove"),
    (os, "rmdir"),
    (nnopt_io, "_write_model"),
    (nnopt_io, "_file_digest"),
    (nnopt_io, "_rename_payload"),
)


class _Interrupted(KeyboardInterrupt):
    """What the injected fault raises (a BaseException, like Ctrl-C)."""


class _Injector:
    """Counts filesystem steps; at step ``fail_at`` raises, or exits the process at once."""

    def __init__(self, fail_at: int | None = None, *, hard_exit: bool = False) -> None:
        self.fail_at = fail_at
        self.hard_exit = hard_exit
        self.count = 0
        self.fired = False
        self.names: list[str] = []

    def wrap(self, owner: object, name: str) -> object:
        original = getattr(owner, name)

        def step(*args: object, **kwargs: object) -> object:
            index = self.count
            self.count += 1
            self.names.append(name)
            if index == self.fail_at:
                self.fired = True
                if self.hard_exit:
                    os._exit(17)  # the process dies here: no finally, no cleanup
                raise _Interrupted(f"injected at step {index} ({name})")
            return original(*args, **kwargs)

        return step

    def install(self, monkeypatch: pytest.MonkeyPatch | None) -> None:
        for owner, name in _FS_STEPS:
            wrapped = self.wrap(owner, name)
            if monkeypatch is None:
                setattr(owner, name, wrapped)
            else:
                monkeypatch.setattr(owner, name, wrapped)


def _write_old_pair(out: Path, scheme: str) -> None:
    if scheme == "ours":
        save(ir.serde.deserialize_model(_big_weight_model(seed=0)), out, external_data=True)
    else:  # what onnx and older nnopt-graph write: OUT + OUT.data
        _save_external(_big_weight_model(seed=0), out, out.name + ".data")


def _state(out: Path, x: np.ndarray) -> np.ndarray:
    """The output of the model at ``out``; its side files must all exist."""
    for data in referenced_data_files(out):
        assert data.is_file(), f"{out} refers to missing {data.name}"
    return _run(out, {"x": x})[0]


def _check_old_or_new(folder: Path, out: Path, x: np.ndarray, old: np.ndarray, new: np.ndarray):
    result = _state(out, x)
    is_old = np.array_equal(result, old)
    is_new = np.array_equal(result, new)
    assert is_old or is_new, "mixed pair: the numbers are neither the old nor the new model's"
    # The next write's start removes what the interrupt left; the pair alone remains.
    clean_stale_stages(out)
    expected = {out.name} | {p.name for p in referenced_data_files(out)}
    assert {p.name for p in folder.iterdir()} == expected
    np.testing.assert_array_equal(_state(out, x), result)
    return "old" if is_old else "new"


@pytest.mark.parametrize("scheme", ["ours", "legacy"])
def test_interrupt_at_every_filesystem_step_leaves_old_or_new_pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scheme: str
) -> None:
    x = np.random.default_rng(3).standard_normal((2, 64)).astype(np.float32)
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "m.onnx"
    new_model = _big_weight_model(seed=1)
    _write_old_pair(out, scheme)
    old = _state(out, x)
    new = _run_proto(new_model, x)
    assert not np.array_equal(old, new)

    counter = _Injector()
    with monkeypatch.context() as patch:
        counter.install(patch)
        save(ir.serde.deserialize_model(new_model), out, external_data=True)
    steps = counter.count
    assert steps >= 8, counter.names  # stage, write, hash, rename x2, fsync, unlink, rmtree
    outcomes = []
    for k in range(steps):
        for p in folder.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        _write_old_pair(out, scheme)
        injector = _Injector(k)
        with monkeypatch.context() as patch:
            injector.install(patch)
            try:
                save(ir.serde.deserialize_model(new_model), out, external_data=True)
            except _Interrupted:
                pass
        assert injector.fired, f"step {k} was not reached"
        outcomes.append(_check_old_or_new(folder, out, x, old, new))
    # Both outcomes happen: early interrupts keep the old pair, late ones the new.
    assert outcomes[0] == "old" and outcomes[-1] == "new", outcomes
    assert "old" in outcomes and "new" in outcomes


def test_process_killed_at_every_filesystem_step_leaves_old_or_new_pair(tmp_path: Path) -> None:
    """Like the test above, but the process exits at the step: no cleanup code runs."""
    x = np.random.default_rng(4).standard_normal((2, 64)).astype(np.float32)
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "m.onnx"
    new_model = _big_weight_model(seed=1)
    _write_old_pair(out, "ours")
    old = _state(out, x)
    new = _run_proto(new_model, x)

    counter = _Injector()
    pid = os.fork()
    if pid == 0:  # count the steps in a child, so the parent's os stays untouched
        counter.install(None)
        save(ir.serde.deserialize_model(new_model), out, external_data=True)
        os._exit(min(counter.count, 250))
    _, status = os.waitpid(pid, 0)
    steps = os.waitstatus_to_exitcode(status)
    assert 8 <= steps < 250
    outcomes = []
    for k in range(steps):
        for p in folder.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        _write_old_pair(out, "ours")
        pid = os.fork()
        if pid == 0:
            _Injector(k, hard_exit=True).install(None)
            try:
                save(ir.serde.deserialize_model(new_model), out, external_data=True)
            finally:
                os._exit(3)  # the step was never reached
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 17, f"step {k} was not reached"
        leftovers = {p.name for p in folder.iterdir()} - {out.name}
        outcomes.append(_check_old_or_new(folder, out, x, old, new))
        if outcomes[-1] == "old" and k > 0:
            assert leftovers, "an interrupted write leaves its staging folder"
    assert outcomes[0] == "old" and outcomes[-1] == "new", outcomes


def _run_proto(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_stale_stage_of_a_live_writer_is_kept(tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    save(ir.serde.deserialize_model(_big_weight_model()), out, external_data=True)
    orphan = tmp_path / "m.onnx.0123456789abcdef.data"
    orphan.write_bytes(b"a concurrent writer's side file, not yet published")
    with nnopt_io._stage_folder(out) as stage:  # noqa: SLF001  (a live writer)
        assert clean_stale_stages(out) == []
        assert stage.is_dir() and orphan.is_file()
    # Once the writer is gone, its orphan goes too.
    assert clean_stale_stages(out) == [orphan]
    assert not orphan.exists()


def test_cleanup_leaves_foreign_files_alone(tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    save(ir.serde.deserialize_model(_big_weight_model()), out, external_data=True)
    foreign = [tmp_path / "w.data", tmp_path / "other.onnx.0123456789abcdef.data"]
    for f in foreign:
        f.write_bytes(b"x")
    (tmp_path / ".other-hidden").mkdir()
    assert clean_stale_stages(out) == []
    assert all(f.exists() for f in foreign)


def test_overwrite_removes_old_side_file_only_when_owned(tmp_path: Path) -> None:
    shared = _save_external(_big_weight_model(), tmp_path / "a.onnx", "shared.data")
    out = tmp_path / "b.onnx"
    _save_external(_big_weight_model(), out, "shared.data")  # b shares a's side file
    save(ir.serde.deserialize_model(_big_weight_model(seed=2)), out, external_data=True)
    assert (tmp_path / "shared.data").is_file(), "a foreign side file must survive"
    x = np.ones((1, 64), np.float32)
    _state(shared, x)
    legacy = tmp_path / "c.onnx"
    _save_external(_big_weight_model(), legacy, "c.onnx.data")
    save(ir.serde.deserialize_model(_big_weight_model(seed=2)), legacy, external_data=True)
    assert not (tmp_path / "c.onnx.data").exists(), "the output's own old side file is removed"


def test_same_content_twice_keeps_one_side_file(tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    for _ in range(2):
        save(ir.serde.deserialize_model(_big_weight_model()), out, external_data=True)
    assert len(referenced_data_files(out)) == 1
    assert sorted(p.name for p in tmp_path.iterdir())[0] == "m.onnx"
    assert len(list(tmp_path.iterdir())) == 2


# Empty optional outputs survive a save.


def _split_model(with_if: bool) -> onnx.ModelProto:
    split = helper.make_node("Split", ["X"], ["Y", ""], axis=0, num_outputs=2)
    nodes = [split]
    if with_if:  # the same node inside a subgraph
        body = helper.make_graph(
            [helper.make_node("Split", ["X"], ["Z", ""], axis=0, num_outputs=2)],
            "then",
            [],
            [helper.make_tensor_value_info("Z", TensorProto.FLOAT, [2, 6])],
        )
        nodes.append(helper.make_node("If", ["c"], ["W"], then_branch=body, else_branch=body))
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4, 6])]
    outputs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 6])]
    if with_if:
        inputs.append(helper.make_tensor_value_info("c", TensorProto.BOOL, []))
        outputs.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, [2, 6]))
    graph = helper.make_graph(nodes, "split", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


@pytest.mark.parametrize("with_if", [False, True])
def test_save_keeps_trailing_empty_optional_outputs(tmp_path: Path, with_if: bool) -> None:
    out = tmp_path / "m.onnx"
    save(ir.serde.deserialize_model(_split_model(with_if)), out)
    proto = onnx.load(out)
    assert list(proto.graph.node[0].output) == ["Y", ""]
    if with_if:
        assert list(proto.graph.node[1].attribute[0].g.node[0].output) == ["Z", ""]
    onnx.checker.check_model(proto, full_check=True)


def test_plain_ir_serializer_drops_them(tmp_path: Path) -> None:
    # Why io.save restores them: the IR's serializer alone drops the empty output.
    proto = ir.serde.serialize_model(ir.serde.deserialize_model(_split_model(False)))
    assert list(proto.graph.node[0].output) == ["Y"]


def test_trailing_empty_outputs_are_found_in_functions_only() -> None:
    from nnopt_graph.core.empty_outputs import has_trailing_empty_outputs

    function = helper.make_function(
        "local",
        "Half",
        ["X"],
        ["Y"],
        [helper.make_node("Split", ["X"], ["Y", ""], axis=0, num_outputs=2)],
        [helper.make_opsetid("", 18)],
    )
    graph = helper.make_graph(
        [helper.make_node("Half", ["X"], ["Y"], domain="local")],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4, 6])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 6])],
    )
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("local", 1)]
    proto = helper.make_model(graph, opset_imports=opsets, ir_version=8, functions=[function])
    assert has_trailing_empty_outputs(ir.serde.deserialize_model(proto))
    proto.functions[0].node[0].output[:] = ["Y"]
    proto.functions[0].node[0].ClearField("attribute")
    assert not has_trailing_empty_outputs(ir.serde.deserialize_model(proto))


def _external_tensor(name: str) -> onnx.TensorProto:
    tensor = numpy_helper.from_array(np.ones(4, np.float32), name)
    onnx.external_data_helper.set_external_data(tensor, "w.data", offset=0, length=16)
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    return tensor


@pytest.mark.parametrize("where", ["none", "initializer", "subgraph", "attribute"])
def test_external_tensors_are_found_wherever_they_are(where: str) -> None:
    from nnopt_graph.core.io import _has_external_tensors
    from nnopt_graph.core.protos import proto_graphs

    const = helper.make_node(
        "Constant", [], ["k"], value=numpy_helper.from_array(np.ones(4, np.float32))
    )
    body = helper.make_graph(
        [helper.make_node("Add", ["x", "b"], ["z"])],
        "then",
        [],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [4])],
        [numpy_helper.from_array(np.ones(4, np.float32), "b")],
    )
    graph = helper.make_graph(
        [const, helper.make_node("If", ["c"], ["y"], then_branch=body, else_branch=body)],
        "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [numpy_helper.from_array(np.ones(4, np.float32), "x")],
    )
    if where == "initializer":
        graph.initializer[0].CopyFrom(_external_tensor("x"))
    elif where == "subgraph":
        graph.node[1].attribute[0].g.initializer[0].CopyFrom(_external_tensor("b"))
    elif where == "attribute":
        graph.node[0].attribute[0].t.CopyFrom(_external_tensor("k"))
    proto = helper.make_model(graph)
    assert _has_external_tensors(list(proto_graphs(proto.graph))) is (where != "none")

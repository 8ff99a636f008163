"""Pass manager and instruments: records, failure naming, verify-each, printing."""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import pytest

from nnopt_graph.errors import PassFailedError
from nnopt_graph.pipeline.base import Pass, PassContext, PassResult
from nnopt_graph.pipeline.grammar import Pipeline
from nnopt_graph.pipeline.instruments import (
    DumpDirInstrument,
    PrintIRAfterInstrument,
    StatsInstrument,
    TimePassesInstrument,
    VerifyEachInstrument,
)
from nnopt_graph.pipeline.manager import PassManager
from nnopt_graph.pipeline.registry import register_pass

TEXT = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,4] x) => (float[N,4] y) { a = Identity (x) r = Relu (a) dead = Neg (r) y = Abs (r) }"""


def _model() -> ir.Model:
    return ir.serde.deserialize_model(onnx.parser.parse_model(TEXT))


@register_pass
class _RaisePass(Pass):
    """Test-only pass that raises."""

    name = "test-raise"

    def run(self, model, context: PassContext) -> PassResult:
        raise ValueError("boom")


@register_pass
class _DanglingPass(Pass):
    """Test-only pass that makes a node read a value nobody defines."""

    name = "test-dangling-input"

    def run(self, model, context: PassContext) -> PassResult:
        node = model.graph.node(len(model.graph) - 1)
        node.replace_input_with(0, ir.Value(name="ghost"))
        return PassResult({"inputs-broken": 1})


@register_pass
class _LyingPass(Pass):
    """Test-only pass whose postcondition fails."""

    name = "test-bad-ensures"

    def run(self, model, context: PassContext) -> PassResult:
        return PassResult()

    def ensures(self, model) -> None:
        raise AssertionError("postcondition violated")


def test_records_per_pass():
    records = PassManager(Pipeline.parse("default")).run(_model())
    assert [r.name for r in records] == Pipeline.parse("default").names()
    by_name = {r.name: r for r in records}
    assert by_name["eliminate-no-ops"].stats["nodes-removed"] == 1
    assert by_name["eliminate-dead-code"].stats["nodes-removed"] == 1
    assert all(
        r.modified == any(v for k, v in r.stats.items() if not k.startswith("skipped-"))
        for r in records
    )
    assert all(r.seconds >= 0 for r in records)


def test_failure_names_pass_and_predecessors():
    with pytest.raises(PassFailedError) as info:
        PassManager(Pipeline.parse("eliminate-no-ops,infer-shapes,test-raise")).run(_model())
    message = str(info.value)
    assert (
        "test-raise" in message
        and "eliminate-no-ops, infer-shapes" in message
        and "boom" in message
    )


def test_ensures_failure_is_reported():
    with pytest.raises(PassFailedError, match="postcondition violated"):
        PassManager(Pipeline.parse("test-bad-ensures")).run(_model())


def test_verify_each_catches_broken_model_and_names_pass():
    with pytest.raises(PassFailedError) as info:
        PassManager(
            Pipeline.parse("eliminate-no-ops,test-dangling-input,infer-shapes"),
            instruments=[VerifyEachInstrument()],
        ).run(_model())
    assert info.value.pass_name == "test-dangling-input"
    assert info.value.previous == ["eliminate-no-ops"]
    assert "ghost" in str(info.value)


def test_without_verify_each_the_breakage_goes_unnoticed_by_the_manager():
    PassManager(Pipeline.parse("test-dangling-input")).run(_model())


def test_instruments_print_timing_stats_and_ir(tmp_path):
    stream = io.StringIO()
    PassManager(
        Pipeline.parse("default"),
        instruments=[
            TimePassesInstrument(stream),
            StatsInstrument(stream),
            PrintIRAfterInstrument({"eliminate-no-ops"}, stream),
            DumpDirInstrument(tmp_path),
        ],
    ).run(_model())
    text = stream.getvalue()
    assert "pass execution timing" in text and "statistics" in text
    assert "IR after eliminate-no-ops" in text and "IR after infer-shapes" not in text
    dumps = sorted(p.name for p in tmp_path.iterdir())
    assert dumps[0] == "01-lift-constants.onnx" and len(dumps) == len(
        Pipeline.parse("default").passes
    )
    onnx.checker.check_model(onnx.load(tmp_path / dumps[-1]), full_check=True)


def test_default_pipeline_is_idempotent_on_small_model():
    model = _model()
    PassManager(Pipeline.parse("default")).run(model)
    second = PassManager(Pipeline.parse("default")).run(model)
    assert not any(r.modified for r in second), [r.stats for r in second if r.modified]
    proto = ir.serde.serialize_model(model)
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    (y,) = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )
    np.testing.assert_array_equal(y, np.abs(np.maximum(x, 0)))

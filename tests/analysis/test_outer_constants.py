"""Shapes inside If branches whose shape constants live in the outer graph (deduplicated)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from nnopt_graph.analysis.channels import analyze_channels
from nnopt_graph.analysis.channels.analyzer import _localize_outer_constants
from nnopt_graph.passes.prune.channels import PruneChannelsPass
from nnopt_graph.pipeline.base import PassContext
from nnopt_graph.runtime.data import Dataset


def _branch(name: str, seed: int) -> onnx.GraphProto:
    """Unsqueeze(x, outer 'axes') -> Conv 3->16 -> Relu -> Conv 16->4, local weights."""
    rng = np.random.default_rng(seed)
    return helper.make_graph(
        [
            helper.make_node("Unsqueeze", ["x", "axes"], [f"{name}_u"]),
            helper.make_node("Conv", [f"{name}_u", f"{name}_w1"], [f"{name}_a"]),
            helper.make_node("Relu", [f"{name}_a"], [f"{name}_r"]),
            helper.make_node("Conv", [f"{name}_r", f"{name}_w2"], [f"{name}_y"]),
        ],
        name,
        [],
        [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, ["N", 4, 1, 6])],
        [
            numpy_helper.from_array(
                rng.standard_normal([16, 3, 1, 3]).astype(np.float32), f"{name}_w1"
            ),
            numpy_helper.from_array(
                rng.standard_normal([4, 16, 1, 1]).astype(np.float32), f"{name}_w2"
            ),
        ],
    )


def _model(extra_outer: np.ndarray | None = None) -> onnx.ModelProto:
    """An If whose two branches read the Unsqueeze axes from the main graph, as dedup leaves it."""
    inits = [numpy_helper.from_array(np.array([2], np.int64), "axes")]
    then, other = _branch("then", 0), _branch("else", 1)
    if extra_outer is not None:
        inits.append(numpy_helper.from_array(extra_outer, "big"))
        then.node.append(helper.make_node("Add", ["then_y", "big"], ["then_z"]))
        then.output[0].name = "then_z"
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8]),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 1, 6])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_branch_groups_are_found_when_their_axes_are_outer_constants():
    analysis = analyze_channels(ir.serde.deserialize_model(_model()), {"x": [2, 3, 8]})
    prunable = {g.graph.name for g in analysis.groups if not g.frozen}
    assert prunable == {"then", "else"}


def test_the_analyzed_model_keeps_reading_the_outer_axes():
    """Negative: the copies live in the clone that shapes are inferred on, not in the model."""
    model = ir.serde.deserialize_model(_model())
    analyze_channels(model, {"x": [2, 3, 8]})
    for graph in model.graphs():
        if graph is not model.graph:
            unsqueeze = next(n for n in graph if n.op_type == "Unsqueeze")
            assert unsqueeze.inputs[1] is model.graph.initializers["axes"]
            assert not any(name.startswith("axes") for name in graph.initializers)


def test_large_outer_constants_are_not_copied():
    """Negative: only shape-sized constants (at most 4096 elements) are copied."""
    clone = ir.serde.deserialize_model(_model(np.zeros([1, 4, 64, 64], np.float32)))
    assert _localize_outer_constants(clone) == 2  # 'axes' in each branch, not 'big'
    then = next(g for g in clone.graphs() if g.name == "then")
    add = next(n for n in then if n.op_type == "Add")
    assert add.inputs[1] is clone.graph.initializers["big"]


def test_branch_groups_prune_and_the_model_runs():
    proto = _model()
    model = ir.serde.deserialize_model(proto)
    x = np.random.default_rng(0).standard_normal([4, 3, 8]).astype(np.float32)
    data = Dataset({"x": x, "c": np.ones([4], bool)}, "t")
    result = PruneChannelsPass(ratio=0.5, protect_first=False, reconstruct=False).run(
        model, PassContext(calibration=data)
    )
    assert result.stats["groups-pruned"] == 2
    pruned = ir.serde.serialize_model(model)
    onnx.checker.check_model(pruned, full_check=True)
    session = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"])
    for flag in (True, False):
        (y,) = session.run(None, {"x": x[:1], "c": np.array(flag)})
        assert y.shape == (1, 4, 1, 6)


def test_analysis_leaves_the_source_proto_intact():
    """Negative: the copies get their own tensors; the proto the model came from is unchanged."""
    proto = _model()
    before = proto.SerializeToString()
    analyze_channels(ir.serde.deserialize_model(proto), {"x": [2, 3, 8]})
    assert proto.SerializeToString() == before
    ir.serde.deserialize_model(proto).clone()  # every input still resolves

"""quantize-int8 inside an If: the branch every calibration sample takes is quantized
(silero-vad keeps its whole network in an If on the sample rate; issue #13)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper
from passes_util import op_types, ort_outputs, to_proto
from test_quantize_int8 import _run, _vi, _w

import nnopt_graph.passes.quantize.int8.branches as branches_module
from nnopt_graph.passes.quantize.int8.branches import inline, restore, taken_branches
from nnopt_graph.runtime.data import Dataset
from nnopt_graph.runtime.services import RuntimeServices

CHANNELS, SIZE = 16, 24


def _convs(prefix, blocks=3):
    """Conv 3x3 + Relu, repeated, on the outer-scope input ``x``: a branch body's nodes."""
    nodes, h = [], "x"
    for i in range(blocks):
        nodes += [
            helper.make_node(
                "Conv",
                [h, f"{prefix}w{i}", f"{prefix}b{i}"],
                [f"{prefix}c{i}"],
                name=f"{prefix}conv{i}",
                pads=[1, 1, 1, 1],
            ),
            helper.make_node("Relu", [f"{prefix}c{i}"], [f"{prefix}r{i}"], name=f"{prefix}relu{i}"),
        ]
        h = f"{prefix}r{i}"
    nodes.append(helper.make_node("Identity", [h], [f"{prefix}out"], name=f"{prefix}identity"))
    return nodes, f"{prefix}out"


def branchy(else_name="e_out", clash=False, pass_through=False):
    """y = If(rate == 16000) then convs(x) else x * 0.5 (silero-vad's shape of model)."""
    then_nodes, then_out = _convs("t_")
    if clash:  # a then-branch node named like the main graph's (values cannot be: SSA)
        then_nodes[1].name = "is_16k"
    else_nodes = [helper.make_node("Mul", ["x", "half"], [else_name], name="e_mul")]
    shape = [1, CHANNELS, SIZE, SIZE]
    then_outputs, then_inits = [_vi(then_out, shape)], []
    if pass_through:  # a second output that is the branch's own initializer, no node's
        then_outputs.append(_vi("t_zero", []))
        then_inits.append(helper.make_tensor("t_zero", TensorProto.FLOAT, [], [0.0]))
        else_nodes.append(helper.make_node("ReduceMax", ["x"], ["e_x"], name="e_max", keepdims=0))
    then_graph = helper.make_graph(then_nodes, "then", [], then_outputs, initializer=then_inits)
    else_outputs = [_vi(else_name, shape)] + ([_vi("e_x", [])] if pass_through else [])
    else_graph = helper.make_graph(else_nodes, "else", [], else_outputs)
    inits = [helper.make_tensor("rate16k", TensorProto.INT64, [], [16000])]
    inits.append(helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]))
    for i in range(3):
        inits += [_w(f"t_w{i}", CHANNELS, CHANNELS, 3, 3), _w(f"t_b{i}", CHANNELS)]
    nodes = [
        helper.make_node("Equal", ["rate", "rate16k"], ["cond"], name="is_16k"),
        helper.make_node(
            "If",
            ["cond"],
            ["y", "y_x"] if pass_through else ["y"],
            name="by_rate",
            then_branch=then_graph,
            else_branch=else_graph,
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [_vi("x", shape), _vi("rate", [], TensorProto.INT64)],
        [_vi("y", shape)] + ([_vi("y_x", [])] if pass_through else []),
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def _data(rates, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "x": rng.random([len(rates), 1, CHANNELS, SIZE, SIZE]).astype(np.float32),
        "rate": np.array(rates, np.int64),
    }
    return Dataset(arrays, "test", frozenset(arrays))


def _feeds(rate, seed=9):
    x = np.random.default_rng(seed).random([1, CHANNELS, SIZE, SIZE]).astype(np.float32)
    return {"x": x, "rate": np.array(rate, np.int64)}


def _branch_ops(proto, branch):
    if_node = next(n for n in proto.graph.node if n.op_type == "If")
    body = next(a.g for a in if_node.attribute if a.name == branch)
    return [n.op_type for n in body.node]


def _optimized_branch_ops(proto, branch, tmp_path):
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "opt.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return _branch_ops(onnx.load(str(tmp_path / "opt.onnx")), branch)


def test_taken_branch_runs_int8_convs_with_bounded_error(tmp_path):
    proto = branchy()
    model, result, _, _ = _run(proto, data=_data([16000] * 8), speed_check=True)
    assert result.modified and result.stats["nodes-quantized"] == 3
    taken = next(d for d in result.decisions if "if-branches" in d)["taken"]
    assert taken == {"by_rate": "then_branch"}
    after = to_proto(model)
    assert [n.op_type for n in after.graph.node] == ["Equal", "If"]
    assert _branch_ops(after, "else_branch") == ["Mul"]  # no data reached it: float
    assert _optimized_branch_ops(after, "then_branch", tmp_path).count("QLinearConv") == 3
    for seed in range(4):  # per sample, on inputs the calibration did not see
        feeds = _feeds(16000, seed)
        ref, out = ort_outputs(proto, feeds)[0], ort_outputs(after, feeds)[0]
        assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 0.05
    other = _feeds(8000)
    np.testing.assert_array_equal(ort_outputs(after, other)[0], other["x"] * 0.5)


def test_second_run_leaves_the_quantized_branch_alone():
    model, first, _, _ = _run(branchy(), data=_data([16000] * 8), speed_check=True)
    assert first.modified
    again, second, _, _ = _run(to_proto(model), data=_data([16000] * 8), speed_check=True)
    assert not second.modified and op_types(again) == op_types(model)


def test_samples_taking_both_branches_leave_the_model_float():
    proto = branchy()
    model, result, _, _ = _run(proto, data=_data([16000, 8000] * 4), speed_check=True)
    assert not result.modified and op_types(model) == op_types(proto)
    assert result.stats["skipped-nodes-in-subgraphs"] == 3


def test_branch_node_named_like_a_main_graph_node_is_not_inlined():
    proto = branchy(clash=True)
    model, result, _, _ = _run(proto, data=_data([16000] * 8), speed_check=True)
    assert not result.modified and op_types(model) == op_types(proto)
    assert not any("if-branches" in d for d in result.decisions)


def test_condition_that_is_a_graph_input_is_not_followed():
    proto = branchy()
    del proto.graph.node[0]  # the If now reads 'cond' as a graph input
    proto.graph.input.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))
    model = ir.serde.deserialize_model(proto)
    assert taken_branches(model, _data([16000] * 2), RuntimeServices().capture) == {}


def test_inline_then_restore_gives_back_the_same_model():
    proto = branchy()
    model = ir.serde.deserialize_model(proto)
    branches = taken_branches(model, _data([16000] * 2), RuntimeServices().capture)
    assert branches == {"by_rate": "then_branch"}
    inlined = inline(model, branches)
    flat = to_proto(model)
    assert "If" not in [n.op_type for n in flat.graph.node]
    restored = to_proto(restore(model, inlined))
    assert op_types(restored) == op_types(proto)
    for rate in (16000, 8000):
        feeds = _feeds(rate)
        np.testing.assert_array_equal(ort_outputs(restored, feeds)[0], ort_outputs(proto, feeds)[0])
    # inlined, ORT may pick other kernels (NCHWc) than inside the If: equal to rounding
    flat_out, ref = ort_outputs(flat, _feeds(16000))[0], ort_outputs(proto, _feeds(16000))[0]
    np.testing.assert_allclose(flat_out, ref, rtol=1e-5, atol=1e-4)


def test_branch_output_that_no_node_produces_is_not_inlined():
    proto = branchy(pass_through=True)
    model, result, _, _ = _run(proto, data=_data([16000] * 8), speed_check=True)
    assert not result.modified and op_types(model) == op_types(proto)
    assert not any("if-branches" in d for d in result.decisions)


def test_branch_that_cannot_go_back_leaves_the_model_float_and_says_so(monkeypatch):
    monkeypatch.setattr(branches_module, "_branch_side", lambda *args: None)
    proto = branchy()
    model, result, _, _ = _run(proto, data=_data([16000] * 8), speed_check=True)
    assert not result.modified and op_types(model) == op_types(proto)
    assert result.stats == {"nodes-quantized": 0, "skipped-branch-not-restorable": 1}
    assert any("could not go back" in note for note in result.notes)

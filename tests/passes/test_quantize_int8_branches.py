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


def _conv_relu(prefix, src):
    """One Conv 3x3 + Relu on ``src``; its nodes and output name."""
    nodes = [
        helper.make_node(
            "Conv",
            [src, f"{prefix}w", f"{prefix}b"],
            [f"{prefix}c"],
            name=f"{prefix}conv",
            pads=[1, 1, 1, 1],
        ),
        helper.make_node("Relu", [f"{prefix}c"], [f"{prefix}r"], name=f"{prefix}relu"),
    ]
    return nodes, f"{prefix}r"


def main_conv_then_if(nested=False):
    """r = relu(conv(x)); y = If(rate == 16000) then conv(r) else r * 0.5.

    silero-vad's decoder: the untaken branch reads the main graph's Conv output in float.
    With ``nested`` the If stands inside the taken branch of an outer If on the rate.
    """
    shape = [1, CHANNELS, SIZE, SIZE]
    main_nodes, r = _conv_relu("m_", "x")
    then_nodes, then_out = _conv_relu("t_", r)
    then_nodes.append(helper.make_node("Identity", [then_out], ["t_out"], name="t_identity"))
    inner = helper.make_node(
        "If",
        ["cond"],
        ["y_inner" if nested else "y"],
        name="by_rate",
        then_branch=helper.make_graph(then_nodes, "then", [], [_vi("t_out", shape)]),
        else_branch=helper.make_graph(
            [helper.make_node("Mul", [r, "half"], ["e_out"], name="e_mul")],
            "else",
            [],
            [_vi("e_out", shape)],
        ),
    )
    inits = [helper.make_tensor("rate16k", TensorProto.INT64, [], [16000])]
    inits.append(helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]))
    for prefix in ("m_", "t_"):
        inits += [_w(f"{prefix}w", CHANNELS, CHANNELS, 3, 3), _w(f"{prefix}b", CHANNELS)]
    nodes = [helper.make_node("Equal", ["rate", "rate16k"], ["cond"], name="is_16k")]
    if nested:
        body = main_nodes + [
            inner,
            helper.make_node("Identity", ["y_inner"], ["o_out"], name="o_identity"),
        ]
        nodes.append(
            helper.make_node(
                "If",
                ["cond"],
                ["y"],
                name="outer",
                then_branch=helper.make_graph(body, "outer_then", [], [_vi("o_out", shape)]),
                else_branch=helper.make_graph(
                    [helper.make_node("Identity", ["x"], ["oe_out"], name="oe_identity")],
                    "outer_else",
                    [],
                    [_vi("oe_out", shape)],
                ),
            )
        )
    else:
        nodes += main_nodes + [inner]
    graph = helper.make_graph(
        nodes,
        "g",
        [_vi("x", shape), _vi("rate", [], TensorProto.INT64)],
        [_vi("y", shape)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def _float_convs(proto, tmp_path):
    """Conv kernels ONNX Runtime runs in float, in the graph or any branch."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "opt.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    found = []

    def walk(graph):
        for node in graph.node:
            if node.op_type in ("Conv", "FusedConv"):
                found.append(node.name)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)

    walk(onnx.load(str(tmp_path / "opt.onnx")).graph)
    return found


def _within_5_percent(proto, after, rates=(16000, 8000)):
    for rate in rates:
        for seed in range(3):
            feeds = _feeds(rate, seed)
            ref, out = ort_outputs(proto, feeds)[0], ort_outputs(after, feeds)[0]
            assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 0.05


def test_untaken_branch_reads_the_quantized_main_value_so_its_conv_fuses(tmp_path):
    proto = main_conv_then_if()
    assert len(_float_convs(proto, tmp_path)) == 2
    model, result, _, _ = _run(proto, data=_data([16000] * 8), speed_check=True)
    assert result.modified and result.stats["nodes-quantized"] == 2
    after = to_proto(model)
    assert _branch_ops(after, "else_branch") == ["DequantizeLinear", "Mul"]
    assert _float_convs(after, tmp_path) == []  # both run as QLinearConv
    _within_5_percent(proto, after)  # the 8 kHz path too: it reads the same tensor


def test_quantize_of_a_main_value_stays_in_the_main_graph():
    model, _, _, _ = _run(main_conv_then_if(), data=_data([16000] * 8), speed_check=True)
    after = to_proto(model)
    relu_users = [n.op_type for n in after.graph.node if "m_r" in n.input]
    assert relu_users == ["QuantizeLinear"]  # the float value's one consumer
    if_node = next(n for n in after.graph.node if n.op_type == "If")
    then = next(a.g for a in if_node.attribute if a.name == "then_branch")
    assert not [n for n in then.node if "m_r" in n.input]  # it reads the Dequantize


def test_if_inside_the_taken_branch_is_followed(tmp_path):
    proto = main_conv_then_if(nested=True)
    model, result, _, _ = _run(proto, data=_data([16000] * 8), speed_check=True)
    assert result.modified and result.stats["nodes-quantized"] == 2
    taken = next(d for d in result.decisions if "if-branches" in d)["taken"]
    assert taken == {"outer": "then_branch", "by_rate": "then_branch"}
    after = to_proto(model)
    assert _branch_ops(after, "else_branch") == ["Identity"]  # the outer untaken: float
    assert _float_convs(after, tmp_path) == []
    _within_5_percent(proto, after, rates=(16000,))
    other = _feeds(8000)
    np.testing.assert_array_equal(ort_outputs(after, other)[0], other["x"])


def test_nested_if_is_idempotent():
    model, first, _, _ = _run(main_conv_then_if(nested=True), data=_data([16000] * 8))
    assert first.modified
    again, second, _, _ = _run(to_proto(model), data=_data([16000] * 8))
    assert not second.modified and op_types(again) == op_types(model)

"""quantize-dynamic-int8 on LSTMs: DynamicQuantizeLSTM, folded weight cones, If bodies, skips."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper
from passes_util import op_types, ort_outputs

from nnopt_graph.pipeline.base import PassContext
from nnopt_graph.pipeline.grammar import PassSpec
from nnopt_graph.runtime.data import Dataset

HIDDEN, INPUT, STEPS = 64, 48, 12


def _weights(seed: int = 0, hidden: int = HIDDEN, inp: int = INPUT):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((1, 4 * hidden, inp)) * 0.2).astype(np.float32)
    r = (rng.standard_normal((1, 4 * hidden, hidden)) * 0.2).astype(np.float32)
    b = (rng.standard_normal((1, 8 * hidden)) * 0.1).astype(np.float32)
    return w, r, b


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _lstm(inputs, outputs, hidden=HIDDEN, name="rnn", **attrs):
    return helper.make_node("LSTM", inputs, outputs, name=name, hidden_size=hidden, **attrs)


def _model(nodes, inputs, outputs, inits, opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def plain_lstm(hidden=HIDDEN, inp=INPUT, layout=0):
    """X [steps, 1, I] -> LSTM with constant W, R, B -> Y and Y_h (batch first: layout 1)."""
    w, r, b = _weights(hidden=hidden, inp=inp)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w, "W"), (r, "R"), (b, "B"))]
    attrs = {"layout": 1} if layout else {}
    nodes = [_lstm(["x", "W", "R", "B"], ["y", "y_h"], hidden=hidden, **attrs)]
    x_shape = [1, STEPS, inp] if layout else [STEPS, 1, inp]
    y_shape = [1, STEPS, 1, hidden] if layout else [STEPS, 1, 1, hidden]
    h_shape = [1, 1, hidden]
    return _model(nodes, [_vi("x", x_shape)], [_vi("y", y_shape), _vi("y_h", h_shape)], inits)


def computed_weight_lstm():
    """W and R as exporters write them: Slice halves of a framework weight, Concat, Unsqueeze."""
    w, r, b = _weights(1)
    inits = [
        numpy_helper.from_array(w[0], "weight_ih"),
        numpy_helper.from_array(r[0], "weight_hh"),
        numpy_helper.from_array(b, "B"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([2 * HIDDEN], np.int64), "half"),
        numpy_helper.from_array(np.array([4 * HIDDEN], np.int64), "end"),
    ]
    nodes = []
    for src, out in (("weight_ih", "W"), ("weight_hh", "R")):
        nodes += [
            helper.make_node("Slice", [src, "zero", "half"], [f"{out}_a"], name=f"{out}_sa"),
            helper.make_node("Slice", [src, "half", "end"], [f"{out}_b"], name=f"{out}_sb"),
            helper.make_node("Concat", [f"{out}_b", f"{out}_a"], [f"{out}_c"], axis=0),
            helper.make_node("Unsqueeze", [f"{out}_c", "zero"], [out], name=f"{out}_u"),
        ]
    nodes.append(_lstm(["x", "W", "R", "B"], ["y"]))
    return _model(nodes, [_vi("x", [STEPS, 1, INPUT])], [_vi("y", [STEPS, 1, 1, HIDDEN])], inits)


def lstm_in_if():
    """An If whose then branch runs an LSTM on the outer X (weights in the branch)."""
    w, r, b = _weights(2)
    body_inits = [numpy_helper.from_array(a, n) for a, n in ((w, "Wb"), (r, "Rb"), (b, "Bb"))]
    then = helper.make_graph(
        [
            _lstm(["x", "Wb", "Rb", "Bb"], ["t_y"], name="inner_rnn"),
            helper.make_node("Squeeze", ["t_y", "ax1"], ["t"], name="sq"),
        ],
        "then",
        [],
        [_vi("t", [STEPS, 1, HIDDEN])],
        initializer=body_inits,
    )
    other = helper.make_graph(
        [helper.make_node("Slice", ["x", "s0", "s1", "s2"], ["e"], name="cut")],
        "else",
        [],
        [_vi("e", [STEPS, 1, HIDDEN])],
    )
    inits = [
        numpy_helper.from_array(np.array([0], np.int64), "s0"),
        numpy_helper.from_array(np.array([HIDDEN], np.int64), "s1"),
        numpy_helper.from_array(np.array([2], np.int64), "s2"),
        numpy_helper.from_array(np.array([1], np.int64), "ax1"),
    ]
    nodes = [
        helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then, else_branch=other)
    ]
    return _model(
        nodes,
        [_vi("x", [STEPS, 1, INPUT]), _vi("c", [], TensorProto.BOOL)],
        [_vi("y", [STEPS, 1, HIDDEN])],
        inits,
    )


def _feeds(proto, seed, cond=True):
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in proto.graph.input:
        if value.type.tensor_type.elem_type == TensorProto.BOOL:
            feeds[value.name] = np.array(cond)
        else:
            dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
            feeds[value.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def _run(proto, target="cpu", **options):
    model = ir.serde.deserialize_model(proto)
    feeds = [_feeds(proto, i) for i in range(2)]
    arrays = {k: np.stack([f[k] for f in feeds]) for k in feeds[0]}
    context = PassContext(target=target, calibration=Dataset(arrays, "test", frozenset(arrays)))
    pass_ = PassSpec.create("quantize-dynamic-int8", **options).instantiate()
    return model, pass_.run(model, context), pass_, context


def _proto(model):
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto)
    return proto


def _all_types(proto):
    types = list(op_types(proto))
    for node in proto.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                types += [n.op_type for n in attr.g.node]
    return types


def _rel_errors(proto, out, cond=True):
    errors = []
    for seed in range(3):
        feed = _feeds(proto, 100 + seed, cond)
        for ref, got in zip(ort_outputs(proto, feed), ort_outputs(out, feed), strict=True):
            errors.append(float(np.linalg.norm(got - ref) / np.linalg.norm(ref)))
    return errors


def test_lstm_becomes_dynamic_quantize_lstm_with_bounded_error() -> None:
    proto = plain_lstm()
    model, result, _, _ = _run(proto)
    assert result.modified and result.stats["lstms-quantized"] == 1
    out = _proto(model)
    assert op_types(out) == ["DynamicQuantizeLSTM"]
    node = out.graph.node[0]
    assert node.domain == "com.microsoft" and node.name == "rnn"
    assert [o.name for o in out.graph.output] == ["y", "y_h"]
    assert {i.name for i in out.graph.initializer}.isdisjoint({"W", "R"})  # float weights gone
    assert result.stats["bytes-saved"] == 3 * (4 * HIDDEN) * (INPUT + HIDDEN)
    errors = _rel_errors(proto, out)
    assert all(0 < e < 0.03 for e in errors), errors  # int8 error: present, bounded


def test_second_run_changes_nothing() -> None:
    model, _, pass_, context = _run(plain_lstm())
    again = pass_.run(model, context)
    assert not again.modified and again.stats["lstms-quantized"] == 0


def test_weights_computed_from_constants_are_folded_and_their_cone_dropped() -> None:
    proto = computed_weight_lstm()
    model, result, _, _ = _run(proto)
    assert result.stats["lstms-quantized"] == 1
    out = _proto(model)
    assert op_types(out) == ["DynamicQuantizeLSTM"]  # Slice/Concat/Unsqueeze removed
    names = {i.name for i in out.graph.initializer}
    assert "weight_ih" not in names and "weight_hh" not in names
    assert all(0 < e < 0.03 for e in _rel_errors(proto, out))


def test_lstm_inside_an_if_body_is_quantized_and_both_branches_agree() -> None:
    proto = lstm_in_if()
    model, result, _, _ = _run(proto)
    assert result.stats["lstms-quantized"] == 1
    out = _proto(model)
    assert "DynamicQuantizeLSTM" in _all_types(out) and "LSTM" not in _all_types(out)
    assert all(0 < e < 0.03 for e in _rel_errors(proto, out, cond=True))
    # The other branch holds no LSTM: it is untouched, outputs identical.
    assert _rel_errors(proto, out, cond=False) == [0.0, 0.0, 0.0]


def test_small_hidden_lstm_is_modelled_slower_and_kept_float() -> None:
    # H = 8: quantizing X and every hidden state at run time costs more than int8 saves.
    model, result, _, _ = _run(plain_lstm(hidden=8, inp=8))
    assert not result.modified and result.stats["lstms-quantized"] == 0
    assert op_types(_proto(model)) == ["LSTM"]
    _, forced, _, _ = _run(plain_lstm(hidden=8, inp=8), speed_check=False)
    assert forced.stats["lstms-quantized"] == 1


def test_non_constant_weights_layout_and_options_leave_the_lstm_alone() -> None:
    w, r, b = _weights()
    nodes = [_lstm(["x", "W", "R", "B"], ["y"])]
    proto = _model(
        nodes,
        [_vi("x", [STEPS, 1, INPUT]), _vi("W", list(w.shape))],
        [_vi("y", [STEPS, 1, 1, HIDDEN])],
        [numpy_helper.from_array(r, "R"), numpy_helper.from_array(b, "B")],
    )
    _, result, _, _ = _run(proto, speed_check=False)
    assert not result.modified and result.stats["skipped-lstm-weight-not-constant"] == 1
    batch_first = plain_lstm(layout=1)
    _, result, _, _ = _run(batch_first, speed_check=False)
    assert not result.modified and result.stats["skipped-lstm-batch-first-layout"] == 1
    _, result, _, _ = _run(plain_lstm(), lstm=False)
    assert not result.modified and result.stats["lstms-quantized"] == 0
    _, result, _, _ = _run(plain_lstm(), exclude="rnn")
    assert not result.modified and result.stats["skipped-lstm-excluded"] == 1
    _, result, _, _ = _run(plain_lstm(), target="cuda")
    assert not result.modified and result.stats["skipped-target-not-cpu"] == 1

"""quantize-int8's cost model: a fixed cost per extra kernel call (standalone Q/DQ, layout
Transposes) keeps small graphs float where elements alone said int8 pays (issue #13)."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper
from passes_util import op_types, to_proto
from test_quantize_int8 import _model, _relative_error, _run, _vi, _w

import nnopt_graph.passes.quantize.cost as cost
from nnopt_graph.passes.quantize.int8.fusion import _layout_transposes


def mobile_net(channels, size, blocks):
    """Pointwise Conv -> Relu -> depthwise 3x3 Conv -> Relu, repeated (MobileNet-like)."""
    nodes, inits, x = [], [], "x"
    for i in range(blocks):
        inits += [
            _w(f"pw{i}", channels, channels, 1, 1),
            _w(f"pb{i}", channels),
            _w(f"dw{i}", channels, 1, 3, 3),
            _w(f"db{i}", channels),
        ]
        nodes += [
            helper.make_node("Conv", [x, f"pw{i}", f"pb{i}"], [f"p{i}"], name=f"pw{i}"),
            helper.make_node("Relu", [f"p{i}"], [f"r{i}"], name=f"relu{i}"),
            helper.make_node(
                "Conv",
                [f"r{i}", f"dw{i}", f"db{i}"],
                [f"d{i}"],
                name=f"dw{i}",
                group=channels,
                pads=[1, 1, 1, 1],
            ),
            helper.make_node("Relu", [f"d{i}"], [f"y{i}"], name=f"drelu{i}"),
        ]
        x = f"y{i}"
    nodes.append(helper.make_node("Identity", [x], ["y"], name="out"))
    shape = ["N", channels, size, size]
    return _model(nodes, [_vi("x", shape)], [_vi("y", shape)], inits)


def _modelled(result):
    return next(d for d in result.decisions if "modelled" in d)["modelled"]


def test_small_graph_stays_float_where_elements_alone_said_int8(monkeypatch):
    proto = mobile_net(16, 4, 4)  # 16 x 4 x 4 activations: kernel calls dominate
    model, result, _, _ = _run(proto, speed_check=True)
    assert not result.modified and op_types(model) == op_types(proto)
    assert result.stats["skipped-not-faster-or-unfused"] == 1
    assert _modelled(result)["ratio"] >= cost.KEEP_BELOW
    # The model before issue #13 (no per-call cost) kept int8 on the same graph.
    monkeypatch.setattr(cost, "KERNEL_COST", 0.0)
    old_model, old, _, _ = _run(proto, speed_check=True)
    assert old.modified and _modelled(old)["ratio"] < cost.KEEP_BELOW
    assert op_types(old_model) != op_types(proto)


def test_large_graph_keeps_int8_with_the_kernel_call_cost():
    proto = mobile_net(64, 32, 3)  # 64 x 32 x 32: MACs dwarf a few extra kernel calls
    model, result, _, _ = _run(proto, speed_check=True)
    modelled = _modelled(result)
    assert result.modified and modelled["ratio"] < cost.KEEP_BELOW
    assert modelled["extra-kernel-calls"] > 0
    fusion = next(d for d in result.decisions if "fusion-check" in d)
    assert fusion["layout-transposes"] > 0  # ORT's channels-last Transposes are counted
    assert _relative_error(proto, to_proto(model)) < 0.05


def test_layout_transposes_counts_only_those_next_to_int8_ops():
    u8 = TensorProto.UINT8
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        helper.make_node("Transpose", ["q"], ["qt"], perm=[0, 2, 3, 1]),
        helper.make_node("Identity", ["qt"], ["c"]),  # stands for a channels-last kernel
        helper.make_node("Transpose", ["c"], ["ct"], perm=[0, 3, 1, 2]),
        helper.make_node("DequantizeLinear", ["ct", "s", "z"], ["d"]),
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 3, 1]),  # a float one
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [_vi("x", [1, 2, 3, 4]), _vi("s", []), _vi("z", [], u8)],
        [_vi("d", [1, 2, 3, 4]), _vi("xt", [1, 3, 4, 2])],
    )
    assert _layout_transposes(graph) == 2
    assert _layout_transposes(onnx.GraphProto()) == 0


def test_kernel_calls_add_a_fixed_cost_per_call():
    macs = {"a": 1_000_000}
    costs = cost.CostModel(macs, vnni=True)
    base = costs.cost([], set(), [], 0)
    with_calls = costs.cost([], set(), [], 0, layout_transposes=3)
    assert base["extra-kernel-calls"] == 0 and with_calls["extra-kernel-calls"] == 3
    assert with_calls["ratio"] - base["ratio"] == round(3 * cost.KERNEL_COST / 1_000_000, 4)

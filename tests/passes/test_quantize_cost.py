"""quantize-int8's cost model: a fixed cost per extra kernel call (standalone Q/DQ, layout
Transposes) keeps small graphs float where elements alone said int8 pays (issue #13)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper
from passes_util import op_types, to_proto
from test_quantize_int8 import _model, _optimized_ops, _relative_error, _run, _vi, _w

import nnopt_graph.passes.quantize.cost as cost
from nnopt_graph.passes.quantize.int8.fusion import _layout_transposes
from nnopt_graph.runtime.data import Dataset
from nnopt_graph.runtime.services import RuntimeServices


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


def padded_convs(channels=64, blocks=3):
    """Pad (amounts from the ``pads`` input) -> 1-D Conv k3 + Relu, repeated.

    Shape inference cannot know the padded length, so every Conv's output length is
    unknown until the model runs (silero-vad computes its STFT padding in the graph).
    """
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], name="pad")]
    inits, h = [], "p"
    for i in range(blocks):
        inits += [_w(f"w{i}", channels, channels, 3), _w(f"b{i}", channels)]
        nodes += [
            helper.make_node("Conv", [h, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}"),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"),
        ]
        h = f"r{i}"
    nodes.append(helper.make_node("Identity", [h], ["y"], name="out"))
    inputs = [_vi("x", [1, channels, "L"]), _vi("pads", [6], TensorProto.INT64)]
    return _model(nodes, inputs, [_vi("y", [1, channels, "M"])], inits)


def _padded_data(channels=64, length=256, pad=4, samples=6):
    rng = np.random.default_rng(1)
    arrays = {
        "x": rng.standard_normal([samples, 1, channels, length]).astype(np.float32),
        "pads": np.tile(np.array([0, 0, pad, 0, 0, pad], np.int64), (samples, 1)),
    }
    return Dataset(arrays, "test", frozenset(arrays))


def _conv_macs(channels, length, blocks):
    """Hand count: each k3 Conv shortens the length by 2."""
    return {f"conv{i}": channels * (length - 2 * (i + 1)) * channels * 3 for i in range(blocks)}


def test_run_time_shapes_count_the_convs_inference_cannot_size():
    proto = padded_convs(channels=8, blocks=2)
    model = ir.serde.deserialize_model(proto)
    data = _padded_data(channels=8, length=16, pad=2)
    shapes = {"x": [1, 8, 16], "pads": [6]}
    assert cost.node_macs(model, shapes) == {}  # inference alone: every Conv unknown
    macs, unknown = cost.measured_node_macs(model, shapes, data, RuntimeServices().capture)
    assert macs == _conv_macs(8, 20, 2) and unknown == 0


def test_known_shapes_are_not_captured():
    proto = mobile_net(8, 4, 1)
    model = ir.serde.deserialize_model(proto)

    def capture(*args, **kwargs):
        raise AssertionError("capture ran although inference knew every shape")

    macs, unknown = cost.measured_node_macs(model, {"x": [1, 8, 4, 4]}, None, capture)
    assert macs == cost.node_macs(model, {"x": [1, 8, 4, 4]}) and len(macs) == 2
    assert unknown == 0


def test_failed_capture_leaves_the_nodes_unknown_and_says_so():
    model = ir.serde.deserialize_model(padded_convs(channels=8, blocks=2))

    def capture(*args, **kwargs):
        raise RuntimeError("no session")

    macs, unknown = cost.measured_node_macs(
        model, {"x": [1, 8, 16], "pads": [6]}, _padded_data(8, 16), capture
    )
    assert macs == {} and unknown == 2


def test_int8_keeps_the_convs_it_could_not_size_before(tmp_path):
    proto = padded_convs()
    model, result, _, _ = _run(proto, data=_padded_data(), speed_check=True)
    modelled = _modelled(result)
    assert modelled["nodes-of-unknown-macs"] == 0
    assert modelled["float-macs"] == sum(_conv_macs(64, 264, 3).values())
    assert result.modified and modelled["ratio"] < cost.KEEP_BELOW
    assert _optimized_ops(to_proto(model), tmp_path).count("QLinearConv") == 3


def test_int8_reports_the_nodes_it_could_not_size(monkeypatch):
    monkeypatch.setattr(cost, "first_feed_shapes", lambda *args: None)  # capture failed
    proto = padded_convs()
    model, result, _, _ = _run(proto, data=_padded_data(), speed_check=True)
    assert not result.modified and op_types(model) == op_types(proto)
    assert _modelled(result)["nodes-of-unknown-macs"] == 3


def test_convs_off_the_nchwc_kernels_cost_more_in_float():
    conv_1d = ir.serde.deserialize_model(padded_convs(channels=8, blocks=2))
    conv_2d = ir.serde.deserialize_model(mobile_net(8, 4, 1))
    assert cost.float_weights(conv_1d) == {"conv0": cost.NCHW_FACTOR, "conv1": cost.NCHW_FACTOR}
    assert cost.float_weights(conv_2d) == {}
    model = cost.CostModel({"conv0": 1000, "conv1": 1000}, True, 0, {"conv0": 2.0})
    assert model.float_cost == 3000
    only = model.cost(conv_1d.graph, {"conv0"}, [], 0)
    assert only["float-macs"] == 2000 and only["float-cost"] == 3000
    assert only["ratio"] == round((1000 / 3 + 1000) / 3000, 4)  # int8 runs at the 2-D rate


def test_int8_adds_no_value_info_the_input_lacked():
    rng = np.random.default_rng(5)  # its own weights: the shared RNG orders other tests' draws
    inits = [
        onnx.numpy_helper.from_array((rng.standard_normal(s) * 0.1).astype(np.float32), name)
        for name, s in (("cw0", [32, 32, 3, 3]), ("cw1", [32, 32, 3, 3]))
    ]
    nodes = [
        helper.make_node("Conv", ["x", "cw0"], ["c0"], name="c0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="r0"),
        helper.make_node("Conv", ["r0", "cw1"], ["y"], name="c1", pads=[1, 1, 1, 1]),
    ]
    shape = ["N", 32, 32, 32]
    proto = _model(nodes, [_vi("x", shape)], [_vi("y", shape)], inits)
    assert not proto.graph.value_info
    model, result, _, _ = _run(proto, speed_check=True)
    assert result.modified
    after = to_proto(model)
    weights = {t.name for t in after.graph.initializer}
    # ORT fuses differently on an annotated graph (minilm ran 5.5% slower with them)
    assert [v.name for v in after.graph.value_info if v.name not in weights] == []

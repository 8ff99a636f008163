"""fold-conv-affine: constant per-channel Mul / Add after a Conv folded into its weights."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from passes_util import check_idempotent, in_an_if, op_types, ort_outputs, run_pass, to_proto

from nnopt_graph.check.equality import LOSSLESS, array_problems
from nnopt_graph.pipeline.presets import PRESETS

C, S = 6, 10
RNG = np.random.default_rng(5)


def _arr(name, array):
    return numpy_helper.from_array(np.asarray(array, np.float32), name)


def affine_net(
    scale=(1.3,),
    shift=(0.2,),
    bias=True,
    group=1,
    scale_shape=None,
    extra_use=False,
    computed_scale=False,
    batch_out=1,
):
    """Conv -> Mul(scale) -> Add(shift) -> Relu (PP-LCNet's learnable affine block)."""
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, S, S])]
    inits = [_arr("w", RNG.standard_normal([C, C // group, 3, 3]) * 0.3)]
    conv_in = ["x", "w"]
    if bias:
        inits.append(_arr("b", RNG.standard_normal([C])))
        conv_in.append("b")
    nodes = [helper.make_node("Conv", conv_in, ["c"], name="conv", pads=[1, 1, 1, 1], group=group)]
    scale_array = np.asarray(scale, np.float32)
    if scale_shape is not None:
        scale_array = scale_array.reshape(scale_shape)
    if computed_scale:  # the scale is an input, not a constant
        inputs.append(
            helper.make_tensor_value_info("k", TensorProto.FLOAT, list(scale_array.shape))
        )
    else:
        inits.append(_arr("k", scale_array))
    inits.append(_arr("s", np.asarray(shift, np.float32)))
    nodes += [
        helper.make_node("Mul", ["k", "c"], ["m"], name="mul"),
        helper.make_node("Add", ["m", "s"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["y"], name="relu"),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch_out, C, S, S])]
    if extra_use:  # the Conv output is read twice: nothing folds
        nodes.append(helper.make_node("Sigmoid", ["c"], ["z"], name="other"))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, C, S, S]))
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def _feeds(seed, proto):
    rng = np.random.default_rng(seed)
    feeds = {"x": rng.standard_normal([1, C, S, S]).astype(np.float32)}
    for value in proto.graph.input[1:]:
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _assert_equal_to_rounding(before, after, samples=5):
    """Per sample: within the lossless tolerance, and the error bounded element-wise."""
    for seed in range(samples):
        feeds = _feeds(seed, before)
        for ref, out in zip(ort_outputs(before, feeds), ort_outputs(after, feeds), strict=True):
            assert array_problems("y", ref, out, LOSSLESS) == []
            assert np.abs(out - ref).max() <= 1e-5 * max(1.0, float(np.abs(ref).max()))


def _inits(proto):
    return {i.name for i in proto.graph.initializer}


def test_scalar_mul_and_add_fold_into_weights_and_bias():
    proto = affine_net()
    model, result = run_pass(proto, "fold-conv-affine")
    assert result.stats == {"affine-nodes-folded": 2, "convs-changed": 1}
    assert op_types(model) == ["Conv", "Relu"]
    after = to_proto(model)
    conv = after.graph.node[0]
    assert list(conv.output) == ["a"]  # the chain's last value keeps its name
    assert {"w", "b", "k", "s"}.isdisjoint(_inits(after))  # nothing stale left behind
    _assert_equal_to_rounding(proto, after)


def test_per_channel_scale_and_a_conv_without_bias():
    proto = affine_net(scale=np.linspace(0.5, 2, C), bias=False, scale_shape=[1, C, 1, 1])
    model, result = run_pass(proto, "fold-conv-affine")
    assert result.stats["affine-nodes-folded"] == 2
    after = to_proto(model)
    assert len(after.graph.node[0].input) == 3  # a bias was added for the shift
    _assert_equal_to_rounding(proto, after)


def test_depthwise_conv_scales_its_output_channels():
    proto = affine_net(scale=np.linspace(-1, 1.5, C), group=C, scale_shape=[C, 1, 1])
    model, result = run_pass(proto, "fold-conv-affine")
    assert result.stats["affine-nodes-folded"] == 2
    _assert_equal_to_rounding(proto, to_proto(model))


def test_inside_an_if_branch():
    proto = in_an_if(affine_net())
    model, result = run_pass(proto, "fold-conv-affine")
    assert result.stats["affine-nodes-folded"] == 2
    assert sorted(op_types(model)) == ["Conv", "Identity", "If", "Relu"]
    after = to_proto(model)
    x = np.random.default_rng(0).standard_normal([1, C, S, S]).astype(np.float32)
    for flag in (True, False):
        feeds = {"x": x, "flag": np.array(flag)}
        ref, out = ort_outputs(proto, feeds)[0], ort_outputs(after, feeds)[0]
        assert array_problems("y", ref, out, LOSSLESS) == []


def test_second_run_changes_nothing():
    model, _ = run_pass(affine_net(), "fold-conv-affine")
    check_idempotent(model, "fold-conv-affine")


def test_spatial_scale_does_not_fold():
    proto = affine_net(scale=RNG.standard_normal([S, S]), scale_shape=[1, 1, S, S])
    model, result = run_pass(proto, "fold-conv-affine")
    assert not result.modified and op_types(model) == op_types(proto)


def test_computed_scale_does_not_fold():
    proto = affine_net(computed_scale=True)
    model, result = run_pass(proto, "fold-conv-affine")
    assert not result.modified and op_types(model) == op_types(proto)


def test_conv_output_read_twice_does_not_fold():
    proto = affine_net(extra_use=True)
    model, result = run_pass(proto, "fold-conv-affine")
    assert not result.modified and op_types(model) == op_types(proto)


def test_scale_along_the_batch_axis_does_not_fold():
    proto = affine_net(scale=[1.0, 2.0], scale_shape=[2, 1, 1, 1], batch_out=2)  # N -> 2
    model, result = run_pass(proto, "fold-conv-affine")
    assert not result.modified and op_types(model) == op_types(proto)


def test_target_cpu_folds_before_fusing_and_quantizing():
    passes = PRESETS["target-cpu"].split(",")
    assert passes.index("fold-conv-affine") < passes.index("quantize-int8")
    assert "fold-conv-affine" not in PRESETS["default"].split(",")

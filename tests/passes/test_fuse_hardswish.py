"""fuse-hardswish: x*Clip(x+3,0,6)/6 as x*HardSigmoid(x) (Paddle / MobileNetV3 exports)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from passes_util import check_idempotent, in_an_if, op_types, ort_outputs, run_pass, to_proto

from nnopt_graph.check.equality import LOSSLESS, array_problems
from nnopt_graph.pipeline.presets import PRESETS

C, S = 8, 12
RNG = np.random.default_rng(3)


def _scalar(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.array(value, dtype), name)


def hardswish_net(
    form="paddle", bias=3.0, high=6.0, divisor=6.0, dtype=TensorProto.FLOAT, extra_output=False
):
    """Conv -> hard-swish -> Conv, the activation spelled as exporters write it.

    ``paddle``: Div(Mul(x, Clip(x + 3, 0, 6)), 6); ``torch``: Mul(x, Div(Clip(x + 3), 6)).
    """
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    inits = [
        numpy_helper.from_array((RNG.standard_normal([C, C, 3, 3]) * 0.3).astype(np_dtype), "w1"),
        numpy_helper.from_array((RNG.standard_normal([C, C, 3, 3]) * 0.3).astype(np_dtype), "w2"),
        _scalar("three", bias, np_dtype),
        _scalar("zero", 0.0, np_dtype),
        _scalar("six", high, np_dtype),
        _scalar("div", divisor, np_dtype),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c", "three"], ["a"], name="add"),
        helper.make_node("Clip", ["a", "zero", "six"], ["clipped"], name="clip"),
    ]
    if form == "paddle":
        nodes += [
            helper.make_node("Mul", ["c", "clipped"], ["m"], name="mul"),
            helper.make_node("Div", ["m", "div"], ["h"], name="div"),
        ]
    else:
        nodes += [
            helper.make_node("Div", ["clipped", "div"], ["d"], name="div"),
            helper.make_node("Mul", ["c", "d"], ["h"], name="mul"),
        ]
    nodes.append(helper.make_node("Conv", ["h", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1]))
    outputs = [helper.make_tensor_value_info("y", dtype, [1, C, S, S])]
    if extra_output:  # the clipped value is an output of its own: it must stay
        outputs.append(helper.make_tensor_value_info("clipped", dtype, [1, C, S, S]))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", dtype, [1, C, S, S])],
        outputs,
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=7)
    onnx.checker.check_model(model, full_check=True)
    return model


def _feeds(seed, **extra):
    x = (np.random.default_rng(seed).standard_normal([1, C, S, S]) * 3).astype(np.float32)
    return {"x": x, **extra}


def _assert_equal_to_rounding(before, after, extra=None, samples=6):
    """Per sample: within the lossless tolerance, and the error bounded element-wise."""
    for seed in range(samples):
        feeds = _feeds(seed, **(extra or {}))
        for ref, out in zip(ort_outputs(before, feeds), ort_outputs(after, feeds), strict=True):
            assert array_problems("y", ref, out, LOSSLESS) == []
            assert np.abs(out - ref).max() <= 1e-5 * max(1.0, float(np.abs(ref).max()))


def test_paddle_form_becomes_hardsigmoid_and_mul_within_rounding():
    proto = hardswish_net("paddle")
    model, result = run_pass(proto, "fuse-hardswish")
    assert result.stats == {"hardswish-fused": 1}
    assert op_types(model) == ["Conv", "HardSigmoid", "Mul", "Conv"]
    after = to_proto(model)
    sigmoid = next(n for n in after.graph.node if n.op_type == "HardSigmoid")
    attrs = {a.name: a.f for a in sigmoid.attribute}
    assert np.isclose(attrs["alpha"], 1 / 6) and attrs["beta"] == 0.5
    assert sigmoid.name == "c/hardsigmoid"
    mul = next(n for n in after.graph.node if n.op_type == "Mul")
    assert list(mul.output) == ["h"] and mul.name == "c/hardswish"
    _assert_equal_to_rounding(proto, after)


def test_torch_form_becomes_the_same_pair():
    proto = hardswish_net("torch")
    model, result = run_pass(proto, "fuse-hardswish")
    assert result.stats == {"hardswish-fused": 1}
    assert op_types(model) == ["Conv", "HardSigmoid", "Mul", "Conv"]
    _assert_equal_to_rounding(proto, to_proto(model))


def test_inside_an_if_branch():
    proto = in_an_if(hardswish_net())
    model, result = run_pass(proto, "fuse-hardswish")
    assert result.stats == {"hardswish-fused": 1}
    assert sorted(op_types(model)) == ["Conv", "Conv", "HardSigmoid", "Identity", "If", "Mul"]
    after = to_proto(model)
    _assert_equal_to_rounding(proto, after, {"flag": np.array(True)})
    feeds = _feeds(0, flag=np.array(False))
    np.testing.assert_array_equal(ort_outputs(after, feeds)[0], feeds["x"])


def test_second_run_changes_nothing():
    model, _ = run_pass(hardswish_net("paddle"), "fuse-hardswish")
    check_idempotent(model, "fuse-hardswish")


def test_clip_to_five_is_not_hardswish():
    proto = hardswish_net(high=5.0)
    model, result = run_pass(proto, "fuse-hardswish")
    assert not result.modified and op_types(model) == op_types(proto)


def test_other_offset_is_not_hardswish():
    proto = hardswish_net(bias=2.0)
    model, result = run_pass(proto, "fuse-hardswish")
    assert not result.modified and op_types(model) == op_types(proto)


def test_other_divisor_is_not_hardswish():
    proto = hardswish_net("torch", divisor=5.0)
    model, result = run_pass(proto, "fuse-hardswish")
    assert not result.modified and op_types(model) == op_types(proto)


def test_float16_is_left_alone():
    proto = hardswish_net(dtype=TensorProto.FLOAT16)
    model, result = run_pass(proto, "fuse-hardswish")
    assert not result.modified and op_types(model) == op_types(proto)


def test_clipped_value_that_is_a_graph_output_stays():
    proto = hardswish_net(extra_output=True)
    model, result = run_pass(proto, "fuse-hardswish")
    after = to_proto(model)
    assert [o.name for o in after.graph.output] == ["y", "clipped"]
    assert "Clip" in op_types(model)
    feeds = _feeds(1)
    for ref, out in zip(ort_outputs(proto, feeds), ort_outputs(after, feeds), strict=True):
        assert array_problems("o", ref, out, LOSSLESS) == []


def test_model_without_clip_is_untouched():
    proto = hardswish_net()
    del proto.graph.node[1:5]
    proto.graph.node[0].output[0] = "h"
    model, result = run_pass(proto, "fuse-hardswish")
    assert result.stats == {"hardswish-fused": 0} and op_types(model) == ["Conv", "Conv"]


def test_target_cpu_preset_fuses_before_quantizing():
    passes = PRESETS["target-cpu"].split(",")
    assert passes.index("fuse-hardswish") < passes.index("quantize-dynamic-int8")
    assert "fuse-hardswish" not in PRESETS["default"].split(",")

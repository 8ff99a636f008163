"""quantize-fp16: block list, overflow and reduction checks, model I/O, Casts, subgraphs."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from passes_util import op_types, random_feeds, to_proto

from nnopt_graph.pipeline.base import PassContext
from nnopt_graph.pipeline.grammar import PassSpec, Pipeline
from nnopt_graph.pipeline.registry import PRESETS
from nnopt_graph.runtime.data import Dataset

RNG = np.random.default_rng(0)
F16 = ir.DataType.FLOAT16
F32 = ir.DataType.FLOAT


def _model(nodes, inputs, outputs, inits, opset=17, domains=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=8)
    onnx.checker.check_model(model, full_check=not domains)
    return model


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _w(name, *shape, scale=0.3):
    return numpy_helper.from_array((RNG.standard_normal(shape) * scale).astype(np.float32), name)


def _data(proto, samples=4, scale=1.0):
    feeds = [random_feeds(proto, i, N=2) for i in range(samples)]
    arrays = {
        k: np.stack([f[k] for f in feeds]) * np.float32(scale)
        if np.issubdtype(feeds[0][k].dtype, np.floating)
        else np.stack([f[k] for f in feeds])
        for k in feeds[0]
    }
    return Dataset(arrays, "test", frozenset(arrays))


def _run(proto, data=None, **options):
    model = ir.serde.deserialize_model(proto)
    context = PassContext(target="cuda", calibration=data if data is not None else _data(proto))
    pass_ = PassSpec.create("quantize-fp16", **options).instantiate()
    return model, pass_.run(model, context), pass_, context


def _outputs(proto, feeds):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    ).run(None, feeds)


def _relative_error(before, after, feeds):
    ref, out = _outputs(before, feeds)[0], _outputs(after, feeds)[0]
    assert ref.shape == out.shape
    return float(np.linalg.norm(ref.astype(np.float64) - out) / np.linalg.norm(ref))


def mlp():
    inits = [_w("w1", 16, 32), _w("b1", 32), _w("w2", 32, 8), _w("b2", 8)]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"], name="mm1"),
        helper.make_node("Add", ["m1", "b1"], ["a1"], name="add1"),
        helper.make_node("Relu", ["a1"], ["r1"], name="relu"),
        helper.make_node("MatMul", ["r1", "w2"], ["m2"], name="mm2"),
        helper.make_node("Add", ["m2", "b2"], ["y"], name="add2"),
    ]
    return _model(nodes, [_vi("x", ["N", 16])], [_vi("y", ["N", 8])], inits)


def test_mlp_runs_in_fp16_with_fp32_io_and_bounded_error():
    proto = mlp()
    model, result, _, context = _run(proto)
    assert result.stats["nodes-fp16"] == 5
    assert result.stats["initializers-converted"] == 4
    assert model.graph.inputs[0].dtype == F32 and model.graph.outputs[0].dtype == F32
    assert model.graph.outputs[0].name == "y"
    assert all(v.dtype == F16 for v in model.graph.initializers.values())
    after = to_proto(model)
    assert _relative_error(proto, after, random_feeds(proto, 3, N=4)) < 5e-3
    second = PassSpec.create("quantize-fp16").instantiate().run(model, context)
    assert not second.modified, second.stats


def test_keep_io_false_makes_inputs_and_outputs_fp16():
    proto = mlp()
    model, result, _, _ = _run(proto, keep_io=False)
    assert model.graph.inputs[0].dtype == F16 and model.graph.outputs[0].dtype == F16
    assert "Cast" not in op_types(model)
    feeds = {"x": random_feeds(proto, 1, N=3)["x"]}
    out = _outputs(to_proto(model), {"x": feeds["x"].astype(np.float16)})[0]
    ref = _outputs(proto, feeds)[0]
    assert np.linalg.norm(ref - out) / np.linalg.norm(ref) < 5e-3


def test_blocked_op_stays_fp32_between_casts():
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Resize", ["r", "", "scales"], ["u"], name="resize", mode="nearest"),
        helper.make_node("Sigmoid", ["u"], ["y"], name="sigmoid"),
    ]
    proto = _model(nodes, [_vi("x", ["N", 2, 4, 4])], [_vi("y", ["N", 2, 8, 8])], [scales])
    model, result, _, _ = _run(proto)
    assert result.stats["skipped-blocked-ops"] == 1
    resize = next(n for n in model.graph if n.op_type == "Resize")
    assert resize.inputs[0].dtype == F32 and resize.outputs[0].dtype == F32
    assert resize.inputs[2].dtype == F32  # scales untouched
    assert op_types(model).count("Cast") == 4  # in, around Resize (2), out
    feeds = random_feeds(proto, 0, N=2)
    assert _relative_error(proto, to_proto(model), feeds) < 5e-3


def test_values_that_would_overflow_stay_fp32():
    big = numpy_helper.from_array(np.array(1e5, np.float32), "big")
    nodes = [
        helper.make_node("Mul", ["x", "big"], ["m"], name="scale_up"),
        helper.make_node("Tanh", ["m"], ["t"], name="tanh_big"),
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Add", ["t", "r"], ["y"], name="add"),
    ]
    proto = _model(nodes, [_vi("x", ["N", 8])], [_vi("y", ["N", 8])], [big])
    model, result, _, _ = _run(proto)
    assert result.stats["skipped-overflow"] == 2  # the Mul and the Tanh reading its output
    mul = next(n for n in model.graph if n.op_type == "Mul")
    assert mul.outputs[0].dtype == F32
    feeds = random_feeds(proto, 0, N=2)
    out = _outputs(to_proto(model), feeds)[0]
    assert np.all(np.isfinite(out))
    assert _relative_error(proto, to_proto(model), feeds) < 5e-3


def test_large_reductions_stay_fp32_small_ones_convert():
    nodes = [
        helper.make_node("ReduceSum", ["x", "axes"], ["s"], name="big_sum", keepdims=1),
        helper.make_node("Softmax", ["x"], ["p"], name="small_softmax", axis=1),
        helper.make_node("Mul", ["p", "s"], ["y"], name="mul"),
    ]
    axes = numpy_helper.from_array(np.array([0, 1], np.int64), "axes")
    proto = _model(nodes, [_vi("x", [128, 64])], [_vi("y", [128, 64])], [axes])
    model, result, _, _ = _run(proto, reduction_limit=4096)
    assert result.stats["skipped-large-reductions"] == 1
    big = next(n for n in model.graph if n.name == "big_sum")
    small = next(n for n in model.graph if n.name == "small_softmax")
    assert big.outputs[0].dtype == F32 and small.outputs[0].dtype == F16


def test_cascaded_casts_are_folded():
    nodes = [
        helper.make_node("Cast", ["x"], ["h"], name="to_half", to=TensorProto.FLOAT16),
        helper.make_node("Cast", ["h"], ["f"], name="to_float", to=TensorProto.FLOAT),
        helper.make_node("Relu", ["f"], ["r"], name="relu"),
        helper.make_node("Neg", ["r"], ["y"], name="neg"),
    ]
    proto = _model(nodes, [_vi("x", ["N", 8])], [_vi("y", ["N", 8])], [])
    model, result, _, _ = _run(proto)
    assert result.stats["casts-removed"] >= 1
    relu = next(n for n in model.graph if n.op_type == "Relu")
    assert relu.inputs[0].name == "h"
    feeds = random_feeds(proto, 0, N=2)
    # fp16 Relu and Neg of fp16 values are exact; ONNX Runtime may drop the original pair.
    np.testing.assert_allclose(
        _outputs(proto, feeds)[0], _outputs(to_proto(model), feeds)[0], rtol=1e-3
    )


def test_subgraph_nodes_are_skipped_and_outer_values_stay_fp32():
    then_graph = helper.make_graph(
        [helper.make_node("Mul", ["r", "r"], ["t"], name="square")],
        "then",
        [],
        [_vi("t", ["N", 4])],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Neg", ["r"], ["e"], name="neg")], "else", [], [_vi("e", ["N", 4])]
    )
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node(
            "If", ["c"], ["y"], name="if", then_branch=then_graph, else_branch=else_graph
        ),
    ]
    proto = _model(
        nodes, [_vi("x", ["N", 4]), _vi("c", [], TensorProto.BOOL)], [_vi("y", ["N", 4])], []
    )
    model, result, _, _ = _run(proto)
    assert result.stats["skipped-nodes-in-subgraphs"] == 2
    after = to_proto(model)
    for cond in (True, False):
        feeds = {"x": RNG.standard_normal((2, 4)).astype(np.float32), "c": np.array(cond)}
        ref, out = _outputs(proto, feeds)[0], _outputs(after, feeds)[0]
        np.testing.assert_allclose(ref, out, rtol=2e-3, atol=2e-3)


def test_custom_domain_node_stays_fp32():
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Gelu", ["r"], ["g"], name="gelu", domain="com.microsoft"),
        helper.make_node("Neg", ["g"], ["y"], name="neg"),
    ]
    proto = _model(
        nodes, [_vi("x", ["N", 4])], [_vi("y", ["N", 4])], [], domains=("com.microsoft",)
    )
    model, result, _, _ = _run(proto)
    assert result.stats["skipped-custom-domain"] == 1
    gelu = next(n for n in model.graph if n.op_type == "Gelu")
    assert gelu.inputs[0].dtype == F32 and gelu.outputs[0].dtype in (F32, None)  # no schema
    feeds = random_feeds(proto, 0, N=2)
    assert _relative_error(proto, to_proto(model), feeds) < 5e-3


def test_integer_only_model_is_unchanged():
    nodes = [helper.make_node("Add", ["a", "b"], ["y"], name="add")]
    proto = _model(
        nodes,
        [_vi("a", [2], TensorProto.INT64), _vi("b", [2], TensorProto.INT64)],
        [_vi("y", [2], TensorProto.INT64)],
        [],
    )
    model, result, _, _ = _run(proto)
    assert not result.modified
    assert op_types(model) == ["Add"]


def test_back_off_keeps_largest_outputs_in_fp32():
    proto = mlp()
    _, _, pass_, _ = _run(proto, data=_data(mlp(), scale=10.0))
    first = pass_.back_off()
    assert first is not None and len(first.options.exclude.split(",")) == 1
    model = ir.serde.deserialize_model(proto)
    result = first.run(model, PassContext(target="cuda", calibration=_data(proto)))
    assert result.stats["skipped-excluded"] == 1


def test_no_back_off_without_fallback():
    _, _, pass_, _ = _run(mlp(), fallback=False)
    assert pass_.back_off() is None


def test_cuda_preset():
    Pipeline.parse("default")
    assert PRESETS["target-cuda"].endswith("quantize-fp16,quantize-int4")

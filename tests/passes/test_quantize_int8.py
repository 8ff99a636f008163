"""quantize-int8: QDQ placement, fusion check on the CPU EP, targets, calibration, back-off."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from passes_util import op_types, random_feeds, to_proto

from nnopt_graph import optimize
from nnopt_graph.passes.quantize.calib import HistogramStats, entropy_range, percentile_range
from nnopt_graph.pipeline.base import PassContext
from nnopt_graph.pipeline.grammar import PassSpec, Pipeline
from nnopt_graph.pipeline.registry import PRESETS
from nnopt_graph.runtime.data import Dataset

FAST = {"speed_check": False, "fallback": False}
RNG = np.random.default_rng(0)


def _model(nodes, inputs, outputs, inits, opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def _w(name, *shape, scale=0.3):
    return numpy_helper.from_array((RNG.standard_normal(shape) * scale).astype(np.float32), name)


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def conv_net(weight_in_constant=False):
    """Conv+Relu x3 -> Flatten -> Gemm: every weighted node can fuse on the CPU EP."""
    nodes = []
    inits = [
        _w("b1", 8),
        _w("w2", 8, 8, 3, 3),
        _w("b2", 8),
        _w("w3", 4, 8, 1, 1),
        _w("wf", 10, 256, scale=0.05),
        _w("bf", 10),
    ]
    if weight_in_constant:
        nodes.append(helper.make_node("Constant", [], ["w1"], value=_w("w1v", 8, 3, 3, 3)))
    else:
        inits.append(_w("w1", 8, 3, 3, 3))
    nodes += [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3"], ["c3"], name="conv3"),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("Flatten", ["r3"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1),
    ]
    return _model(nodes, [_vi("x", ["N", 3, 8, 8])], [_vi("y", ["N", 10])], inits)


def _data(proto, samples=8, seed=0):
    feeds = [random_feeds(proto, seed + i, N=2) for i in range(samples)]
    arrays = {k: np.stack([f[k] for f in feeds]) for k in feeds[0]}
    return Dataset(arrays, "test", frozenset(arrays))


def _run(proto, target="cpu", data=None, **options):
    model = ir.serde.deserialize_model(proto)
    context = PassContext(target=target, calibration=data if data is not None else _data(proto))
    pass_ = PassSpec.create("quantize-int8", **{**FAST, **options}).instantiate()
    return model, pass_.run(model, context), pass_, context


def _outputs(proto, feeds, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.log_severity_level = 3
    session = ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, feeds)


def _optimized_ops(proto, tmp_path):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "opt.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]


def _relative_error(before, after, seed=7):
    feeds = random_feeds(before, seed, N=2)
    ref = _outputs(before, feeds)[0]
    out = _outputs(after, feeds)[0]
    assert ref.shape == out.shape
    return float(np.linalg.norm(ref - out) / np.linalg.norm(ref))


def test_conv_net_fuses_into_qlinearconv_with_bounded_error(tmp_path):
    proto = conv_net()
    model, result, _, context = _run(proto)
    assert result.stats["nodes-quantized"] == 4
    after = to_proto(model)
    ops = _optimized_ops(after, tmp_path)
    assert ops.count("QLinearConv") == 3 and "QGemm" in ops
    assert "Conv" not in ops and "Relu" not in ops  # Relu folded into the Q after each Conv
    assert _relative_error(proto, after) < 0.05
    assert any("fusion-check" in d for d in result.decisions)
    # Idempotent: everything is quantized already.
    second = PassSpec.create("quantize-int8", **FAST).instantiate().run(model, context)
    assert not second.modified, second.stats


def test_weights_in_constant_nodes_are_quantized(tmp_path):
    proto = conv_net(weight_in_constant=True)
    model, result, _, _ = _run(proto)
    assert result.stats["nodes-quantized"] == 4
    after = to_proto(model)
    assert "Constant" not in op_types(after)  # the float weight is gone with its Constant
    assert _relative_error(proto, after) < 0.05


def test_unfusable_qdq_pair_is_removed(tmp_path):
    """The CPU EP has no integer ConvTranspose: its QDQ is taken out, the Conv keeps its own."""
    inits = [_w("w1", 8, 3, 3, 3), _w("wt", 8, 4, 2, 2)]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("ConvTranspose", ["r1", "wt"], ["t"], name="deconv", strides=[2, 2]),
        helper.make_node("Relu", ["t"], ["y"], name="relu2"),
    ]
    proto = _model(nodes, [_vi("x", ["N", 3, 8, 8])], [_vi("y", ["N", 4, 16, 16])], inits)
    model, result, _, _ = _run(proto)
    fusion = next(d for d in result.decisions if "fusion-check" in d)
    assert fusion["unfused-weighted-nodes"] == ["deconv"]
    assert result.stats["nodes-quantized"] == 1
    deconv = next(n for n in model.graph if n.op_type == "ConvTranspose")
    assert deconv.inputs[1].name == "wt"  # float weight back in place
    after = to_proto(model)
    ops = _optimized_ops(after, tmp_path)
    assert "QLinearConv" in ops and "ConvTranspose" in ops
    # The ConvTranspose output had a Q/DQ pair nobody fused: gone.
    assert not any(n.op_type == "QuantizeLinear" and n.inputs[0].name == "y" for n in model.graph)
    assert _relative_error(proto, after) < 0.05


def test_nothing_fuses_leaves_the_model_unchanged():
    inits = [_w("wt", 3, 4, 2, 2)]
    nodes = [helper.make_node("ConvTranspose", ["x", "wt"], ["y"], name="deconv", strides=[2, 2])]
    proto = _model(nodes, [_vi("x", ["N", 3, 8, 8])], [_vi("y", ["N", 4, 16, 16])], inits)
    model, result, _, _ = _run(proto)
    assert not result.modified
    assert op_types(model) == ["ConvTranspose"]


def test_conv_whose_output_is_the_graph_output_does_not_fuse_and_is_reverted():
    proto = _model(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])],
        [_vi("x", ["N", 3, 8, 8])],
        [_vi("y", ["N", 8, 8, 8])],
        [_w("w", 8, 3, 3, 3)],
    )
    model, result, _, _ = _run(proto)
    assert not result.modified
    assert op_types(model) == ["Conv"]


def test_cuda_target_changes_nothing_and_says_why():
    proto = conv_net()
    model, result, _, _ = _run(proto, target="cuda")
    assert not result.modified
    assert op_types(model) == op_types(proto)
    assert "no int8 kernels" in result.decisions[0]["reason"].replace(
        "int8 Conv/MatMul kernels", "int8 kernels"
    )


def test_tensorrt_target_places_symmetric_qdq_on_inputs_only():
    proto = conv_net()
    model, result, _, _ = _run(proto, target="tensorrt")
    assert result.stats["nodes-quantized"] == 4
    assert "not possible here" in result.decisions[0]["fusion-check"]
    quantize = [n for n in model.graph if n.op_type == "QuantizeLinear"]
    assert quantize and all(n.inputs[2].const_value.numpy().dtype == np.int8 for n in quantize)
    assert all(int(n.inputs[2].const_value.numpy()) == 0 for n in quantize)
    # Inputs of the weighted nodes (x, r1, r2, f), no outputs.
    assert sorted(n.inputs[0].name for n in quantize) == ["f", "r1", "r2", "x"]
    assert _relative_error(proto, to_proto(model)) < 0.05


def test_concat_inputs_share_one_scale():
    inits = [_w("wa", 4, 3, 1, 1), _w("wb", 4, 3, 1, 1, scale=3.0), _w("wc", 4, 8, 1, 1)]
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="conv_a"),
        helper.make_node("Conv", ["x", "wb"], ["b"], name="conv_b"),
        helper.make_node("Concat", ["a", "b"], ["cat"], name="concat", axis=1),
        helper.make_node("Conv", ["cat", "wc"], ["c"], name="conv_c"),
        helper.make_node("Relu", ["c"], ["y"], name="relu"),
    ]
    proto = _model(nodes, [_vi("x", ["N", 3, 8, 8])], [_vi("y", ["N", 4, 8, 8])], inits)
    model, result, _, _ = _run(proto)
    scales = {
        n.inputs[0].name: float(n.inputs[1].const_value.numpy())
        for n in model.graph
        if n.op_type == "QuantizeLinear"
    }
    assert scales["a"] == scales["b"] == scales["cat"]


def test_matmul_with_3d_input_runs_as_integer_matmul(tmp_path):
    inits = [_w("w", 16, 8), numpy_helper.from_array(np.zeros(8, np.float32), "bias")]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
        helper.make_node("Add", ["m", "bias"], ["y"], name="add"),
    ]
    proto = _model(nodes, [_vi("x", ["N", 5, 16])], [_vi("y", ["N", 5, 8])], inits)
    model, result, _, _ = _run(proto)
    assert result.stats["nodes-quantized"] == 1
    after = to_proto(model)
    assert "MatMulIntegerToFloat" in _optimized_ops(after, tmp_path)
    assert _relative_error(proto, after) < 0.05


def test_activation_times_activation_matmul_is_skipped_by_default():
    nodes = [helper.make_node("MatMul", ["a", "b"], ["y"], name="mm")]
    proto = _model(nodes, [_vi("a", [4, 8]), _vi("b", [8, 4])], [_vi("y", [4, 4])], [])
    model, result, _, _ = _run(proto)
    assert not result.modified
    assert result.stats["skipped-weight-not-constant"] == 1


def test_integer_weights_are_left_alone():
    w = numpy_helper.from_array(np.ones((3, 4), np.int32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    proto = _model(
        nodes, [_vi("x", [2, 3], TensorProto.INT32)], [_vi("y", [2, 4], TensorProto.INT32)], [w]
    )
    model, result, _, _ = _run(proto)
    assert not result.modified


def test_conv_inside_if_branch_is_skipped_with_a_stat():
    then_graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["t"], name="inner_conv", pads=[1, 1, 1, 1])],
        "then",
        [],
        [_vi("t", ["N", 3, 8, 8])],
        [_w("w", 3, 3, 3, 3)],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["e"], name="neg")], "else", [], [_vi("e", ["N", 3, 8, 8])]
    )
    nodes = [
        helper.make_node(
            "If", ["c"], ["y"], name="if", then_branch=then_graph, else_branch=else_graph
        )
    ]
    proto = _model(
        nodes,
        [_vi("x", ["N", 3, 8, 8]), _vi("c", [], TensorProto.BOOL)],
        [_vi("y", ["N", 3, 8, 8])],
        [],
    )
    model, result, _, _ = _run(proto)
    assert not result.modified
    assert result.stats["skipped-nodes-in-subgraphs"] == 1


def test_exclude_keeps_a_node_in_float():
    proto = conv_net()
    model, result, _, _ = _run(proto, exclude="conv2")
    assert result.stats["skipped-excluded"] == 1
    conv2 = next(n for n in model.graph if n.name == "conv2")
    assert conv2.inputs[1].name == "w2"


def test_old_opset_is_upgraded_for_per_channel_qdq():
    proto = conv_net()
    proto.opset_import[0].version = 11
    model, result, _, _ = _run(proto)
    assert result.stats["opset-upgraded"] == 1
    assert model.opset_imports[""] == 13
    assert _relative_error(proto, to_proto(model)) < 0.05


@pytest.mark.parametrize("how", ["context", "local"])  # output: measured on back-off (below)
def test_sensitivity_ranks_nodes_and_back_off_excludes_them(how):
    proto = conv_net()
    model, result, pass_, _ = _run(proto, fallback=True, sensitivity=how)
    sens = next(d for d in result.decisions if "sensitivity" in d)
    assert sens["sensitivity"].startswith("in-context" if how == "context" else "local")
    ranked = sens["most-sensitive-db"]
    # A node whose quantization adds no measurable error scores +inf, written as None
    # (JSON has no inf) and ranked last.
    finite = [v for _, v in ranked if v is not None]
    assert len(finite) >= 3 and all(isinstance(v, float) for v in finite)
    assert [v for _, v in ranked[: len(finite)]] == sorted(finite)
    first = pass_.back_off()
    assert first is not None and first.options.exclude == ranked[0][0]
    second = first.back_off()
    assert len(second.options.exclude.split(",")) == 2
    third = second.back_off()
    assert len(third.options.exclude.split(",")) == 3
    fifth = third.back_off().back_off()
    assert len(fifth.options.exclude.split(",")) == 5  # grows by about half each step


def test_no_back_off_without_fallback():
    _, _, pass_, _ = _run(conv_net())
    assert pass_.back_off() is None


def test_guard_drives_fallback_end_to_end(tmp_path):
    """A budget int8 cannot meet: the guard backs off node by node down to float."""
    proto = conv_net()
    path = tmp_path / "in.onnx"
    onnx.save(proto, path)
    data = tmp_path / "calib.npz"
    feeds = [random_feeds(proto, i, N=1) for i in range(10)]
    np.savez(data, x=np.concatenate([f["x"] for f in feeds]))
    pipeline = Pipeline.parse("quantize-int8{speed-check=false}")
    strict = optimize(path, None, pipeline, target="cpu", calib=data, guard="cosine>=0.9999999")
    record = strict.records[0]
    assert record.guard_action in {"unchanged", "rolled back"} and not record.modified
    assert len(record.options["exclude"].split(",")) >= 3  # backed off through the ranking
    result = optimize(
        path, tmp_path / "out.onnx", pipeline, target="cpu", calib=data, guard="cosine>=0.99"
    )
    record = result.records[0]
    assert record.guard_action == "applied" and record.modified


def test_bias_correction_is_applied_and_recorded():
    proto = conv_net()
    _, with_bc, _, _ = _run(proto, bias_correction=True)
    _, without, _, _ = _run(proto, bias_correction=False)
    assert with_bc.stats["biases-corrected"] >= 1
    assert without.stats["biases-corrected"] == 0


def test_smooth_quant_migrates_outlier_channels():
    w = (RNG.standard_normal((16, 8)) * 0.2).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    proto = _model(
        nodes, [_vi("x", [2, 6, 16])], [_vi("y", [2, 6, 8])], [numpy_helper.from_array(w, "w")]
    )
    data = _data(proto)
    data.arrays["x"][..., 3] *= 50.0  # one outlier channel, as in transformer activations
    model, result, _, _ = _run(proto, data=data, smooth_quant=0.5)
    assert result.stats["matmuls-smoothed"] == 1
    assert any(n.op_type == "Mul" for n in model.graph)
    after = to_proto(model)
    feeds = {"x": data.arrays["x"][0]}
    ref = _outputs(proto, feeds)[0]
    out = _outputs(after, feeds)[0]
    assert np.linalg.norm(ref - out) / np.linalg.norm(ref) < 0.05


def test_reduce_range_option_uses_seven_bit_weights():
    model, result, _, _ = _run(conv_net(), reduce_range="true")
    assert result.decisions[0]["reduce-range"] is True
    q = next(v for k, v in model.graph.initializers.items() if k.endswith("weight_quantized"))
    assert np.abs(q.const_value.numpy()).max() <= 63


@pytest.mark.parametrize("calibrator", ["percentile", "entropy"])
def test_histogram_calibrators_quantize_within_bounds(calibrator):
    proto = conv_net()
    model, result, _, _ = _run(proto, calibrator=calibrator)
    assert result.stats["nodes-quantized"] == 4
    assert _relative_error(proto, to_proto(model)) < 0.1


def test_percentile_and_entropy_clip_outliers():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.standard_normal(200_000), [80.0, -60.0]]).astype(np.float32)
    hist = HistogramStats.empty(float(values.min()), float(values.max()), 2048)
    hist.add(values)
    lo, hi = percentile_range(hist, 99.9)
    assert -5 < lo < -2 and 2 < hi < 5
    lo, hi = entropy_range(hist)
    assert -20 < lo < -1 and 1 < hi < 20
    # The histogram keeps its fixed size whatever it sees.
    hist.add(rng.standard_normal(3_000_000).astype(np.float32))
    assert hist.counts.shape == (2048,)


def test_target_presets_are_registered():
    Pipeline.parse("default")
    assert PRESETS["target-cpu"].endswith("quantize-dynamic-int8,quantize-int8")
    assert PRESETS["target-tensorrt"].endswith("quantize-int8")


def test_ops_after_the_last_weighted_node_stay_float():
    """A detection-head tail (Sigmoid into the output Concat) gains nothing from int8."""
    inits = [_w("w1", 8, 3, 3, 3), _w("w2", 4, 8, 1, 1)]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c1"], ["s1"], name="act1"),
        helper.make_node("Mul", ["c1", "s1"], ["m1"], name="silu1"),
        helper.make_node("Conv", ["m1", "w2"], ["c2"], name="conv2"),
        helper.make_node("Sigmoid", ["c2"], ["probs"], name="head_sigmoid"),
        helper.make_node("Concat", ["probs", "c2"], ["y"], name="head_concat", axis=1),
    ]
    proto = _model(nodes, [_vi("x", ["N", 3, 8, 8])], [_vi("y", ["N", 8, 8, 8])], inits)
    model, result, _, _ = _run(proto)
    quantized = {n.inputs[0].name for n in model.graph if n.op_type == "QuantizeLinear"}
    assert {"s1", "m1"} <= quantized  # SiLU between the Convs runs in int8
    assert "probs" not in quantized  # the head Sigmoid stays float
    assert _relative_error(proto, to_proto(model)) < 0.05


def test_activation_matmul_quantized_when_asked(tmp_path):
    nodes = [
        helper.make_node("MatMul", ["a", "b"], ["m"], name="mm"),
        helper.make_node("Relu", ["m"], ["y"], name="relu"),
    ]
    proto = _model(nodes, [_vi("a", [2, 4, 8]), _vi("b", [2, 8, 4])], [_vi("y", [2, 4, 4])], [])
    model, result, _, _ = _run(proto, matmul_activations=True)
    assert result.stats["values-quantized"] == 2
    assert "MatMulIntegerToFloat" in _optimized_ops(to_proto(model), tmp_path)


def test_compare_latency_times_models_interleaved(tmp_path):
    from nnopt_graph.runtime.quant_bench import compare_latency

    proto = conv_net()
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    result = compare_latency([path, path], random_feeds(proto, 0, N=1), runs=4, warmup=1)
    assert result.runs == 4 and len(result.p50_ms) == 2
    assert result.ratio[0] == {"min": 1.0, "median": 1.0, "max": 1.0}
    assert result.ratio[1]["min"] <= result.ratio[1]["median"] <= result.ratio[1]["max"]


def test_large_bias_on_a_tiny_weight_channel_does_not_saturate():
    w = (RNG.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)
    w[2] *= 1e-7  # a nearly dead channel ...
    b = np.array([0.1, -0.2, 100.0, 0.3], np.float32)  # ... that outputs its bias
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"), _w("w2", 4, 4, 1, 1)]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c", "w2"], ["c2"], name="conv2"),
        helper.make_node("Relu", ["c2"], ["y"], name="relu"),
    ]
    proto = _model(nodes, [_vi("x", ["N", 3, 8, 8])], [_vi("y", ["N", 4, 8, 8])], inits)
    model, result, _, _ = _run(proto)
    bias_q = model.graph.initializers["conv_bias_quantized"].const_value.numpy()
    assert np.abs(bias_q.astype(np.int64)).max() < 2**31 - 1
    assert _relative_error(proto, to_proto(model)) < 0.05


def test_streaming_stats_keep_per_channel_sums_bounded():
    from nnopt_graph.passes.quantize.calib import TensorStats

    stats = TensorStats(channel_axis=1)
    rng = np.random.default_rng(0)
    for _ in range(5):
        stats.add(
            rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
            + np.array([0, 5, -5])[None, :, None, None]
        )
    assert stats.channel_sum.shape == (3,) and stats.channel_count == 5 * 2 * 16 * 16
    np.testing.assert_allclose(stats.channel_mean, [0, 5, -5], atol=0.1)
    assert stats.low < -5 < 5 < stats.high


def _measured(monkeypatch, ratio):
    """Run quantize-int8 with speed-check=measure and every timed ratio set to ``ratio``."""
    from nnopt_graph.passes.quantize.int8 import orchestrate

    def timed(models, *args, **kwargs):
        same = {"median": 1.0, "min": 1.0, "max": 1.0}
        return [same] + [{"median": ratio, "min": ratio, "max": ratio}] * (len(models) - 1)

    monkeypatch.setattr(orchestrate, "_latency_ratios", timed)
    proto = conv_net()
    model = ir.serde.deserialize_model(proto)
    context = PassContext(target="cpu", calibration=_data(proto), speed_check="measure")
    pass_ = PassSpec.create("quantize-int8", fallback=False, speed_check=True).instantiate()
    result = pass_.run(model, context)
    return proto, model, result, next(d for d in result.decisions if "speed-check" in d)


def test_measured_speed_check_keeps_int8_when_it_times_faster(monkeypatch):
    _, model, result, speed = _measured(monkeypatch, 0.8)
    assert result.modified and "QuantizeLinear" in op_types(model)
    assert speed["speed-check"].startswith("measured") and speed["latency-ratio"]["median"] == 0.8
    assert "result" not in speed


def test_measured_speed_check_keeps_float_when_int8_is_not_faster(monkeypatch):
    proto, model, result, speed = _measured(monkeypatch, 0.99)
    assert not result.modified and op_types(model) == op_types(proto)
    assert result.stats["skipped-not-faster-or-unfused"] == 1
    assert speed["result"].startswith("int8 not faster (median latency ratio 0.990")


def amplified_channel_net():
    """conv_a's second channel is tiny (0.01 x) and a float Mul amplifies it 10^4-fold.

    Quantizing conv_a's output per tensor (its range set by the 10 x channel) wipes that
    channel out, and it dominates the output; conv_b's int8 noise stays small.
    """
    w_a = np.zeros((2, 2, 1, 1), np.float32)
    w_a[0, 0], w_a[1, 1] = 10.0, 0.01
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["ca"], name="conv_a"),
        helper.make_node("Mul", ["ca", "gain"], ["m"], name="gain_mul"),
        helper.make_node("Conv", ["x", "wb"], ["cb"], name="conv_b"),
        helper.make_node("Add", ["m", "cb"], ["y"], name="sum"),
    ]
    inits = [
        numpy_helper.from_array(w_a, "wa"),
        numpy_helper.from_array(np.array([0.01, 100.0], np.float32).reshape(1, 2, 1, 1), "gain"),
        _w("wb", 2, 2, 1, 1),
    ]
    return _model(nodes, [_vi("x", ["N", 2, 8, 8])], [_vi("y", ["N", 2, 8, 8])], inits)


def test_output_sensitivity_is_measured_on_back_off_and_finds_the_amplified_node():
    proto = amplified_channel_net()
    _, result, pass_, _ = _run(proto, fallback=True)
    # Ranked lazily: nothing is measured until the guard asks for a weaker version.
    assert not any("sensitivity" in d for d in result.decisions)
    weaker = pass_.back_off()
    assert weaker is not None and weaker.options.exclude == "conv_a"
    decision = pass_._cache.sensitivity_decision
    assert decision["sensitivity"].startswith("output")
    scores = dict((n, v) for n, v in decision["most-sensitive-db"])
    assert scores["conv_a"] < 10 and scores["conv_b"] > scores["conv_a"] + 20, scores
    # The weaker pass reuses the ranking (no second measurement) and keeps conv_b int8.
    again = weaker.run(
        ir.serde.deserialize_model(proto), PassContext(target="cpu", calibration=_data(proto))
    )
    assert again.stats["nodes-quantized"] == 1
    assert any(d.get("sensitivity") == decision["sensitivity"] for d in again.decisions)

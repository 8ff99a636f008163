"""quantize-int4: MatMulNBits layout, blocked int4 DequantizeLinear, AWQ, thresholds, skips."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.capi._pybind_state import quantize_matmul_4bits
from passes_util import op_types, random_feeds, to_proto

from nnopt_graph.passes.quantize.int4 import dequantize_nbits, pack_matmul_nbits, quantize_blockwise
from nnopt_graph.pipeline.base import PassContext
from nnopt_graph.pipeline.grammar import PassSpec
from nnopt_graph.runtime.data import Dataset

RNG = np.random.default_rng(0)
SMALL = {"min_elements": 1024}


def _model(nodes, inputs, outputs, inits, opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _w(name, *shape, scale=0.2):
    return numpy_helper.from_array((RNG.standard_normal(shape) * scale).astype(np.float32), name)


def linear(k=96, n=64, bias=True):
    inits = [_w("w", k, n)] + ([_w("b", n)] if bias else [])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m" if bias else "y"], name="mm")]
    if bias:
        nodes.append(helper.make_node("Add", ["m", "b"], ["y"], name="add"))
    return _model(nodes, [_vi("x", ["N", 5, k])], [_vi("y", ["N", 5, n])], inits)


def _data(proto, samples=4):
    feeds = [random_feeds(proto, i, N=2) for i in range(samples)]
    arrays = {k: np.stack([f[k] for f in feeds]) for k in feeds[0]}
    return Dataset(arrays, "test", frozenset(arrays))


def _run(proto, data=None, **options):
    model = ir.serde.deserialize_model(proto)
    context = PassContext(target="cuda", calibration=data if data is not None else _data(proto))
    pass_ = PassSpec.create("quantize-int4", **{**SMALL, **options}).instantiate()
    return model, pass_.run(model, context), pass_, context


def _relative_error(before, after, feeds):
    options = ort.SessionOptions()
    options.log_severity_level = 3

    def run(proto):
        return ort.InferenceSession(
            proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
        ).run(None, feeds)[0]

    ref, out = run(before), run(after)
    assert ref.shape == out.shape
    return float(np.linalg.norm(ref - out) / np.linalg.norm(ref))


def test_blockwise_codes_match_onnxruntime_packing():
    """Asymmetric RTN codes and MatMulNBits packing equal ONNX Runtime's own quantizer."""
    k, n, block = 100, 24, 32
    w = RNG.standard_normal((k, n)).astype(np.float32)
    codes, scale, zero = quantize_blockwise(w, block, symmetric=False)
    packed, zp = pack_matmul_nbits(codes, zero)
    blocks = codes.shape[1]
    padded = np.zeros((blocks * block, n), np.float32)
    padded[:k] = w
    ref_packed = np.zeros((n, blocks, block // 2), np.uint8)
    ref_scale = np.zeros((n, blocks), np.float32)
    ref_zp = np.zeros((n, (blocks + 1) // 2), np.uint8)
    quantize_matmul_4bits(ref_packed, padded, ref_scale, ref_zp, block, n, k, False)
    # Equal over the K real rows (the padding past K is never read).
    flat, ref_flat = packed.reshape(n, -1), ref_packed.reshape(n, -1)
    np.testing.assert_array_equal(flat[:, : k // 2], ref_flat[:, : k // 2])
    np.testing.assert_array_equal(zp, ref_zp)
    np.testing.assert_allclose(scale, ref_scale, rtol=1e-6)
    assert np.abs(dequantize_nbits(codes, scale, zero, k) - w).max() <= scale.max() / 2 + 1e-6


def test_matmul_becomes_matmulnbits_with_bounded_error():
    proto = linear()
    model, result, _, context = _run(proto)
    assert result.stats["matmuls-int4"] == 1
    node = next(n for n in model.graph if n.op_type == "MatMulNBits")
    assert node.domain == "com.microsoft"
    attrs = {k: a.value for k, a in node.attributes.items()}
    assert attrs == {"K": 96, "N": 64, "bits": 4, "block_size": 32}
    assert node.inputs[1].const_value.numpy().shape == (64, 3, 16)
    after = to_proto(model)
    assert "MatMul" not in op_types(after)
    assert _relative_error(proto, after, random_feeds(proto, 9, N=3)) < 0.15
    second = PassSpec.create("quantize-int4", **SMALL).instantiate().run(model, context)
    assert not second.modified


def test_asymmetric_blocks_carry_zero_points():
    proto = linear()
    model, result, _, _ = _run(proto, symmetric=False, block_size=64)
    node = next(n for n in model.graph if n.op_type == "MatMulNBits")
    assert len(node.inputs) == 4 and node.inputs[3].const_value.numpy().shape == (64, 1)
    assert _relative_error(proto, to_proto(model), random_feeds(proto, 9, N=3)) < 0.15


def test_gemm_with_transposed_weight_and_bias():
    inits = [_w("w", 64, 96), _w("b", 64)]
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)]
    proto = _model(nodes, [_vi("x", ["N", 96])], [_vi("y", ["N", 64])], inits)
    model, result, _, _ = _run(proto)
    node = next(n for n in model.graph if n.op_type == "MatMulNBits")
    assert node.inputs[5] is not None  # the bias input
    assert _relative_error(proto, to_proto(model), random_feeds(proto, 9, N=4)) < 0.15


def test_qdq_format_uses_blocked_int4_dequantize_at_opset_21():
    proto = linear()
    model, result, _, _ = _run(proto, format="qdq")
    assert model.opset_imports[""] >= 21
    dq = next(n for n in model.graph if n.op_type == "DequantizeLinear")
    assert dq.inputs[0].dtype == ir.DataType.INT4
    assert dq.attributes["block_size"].value == 32 and dq.attributes["axis"].value == 0
    assert _relative_error(proto, to_proto(model), random_feeds(proto, 9, N=3)) < 0.15


def test_awq_scales_help_with_outlier_channels():
    proto = linear(bias=False)
    data = _data(proto)
    data.arrays["x"][..., :4] *= 30.0  # salient input channels, as in LLM activations
    feeds = {"x": data.arrays["x"][0]}
    rtn_model, _, _, _ = _run(proto, data=data, method="rtn")
    awq_model, result, _, _ = _run(proto, data=data, method="awq")
    assert result.stats["matmuls-awq-scaled"] == 1
    assert any(n.op_type == "Mul" for n in awq_model.graph)
    rtn = _relative_error(proto, to_proto(rtn_model), feeds)
    awq = _relative_error(proto, to_proto(awq_model), feeds)
    assert awq < rtn


def test_small_matmuls_are_left_alone():
    model, result, _, _ = _run(linear(), min_elements=1 << 20)
    assert not result.modified
    assert result.stats["skipped-below-size-threshold"] == 1


def test_non_constant_weight_is_skipped():
    nodes = [helper.make_node("MatMul", ["a", "b"], ["y"], name="mm")]
    proto = _model(nodes, [_vi("a", [4, 64]), _vi("b", [64, 32])], [_vi("y", [4, 32])], [])
    model, result, _, _ = _run(proto)
    assert not result.modified and result.stats["skipped-weight-not-constant"] == 1


def test_matmul_in_subgraph_is_skipped_with_a_stat():
    body = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["t"], name="inner")],
        "then",
        [],
        [_vi("t", ["N", 64])],
        [_w("w", 96, 64)],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["z"], ["e"])], "else", [], [_vi("e", ["N", 64])]
    )
    nodes = [helper.make_node("If", ["c"], ["y"], name="if", then_branch=body, else_branch=other)]
    proto = _model(
        nodes,
        [_vi("x", ["N", 96]), _vi("z", ["N", 64]), _vi("c", [], TensorProto.BOOL)],
        [_vi("y", ["N", 64])],
        [],
    )
    model, result, _, _ = _run(proto)
    assert not result.modified and result.stats["skipped-nodes-in-subgraphs"] == 1


def test_back_off_leaves_worst_matmul_in_float():
    inits = [_w("w1", 96, 64), _w("w2", 64, 64, scale=1.0)]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("MatMul", ["h", "w2"], ["y"], name="mm2"),
    ]
    proto = _model(nodes, [_vi("x", ["N", 96])], [_vi("y", ["N", 64])], inits)
    _, _, pass_, context = _run(proto)
    weaker = pass_.back_off()
    assert weaker is not None and weaker.options.exclude in {"mm1", "mm2"}
    model = ir.serde.deserialize_model(proto)
    result = weaker.run(model, context)
    assert result.stats["matmuls-int4"] == 1 and result.stats["skipped-excluded"] == 1

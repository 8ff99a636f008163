"""Tests of eliminate-zero-structure: zero rows, unused columns, all-zero ops; outputs exact."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
from onnx import numpy_helper
from passes_util import check_idempotent, ort_run, to_proto

from nnopt_graph.pipeline.base import PassContext
from nnopt_graph.pipeline.grammar import PassSpec, Pipeline
from nnopt_graph.pipeline.manager import PassManager

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def build(text: str, **weights: np.ndarray) -> onnx.ModelProto:
    proto = onnx.parser.parse_model(text)
    for name, array in weights.items():
        proto.graph.initializer.append(numpy_helper.from_array(array, name))
        kept = [i for i in proto.graph.input if i.name != name]
        del proto.graph.input[:]
        proto.graph.input.extend(kept)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def rand(seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def run(proto: onnx.ModelProto, **options):
    model = ir.serde.deserialize_model(proto)
    result = (
        PassSpec.create("eliminate-zero-structure", **options)
        .instantiate()
        .run(model, PassContext())
    )
    return model, result


def init(proto: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in proto.graph.initializer if t.name == name))


def assert_exact(before: onnx.ModelProto, after: onnx.ModelProto, **shapes: tuple[int, ...]):
    rng = np.random.default_rng(7)
    for _ in range(2):
        feeds = {}
        for value in before.graph.input:
            dims = [d.dim_value or 2 for d in value.type.tensor_type.shape.dim]
            feeds[value.name] = shapes.get(value.name) or dims
            feeds[value.name] = rng.standard_normal(feeds[value.name]).astype(np.float32)
        for a, b in zip(ort_run(before, feeds), ort_run(after, feeds), strict=True):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


CHAIN = f"""{HEADER}
g (float[N,4,6,6] x, float[8,4,3,3] w1, float[8] b1, float[6,8,1,1] w2, float[6] b2)
    => (float[N,6,6,6] y) {{
    h = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)
    r = {{act}} (h)
    y = Conv (r, w2, b2)
}}"""


def chain(act: str = "Relu", rows=(1, 3), bias_zero=True, cols=()) -> onnx.ModelProto:
    w1, b1, w2 = rand(1, 8, 4, 3, 3), rand(2, 8), rand(3, 6, 8, 1, 1)
    for r in rows:
        w1[r] = 0
        if bias_zero:
            b1[r] = 0
    for c in cols:
        w2[:, c] = 0
    return build(CHAIN.replace("{act}", act), w1=w1, b1=b1, w2=w2, b2=rand(4, 6))


# ---------------------------------------------------------------- channels (positive)


def test_zero_rows_and_bias_are_removed_with_consumer_columns():
    proto = chain()
    model, result = run(proto)
    assert result.stats["channels-removed"] == 2
    out = to_proto(model)
    assert init(out, "w1").shape == (6, 4, 3, 3) and init(out, "b1").shape == (6,)
    assert init(out, "w2").shape == (6, 6, 1, 1)
    assert result.stats["params-removed"] == 2 * (36 + 1 + 6)
    assert_exact(proto, out)
    check_idempotent(model, "eliminate-zero-structure")


def test_unused_input_columns_remove_producer_rows():
    proto = chain(rows=(), cols=(0, 5, 7))
    model, result = run(proto)
    assert result.stats["channels-removed"] == 3
    out = to_proto(model)
    assert init(out, "w1").shape == (5, 4, 3, 3)
    assert_exact(proto, out)


def test_zero_preserving_activation_hardswish():
    proto = chain(act="HardSwish")
    model, result = run(proto)
    assert result.stats["channels-removed"] == 2
    assert_exact(proto, to_proto(model))


def test_removal_reaches_a_fixed_point():
    # Round 1: conv3 never reads channel 0 of conv2, so conv2's row 0 goes. Round 2:
    # conv1's channel 3 was read only by that row, so it is now unused and goes too.
    text = f"""{HEADER}
    g (float[N,4,5,5] x, float[8,4,1,1] w1, float[6,8,1,1] w2, float[3,6,1,1] w3)
        => (float[N,3,5,5] y) {{
        a = Conv (x, w1)
        b = Relu (a)
        c = Conv (b, w2)
        d = Relu (c)
        y = Conv (d, w3)
    }}"""
    w2, w3 = rand(5, 6, 8, 1, 1), rand(8, 3, 6, 1, 1)
    w3[:, 0] = 0
    w2[:, 3] = 0
    w2[0, 3] = 1.5
    proto = build(text, w1=rand(7, 8, 4, 1, 1), w2=w2, w3=w3)
    model, result = run(proto)
    out = to_proto(model)
    assert init(out, "w1").shape[0] == 7
    assert init(out, "w2").shape[:2] == (5, 7)
    assert init(out, "w3").shape[1] == 5
    assert result.stats["channels-removed"] == 2
    assert_exact(proto, out)


def test_gemm_hidden_units():
    text = f"""{HEADER}
    g (float[N,16] x, float[32,16] w1, float[32] b1, float[8,32] w2) => (float[N,8] y) {{
        h = Gemm <transB = 1> (x, w1, b1)
        r = Relu (h)
        y = Gemm <transB = 1> (r, w2)
    }}"""
    w1, b1 = rand(9, 32, 16), rand(10, 32)
    w1[::4] = 0
    b1[::4] = 0
    proto = build(text, w1=w1, b1=b1, w2=rand(11, 8, 32))
    model, result = run(proto)
    assert result.stats["channels-removed"] == 8
    out = to_proto(model)
    assert init(out, "w1").shape == (24, 16) and init(out, "w2").shape == (8, 24)
    assert_exact(proto, out)


def test_residual_needs_zero_in_both_branches():
    text = f"""{HEADER}
    g (float[N,4,5,5] x, float[8,4,1,1] wa, float[8,4,1,1] wb, float[3,8,1,1] wc)
        => (float[N,3,5,5] y) {{
        a = Conv (x, wa)
        b = Conv (x, wb)
        s = Add (a, b)
        y = Conv (s, wc)
    }}"""
    wa, wb = rand(12, 8, 4, 1, 1), rand(13, 8, 4, 1, 1)
    wa[2] = 0  # zero in one branch only: s[2] = b[2] is not zero
    wa[5] = 0
    wb[5] = 0  # zero in both: s[5] is zero
    proto = build(text, wa=wa, wb=wb, wc=rand(14, 3, 8, 1, 1))
    model, result = run(proto)
    assert result.stats["channels-removed"] == 1
    out = to_proto(model)
    assert init(out, "wa").shape[0] == 7 and init(out, "wc").shape[1] == 7
    assert_exact(proto, out)


def test_batchnorm_with_zero_shift_keeps_zero():
    text = f"""{HEADER}
    g (float[N,4,5,5] x, float[8,4,1,1] w, float[8] s, float[8] bb, float[8] m, float[8] v,
       float[3,8,1,1] w2) => (float[N,3,5,5] y) {{
        a = Conv (x, w)
        n = BatchNormalization (a, s, bb, m, v)
        y = Conv (n, w2)
    }}"""
    w = rand(15, 8, 4, 1, 1)
    bb, m = rand(16, 8), rand(17, 8)
    w[[1, 6]] = 0
    bb[1] = m[1] = 0  # BN maps 0 to 0 on channel 1
    bb[6] = 0.5  # channel 6 becomes 0.5 - mean * ...: not zero
    v = np.abs(rand(18, 8)) + 0.5
    proto = build(text, w=w, s=rand(19, 8), bb=bb, m=m, v=v, w2=rand(20, 3, 8, 1, 1))
    model, result = run(proto)
    assert result.stats["channels-removed"] == 1
    assert_exact(proto, to_proto(model))


# ---------------------------------------------------------------- channels (negative)


def test_zero_rows_with_nonzero_bias_stay():
    proto = chain(bias_zero=False)
    model, result = run(proto)
    assert not result.modified
    assert_exact(proto, to_proto(model))


def test_sigmoid_does_not_keep_zero():
    proto = chain(act="Sigmoid")
    _, result = run(proto)
    assert not result.modified


def test_channels_reaching_a_graph_output_are_frozen():
    text = f"""{HEADER}
    g (float[N,4,5,5] x, float[8,4,1,1] w, float[3,8,1,1] w2)
        => (float[N,3,5,5] y, float[N,8,5,5] a) {{
        a = Conv (x, w)
        y = Conv (a, w2)
    }}"""
    w = rand(21, 8, 4, 1, 1)
    w[4] = 0
    _, result = run(build(text, w=w, w2=rand(22, 3, 8, 1, 1)))
    assert not result.modified
    assert result.stats["skipped-frozen-zero-channels"] == 1


def test_dense_model_is_unchanged_without_channel_analysis(monkeypatch):
    from nnopt_graph.passes.cleanup import zero_structure

    def fail(*args, **kwargs):
        raise AssertionError("channel analysis run on a model without zero structure")

    monkeypatch.setattr(zero_structure, "find_channel_groups", fail)
    _, result = run(chain(rows=()))
    assert not result.modified


def test_round_to_keeps_a_multiple_of_channels():
    proto = chain(rows=(1, 3, 5))
    model, result = run(proto, round_to=2)
    assert result.stats["channels-removed"] == 2  # 8 - 3 = 5 kept at least: rounded up to 6
    out = to_proto(model)
    assert init(out, "w1").shape[0] == 6
    assert_exact(proto, out)
    _, result = run(proto, round_to=8)
    assert not result.modified


# ---------------------------------------------------------------- whole ops


def test_conv_with_all_zero_weight_becomes_its_bias():
    text = f"""{HEADER}
    g (float[N,4,6,6] x, float[5,4,3,3] w, float[5] b) => (float[N,5,3,3] y) {{
        y = Conv <strides = [2, 2], pads = [1, 1, 1, 1]> (x, w, b)
    }}"""
    proto = build(text, w=np.zeros((5, 4, 3, 3), np.float32), b=rand(23, 5))
    model, result = run(proto)
    assert result.stats["ops-replaced"] == 1
    out = to_proto(model)
    assert "Conv" not in [n.op_type for n in out.graph.node]
    assert_exact(proto, out, x=(3, 4, 6, 6))


def test_matmul_and_gemm_with_zero_weight():
    text = f"""{HEADER}
    g (float[B,S,8] x, float[8,6] w, float[N,6] z, float[6,6] g, float[6] c)
        => (float[B,S,6] y, float[N,6] t) {{
        y = MatMul (x, w)
        t = Gemm <transB = 1, beta = 2.0> (z, g, c)
    }}"""
    proto = build(
        text, w=np.zeros((8, 6), np.float32), g=np.zeros((6, 6), np.float32), c=rand(24, 6)
    )
    model, result = run(proto)
    assert result.stats["ops-replaced"] == 2
    out = to_proto(model)
    assert not {"MatMul", "Gemm"} & {n.op_type for n in out.graph.node}
    assert_exact(proto, out, x=(2, 3, 8), z=(4, 6))


def test_zero_conv_with_dynamic_spatial_size_is_skipped():
    text = f"""{HEADER}
    g (float[N,4,H,W] x, float[5,4,3,3] w) => (float[N,5,H,W] y) {{
        y = Conv <pads = [1, 1, 1, 1]> (x, w)
    }}"""
    _, result = run(build(text, w=np.zeros((5, 4, 3, 3), np.float32)))
    assert result.stats["ops-replaced"] == 0
    assert result.stats["skipped-zero-ops-unknown-shape"] == 1


# ---------------------------------------------------------------- pipelines and subgraphs


def test_zeros_that_appear_after_folding():
    text = f"""{HEADER}
    g (float[N,16] x, float[16,32] w, float[32] mask, float[32,4] w2) => (float[N,4] y) {{
        wm = Mul (w, mask)
        h = MatMul (x, wm)
        r = Relu (h)
        y = MatMul (r, w2)
    }}"""
    mask = np.ones(32, np.float32)
    mask[[0, 9, 30]] = 0
    proto = build(text, w=rand(25, 16, 32), mask=mask, w2=rand(26, 32, 4))
    model = ir.serde.deserialize_model(proto)
    pipeline = Pipeline.parse("fold-constants,eliminate-zero-structure,eliminate-dead-code")
    records = PassManager(pipeline).run(model)
    assert records[1].stats["channels-removed"] == 3
    out = to_proto(model)
    assert [i.dims for i in out.graph.initializer if i.name == "w2"][0] == [29, 4]
    assert_exact(proto, out)


def test_inside_an_if_branch():
    text = f"""{HEADER}
    g (float[N,8] x, bool c) => (float[N,4] y) {{
        y = If (c) <then_branch = t () => (float[N,4] ty) {{
                        w1 = Constant <value = float[1] {{0}}> ()
                        w2 = Constant <value = float[1] {{0}}> ()
                        h = MatMul (x, w1)
                        r = Relu (h)
                        ty = MatMul (r, w2)
                    }},
                    else_branch = e () => (float[N,4] ey) {{
                        ey = Constant <value = float[1,4] {{1,2,3,4}}> ()
                    }}>
    }}"""
    proto = onnx.parser.parse_model(text)
    w1 = rand(27, 8, 16)
    w1[:, [2, 3]] = 0
    branch = proto.graph.node[0].attribute[0].g
    branch.node[0].attribute[0].t.CopyFrom(numpy_helper.from_array(w1, "w1"))
    branch.node[1].attribute[0].t.CopyFrom(numpy_helper.from_array(rand(28, 16, 4), "w2"))
    model = ir.serde.deserialize_model(proto)
    PassSpec.create("lift-constants").instantiate().run(model, PassContext())
    result = PassSpec.create("eliminate-zero-structure").instantiate().run(model, PassContext())
    assert result.stats["channels-removed"] == 2
    out = to_proto(model)
    feeds = {"x": rand(29, 3, 8), "c": np.array(True)}
    np.testing.assert_allclose(
        ort_run(out, feeds)[0], ort_run(proto, feeds)[0], rtol=1e-5, atol=1e-6
    )


def test_functions_are_counted():
    text = """<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
    g (float[N,4] x) => (float[N,4] y) { y = local.F (x) }
    <domain: "local", opset_import: ["" : 17]>
    F (a) => (b) { b = Relu (a) }"""
    _, result = run(onnx.parser.parse_model(text))
    assert not result.modified and result.stats["skipped-functions"] == 1

"""The modelled latency the search ranks by: MACs, int8, kernel calls, NCHWc, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import helper, numpy_helper

from nnopt_graph.passes.quantize.cost import KERNEL_COST, NCHW_FACTOR, QDQ_COST
from nnopt_graph.search.modelled import _conv_factor, modelled_cost, modelled_ratio

RNG = np.random.default_rng(0)


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _matmul(path: Path, k: int, n: int, extra_relus: int = 0) -> Path:
    """Y = X[N,k] @ W[k,n] with ``extra_relus`` Relus after it (more kernel calls)."""
    w = numpy_helper.from_array(RNG.standard_normal((k, n)).astype(np.float32), "W")
    nodes = [helper.make_node("MatMul", ["X", "W"], ["h0"], name="mm")]
    for i in range(extra_relus):
        nodes.append(helper.make_node("Relu", [f"h{i}"], [f"h{i + 1}"], name=f"relu{i}"))
    nodes.append(helper.make_node("Identity", [f"h{extra_relus}"], ["Y"], name="out"))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, ["N", k])],
        [helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, ["N", n])],
        [w],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _conv_qdq(path: Path, channels: int, quantized: bool) -> Path:
    """Conv 3x3 over [1, c, 32, 32]; with ``quantized`` in QDQ form ORT fuses to int8."""
    w = RNG.standard_normal((channels, channels, 3, 3)).astype(np.float32) * 0.1
    inits = []
    nodes = []
    x, wname = "X", "W"
    if quantized:
        inits += [
            numpy_helper.from_array(np.clip(w * 50, -127, 127).astype(np.int8), "Wq"),
            numpy_helper.from_array(np.array(0.02, np.float32), "ws"),
            numpy_helper.from_array(np.array(0, np.int8), "wz"),
            numpy_helper.from_array(np.array(0.05, np.float32), "xs"),
            numpy_helper.from_array(np.array(128, np.uint8), "xz"),
            numpy_helper.from_array(np.array(0.1, np.float32), "ys"),
            numpy_helper.from_array(np.array(128, np.uint8), "yz"),
        ]
        nodes += [
            helper.make_node("DequantizeLinear", ["Wq", "ws", "wz"], ["Wd"], name="w_dq"),
            helper.make_node("QuantizeLinear", ["X", "xs", "xz"], ["Xq"], name="x_q"),
            helper.make_node("DequantizeLinear", ["Xq", "xs", "xz"], ["Xd"], name="x_dq"),
        ]
        x, wname = "Xd", "Wd"
    else:
        inits.append(numpy_helper.from_array(w, "W"))
    conv_out = "C" if quantized else "Y"
    nodes.append(helper.make_node("Conv", [x, wname], [conv_out], name="conv", pads=[1, 1, 1, 1]))
    if quantized:
        nodes += [
            helper.make_node("QuantizeLinear", ["C", "ys", "yz"], ["Cq"], name="y_q"),
            helper.make_node("DequantizeLinear", ["Cq", "ys", "yz"], ["Y"], name="y_dq"),
        ]
    shape = [1, channels, 32, 32]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, shape)],
        inits,
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_macs_of_a_matmul_at_the_feed_shape_and_kernel_calls(tmp_path: Path) -> None:
    path = _matmul(tmp_path / "m.onnx", 64, 32)
    cost = modelled_cost(path, {"X": [4, 64]})
    assert cost.macs == 4 * 64 * 32
    assert cost.int8_macs == 0 and cost.standalone_qdq_elements == 0
    assert cost.kernel_calls >= 1
    assert cost.total == pytest.approx(cost.macs + KERNEL_COST * cost.kernel_calls)
    # The dynamic batch is read from the feed: twice the rows, twice the MACs.
    assert modelled_cost(path, {"X": [8, 64]}).macs == 2 * cost.macs


def test_a_narrower_layer_costs_less(tmp_path: Path) -> None:
    wide = _matmul(tmp_path / "wide.onnx", 512, 512)
    narrow = _matmul(tmp_path / "narrow.onnx", 512, 256)
    r = modelled_ratio(narrow, wide, {"X": [1, 512]})
    assert r["ratio"] < 1.0
    assert r["candidate"]["macs"] * 2 == r["input"]["macs"]


def test_more_kernel_calls_cost_more_at_equal_macs(tmp_path: Path) -> None:
    base = _matmul(tmp_path / "a.onnx", 16, 16)
    more = _matmul(tmp_path / "b.onnx", 16, 16, extra_relus=3)
    a, b = modelled_cost(base, {"X": [1, 16]}), modelled_cost(more, {"X": [1, 16]})
    assert a.macs == b.macs
    assert b.kernel_calls > a.kernel_calls
    assert b.total - a.total == pytest.approx(KERNEL_COST * (b.kernel_calls - a.kernel_calls))


def test_a_fused_qdq_conv_counts_as_int8_and_a_large_one_costs_less(tmp_path: Path) -> None:
    shapes = {"X": [1, 64, 32, 32]}
    fp = modelled_cost(_conv_qdq(tmp_path / "f.onnx", 64, False), shapes)
    q = modelled_cost(_conv_qdq(tmp_path / "q.onnx", 64, True), shapes)
    assert fp.int8_macs == 0
    assert q.macs == fp.macs == 32 * 32 * 64 * 64 * 9
    assert q.int8_macs == q.macs  # ORT fused the weight's DequantizeLinear away
    assert q.total < fp.total


def test_a_dequantize_left_standalone_is_charged_per_element(tmp_path: Path) -> None:
    # DQ -> Relu: nothing to fuse it into, so ORT runs it (and the Q before it) standalone.
    graph = onnx.parser.parse_graph(
        """
        g (float[1, 8, 16, 16] X) => (float[1, 8, 16, 16] Y) <float xs = {0.05}, uint8 xz = {128}> {
            Xq = QuantizeLinear(X, xs, xz)
            Xd = DequantizeLinear(Xq, xs, xz)
            Y = Relu(Xd)
        }
        """
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    cost = modelled_cost(_save(model, tmp_path / "dq.onnx"), {"X": [1, 8, 16, 16]})
    assert cost.macs == 0
    assert cost.standalone_qdq_elements == 2 * 8 * 16 * 16
    assert cost.total == pytest.approx(
        QDQ_COST * cost.standalone_qdq_elements + KERNEL_COST * cost.kernel_calls
    )


def test_integer_matmul_always_counts_as_int8(tmp_path: Path) -> None:
    graph = onnx.parser.parse_graph(
        """
        g (uint8[2, 32] A, int8[32, 8] B) => (int32[2, 8] Y) {
            Y = MatMulInteger(A, B)
        }
        """
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    cost = modelled_cost(_save(model, tmp_path / "mi.onnx"), {"A": [2, 32], "B": [32, 8]})
    assert cost.macs == cost.int8_macs == 2 * 32 * 8


def test_conv_factor_nchw_and_block_padding() -> None:
    import onnx_ir as ir

    def conv(name: str, out_c: int, in_c: int, group: int = 1) -> ir.Node:
        w = ir.Value(name="w", shape=ir.Shape([out_c, in_c // group, 3, 3]))
        x = ir.Value(name="x")
        attrs = [ir.AttrInt64("group", group)] if group > 1 else []
        return ir.Node("", "Conv", [x, w], attrs, name=name)

    # Kept under its own name in ORT's graph: the plain NCHW kernels.
    assert _conv_factor(conv("c", 6, 18), {"c"}, 16) == NCHW_FACTOR
    # Blocked: 6 output channels padded to 16; 32 input channels need no padding.
    assert _conv_factor(conv("c", 6, 32), set(), 16) == pytest.approx(16 / 6)
    assert _conv_factor(conv("c", 32, 32), set(), 16) == 1.0
    # Fewer input channels than the block are read unpadded (the first layer's 3).
    assert _conv_factor(conv("c", 16, 3), set(), 16) == 1.0
    # Depthwise: only the channel count pads; no block (no AVX2): no padding.
    assert _conv_factor(conv("c", 24, 24, group=24), set(), 16) == pytest.approx(32 / 24)
    assert _conv_factor(conv("c", 6, 18), set(), 1) == 1.0


def test_the_same_file_gives_the_same_figure_and_the_input_is_one(tmp_path: Path) -> None:
    path = _conv_qdq(tmp_path / "q.onnx", 16, True)
    shapes = {"X": [1, 16, 32, 32]}
    assert modelled_cost(path, shapes) == modelled_cost(path, shapes)
    assert modelled_ratio(path, path, shapes)["ratio"] == 1.0
    other = _conv_qdq(tmp_path / "f.onnx", 16, False)
    first = modelled_ratio(path, other, shapes)
    assert modelled_ratio(path, other, shapes) == first
    assert first["candidate"]["int8-macs"] > 0 and first["input"]["int8-macs"] == 0

"""Ops whose weight is all zeros: each is replaced by its bias broadcast to its output shape."""

from __future__ import annotations

__all__ = ["WEIGHT_OPS", "replace_zero_op", "small_enough", "zero_weight"]

import numpy as np
import onnx_ir as ir

from nnopt_graph.analysis.walk import STANDARD_DOMAINS
from nnopt_graph.core.constants import const_array
from nnopt_graph.core.names import NameScope
from nnopt_graph.core.rewrite import ShapeBuilder, replace_output

WEIGHT_OPS = frozenset({"Conv", "Gemm", "MatMul"})


def small_enough(value: ir.Value | None, limit: int) -> bool:
    """Whether a weight is small enough to read whole (a multi-GB model is never loaded)."""
    tensor = value.const_value if value is not None else None
    return tensor is None or tensor.size <= limit


def zero_weight(node: ir.Node, limit: int) -> bool:
    """Whether a Conv/Gemm/MatMul's weight is all zeros (and small enough to read)."""
    if (
        node.domain not in STANDARD_DOMAINS
        or node.op_type not in WEIGHT_OPS
        or len(node.inputs) < 2
        or not small_enough(node.inputs[1], limit)
    ):
        return False
    array = const_array(node.inputs[1])
    return array is not None and array.size > 0 and not np.any(array != 0)


def replace_zero_op(node: ir.Node, opset: int, taken: NameScope) -> str | None:
    """Replace a Conv/Gemm/MatMul with an all-zero weight by Expand(its bias); None or why not."""
    graph = node.graph
    if not isinstance(graph, ir.Graph):
        return "in a function"
    x = node.inputs[0]
    y = node.outputs[0]
    w = const_array(node.inputs[1])
    assert w is not None
    if x is None or y.dtype is None:
        return "unknown output type"
    dtype = y.dtype.numpy()
    build = ShapeBuilder(graph, opset, taken)
    base = node.name or y.name or node.op_type
    op = node.op_type
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if bias is not None and const_array(bias) is None:
        return "computed bias"
    bias_array = const_array(bias) if bias is not None else None
    nodes: list[ir.Node] = []
    if op == "MatMul":
        if x.shape is None or len(x.shape) < 1 or w.ndim != 2:
            return "input rank unknown"
        fill = np.zeros([1] * max(len(x.shape) - 1, 0) + [w.shape[1]], dtype=dtype)
        if len(x.shape) == 1:
            shape = build.const(f"{base}/zero_shape", np.array([w.shape[1]], np.int64))
        else:
            lead_nodes, lead = build.dims(x, 0, -1, f"{base}/lead")
            n_dim = build.const(f"{base}/zero_n", np.array([w.shape[1]], np.int64))
            cat = build.node("Concat", [lead, n_dim], f"{base}/zero_shape", axis=0)
            nodes += [*lead_nodes, cat]
            shape = cat.outputs[0]
    elif op == "Gemm":
        beta = node.attributes["beta"].as_float() if "beta" in node.attributes else 1.0
        trans_a = node.attributes["transA"].as_int() if "transA" in node.attributes else 0
        trans_b = node.attributes["transB"].as_int() if "transB" in node.attributes else 0
        n = w.shape[0] if trans_b else w.shape[1]
        fill = np.zeros((1, n), dtype=dtype)
        if bias_array is not None:
            fill = (np.asarray(beta, dtype=dtype) * bias_array.astype(dtype)).astype(dtype)
            fill = fill.reshape((1,) * (2 - fill.ndim) + fill.shape) if fill.ndim < 2 else fill
        m_nodes, m_dim = build.dims(x, 1 if trans_a else 0, 2 if trans_a else 1, f"{base}/rows")
        n_dim = build.const(f"{base}/zero_n", np.array([n], np.int64))
        cat = build.node("Concat", [m_dim, n_dim], f"{base}/zero_shape", axis=0)
        nodes += [*m_nodes, cat]
        shape = cat.outputs[0]
    else:  # Conv: every output channel is its bias, over the output's spatial size
        dims = list(y.shape) if y.shape is not None else None
        static = [d for d in (dims or [])[1:] if isinstance(d, int)]
        if dims is None or len(static) != len(dims) - 1:
            return "output channels or spatial size not static"
        cout = static[0]
        fill = np.zeros([1, cout] + [1] * (len(dims) - 2), dtype=dtype)
        if bias_array is not None:
            fill = bias_array.astype(dtype).reshape(fill.shape)
        batch_nodes, batch = build.dims(x, 0, 1, f"{base}/batch")
        rest = build.const(f"{base}/zero_rest", np.array(static, np.int64))
        cat = build.node("Concat", [batch, rest], f"{base}/zero_shape", axis=0)
        nodes += [*batch_nodes, cat]
        shape = cat.outputs[0]
    value = build.const(f"{base}/zero_value", fill)
    expand = build.node("Expand", [value, shape], f"{base}/as_constant")
    replace_output(node, [*nodes, expand], expand.outputs[0])
    return None

"""MatMul by a constant weight -> Gemm(transB=1), so the weight has the rows of K 2:4 needs."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from nnopt_graph.core.names import NameScope
from nnopt_graph.core.rewrite import ShapeBuilder, replace_output
from nnopt_graph.passes.sparsity.layers import Layer, read_weight, write_weight


def _opset(model: ir.Model) -> int:
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))


def _matmul_to_gemm(layer: Layer, model: ir.Model, taken: NameScope) -> str | None:
    """Rewrite a MatMul by a constant [K, N] weight as Gemm(transB=1); None or why not.

    An input of rank > 2 is flattened to [-1, K] and the result reshaped back to the
    input's leading dimensions followed by N. The weight is stored transposed as [N, K]
    (rows of K, the layout of a fully connected layer).
    """
    node = layer.node
    graph = node.graph
    a = node.inputs[0]
    assert isinstance(graph, ir.Graph) and a is not None
    if a.shape is None or len(a.shape) < 2:
        return "input rank unknown or 1"
    opset = _opset(model)
    if opset < 11:
        return f"opset {opset} < 11 (Gemm needs C)"
    tensor = read_weight(layer.weight)
    assert tensor is not None
    k, n = layer.shape
    write_weight(layer.weight, np.ascontiguousarray(tensor.numpy().T))
    build = ShapeBuilder(graph, opset, taken)
    base = node.name or node.outputs[0].name or "matmul"
    if len(a.shape) == 2:
        gemm = build.node("Gemm", [a, layer.weight], f"{base}/gemm", transB=1)
        replace_output(node, [gemm], gemm.outputs[0])
        return None
    flat_shape = build.const(f"{base}/gemm_in_shape", np.array([-1, k], np.int64))
    n_dim = build.const(f"{base}/gemm_n", np.array([n], np.int64))
    flat = build.node("Reshape", [a, flat_shape], f"{base}/flatten")
    gemm = build.node("Gemm", [flat.outputs[0], layer.weight], f"{base}/gemm", transB=1)
    lead_nodes, lead = build.dims(a, 0, -1, f"{base}/lead")
    out_shape = build.node("Concat", [lead, n_dim], f"{base}/out_shape", axis=0)
    unflat = build.node("Reshape", [gemm.outputs[0], out_shape.outputs[0]], f"{base}/unflatten")
    replace_output(node, [flat, gemm, *lead_nodes, out_shape, unflat], unflat.outputs[0])
    return None

"""Independent N:M check of a saved model, written from TensorRT's rule, not from the pass.

For every Conv, MatMul and Gemm whose weight is constant (initializer or Constant node):
Conv weights [Cout, Cin/group, *kernel] must hold at most N non-zeros in each run of M
input channels at each output channel and kernel position (the loop TensorRT's developer
guide gives for 2:4); MatMul B [K, N] and Gemm B ([K, N], or [N, K] when transB=1) at
most N non-zeros in each run of M along K for each output column.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import numpy_helper


@dataclasses.dataclass
class WeightCheck:
    """One layer's weight: size, zero fraction, and groups breaking N:M (None: K % M != 0)."""

    node: str
    op: str
    weight: str
    size: int
    zero_fraction: float
    violations: int | None


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    found = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            found[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return found


def _violations(op: str, node: onnx.NodeProto, w: np.ndarray, n: int, m: int) -> int | None:
    if op == "Conv":
        cout, cin = w.shape[:2]
        if cin % m:
            return None
        runs = w.reshape(cout, cin // m, m, -1)
        return int(np.sum(np.count_nonzero(runs, axis=2) > n))
    trans_b = any(a.name == "transB" and a.i for a in node.attribute)
    kn = w.T if op == "Gemm" and trans_b else w
    k, cols = kn.shape
    if k % m:
        return None
    return int(np.sum(np.count_nonzero(kn.reshape(k // m, m, cols), axis=1) > n))


def check_model(proto: onnx.ModelProto, n: int = 2, m: int = 4) -> list[WeightCheck]:
    """Every constant-weight Conv/MatMul/Gemm of the main graph, checked against N:M."""
    consts = _constants(proto.graph)
    out = []
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "MatMul", "Gemm") or len(node.input) < 2:
            continue
        w = consts.get(node.input[1])
        if w is None or w.ndim < 2 or (node.op_type != "Conv" and w.ndim != 2):
            continue
        zero = 1.0 - np.count_nonzero(w) / w.size
        out.append(
            WeightCheck(
                node.name,
                node.op_type,
                node.input[1],
                int(w.size),
                float(zero),
                _violations(node.op_type, node, w, n, m),
            )
        )
    return out


def summarize(checks: Iterable[WeightCheck], sparsified: set[str]) -> dict[str, object]:
    """For the weights the pass reports as sparsified: all follow N:M? and MatMul/Gemm coverage."""
    checks = list(checks)
    mm = [c for c in checks if c.op in ("MatMul", "Gemm")]
    mm_total = sum(c.size for c in mm)
    mm_sparse = sum(c.size for c in mm if c.weight in sparsified)
    bad = [c.weight for c in checks if c.weight in sparsified and c.violations != 0]
    missing = sorted(sparsified - {c.weight for c in checks})
    return {
        "sparsified_weights": len(sparsified),
        "all_follow_pattern": not bad and not missing,
        "violating_weights": bad,
        "not_found": missing,
        "matmul_gemm_params": mm_total,
        "matmul_gemm_params_sparsified": mm_sparse,
        "matmul_gemm_coverage": mm_sparse / mm_total if mm_total else None,
    }

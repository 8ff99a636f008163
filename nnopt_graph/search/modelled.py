"""Modelled latency of a built candidate: deterministic, read off the graph ONNX Runtime runs.

The search ranks candidates by this figure, not by a timed one: timings on a shared machine
move with its load, so a strategy told them asks other candidates from run to run (the same
seed gave other fronts locally and on Ray). The model is quantize-int8's cost model
(passes/quantize/cost.py) extended from "int8 vs float of one model" to a whole graph:

    cost = sum over Conv/ConvTranspose/Gemm/MatMul (and their integer forms) of
               MACs / int8 speedup (when it runs fused in int8, else MACs)
           + QDQ_COST * elements through every Quantize/Dequantize left standalone
           + KERNEL_COST * kernel calls (nodes of ONNX Runtime's optimized main graph)

MACs come from the candidate's own graph with its inputs fixed to the feed's shapes;
which nodes run in int8, which Quantize/Dequantize stay standalone and how many kernels
run come from ONNX Runtime's CPU EP optimized graph (ORT_ENABLE_ALL): a standard
Conv/Gemm/MatMul in QDQ form runs in int8 when the DequantizeLinear of its weight was
fused away there (quantize-int8's fusion check uses the same criterion); MatMulInteger,
ConvInteger, QLinear* and DynamicQuantizeMatMul always do.

Float convolutions: ONNX Runtime runs a Conv in its blocked NCHWc layout (channels in
blocks of 16 with AVX-512, 8 with AVX2) when the channel counts allow, and such a node
is renamed in the optimized graph; the padded channels are computed too, so its MACs
count with channels rounded up to the block (a pruned 6-channel layer costs 16). A float
Conv whose name survives there runs the plain NCHW kernels: its MACs count
``NCHW_FACTOR`` times (pruned widths that are not multiples of the block end up there).

The figure is relative to the input model's (same shapes, same rules). The same file
gives the same figure on the same machine kind (the int8 speedup depends on the CPU's
VNNI, the block on AVX-512). Ops without MACs cost only their kernel call; subgraph bodies
are not counted.
"""

from __future__ import annotations

__all__ = ["INT8_OPS", "ModelledCost", "modelled_cost", "modelled_ratio"]

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir

from nnopt_graph.analysis.stats import _node_macs
from nnopt_graph.passes.quantize.cost import (
    KERNEL_COST,
    NCHW_FACTOR,
    QDQ_COST,
    _speedup,
    largest_activation,
    shaped_clone,
)

# Integer ops (ONNX and ONNX Runtime's): (index of the weight-like input, conv-like).
INT8_OPS: dict[str, tuple[int, bool]] = {
    "ConvInteger": (1, True),
    "QLinearConv": (3, True),
    "MatMulInteger": (1, False),
    "QLinearMatMul": (3, False),
    "MatMulIntegerToFloat": (1, False),
    "DynamicQuantizeMatMul": (1, False),
    "QGemm": (3, False),
}
_QDQ = ("QuantizeLinear", "DequantizeLinear")


def _block_size() -> int:
    """ONNX Runtime's NCHWc channel block on this CPU: 16 (AVX-512), 8 (AVX2), else 1."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            flags = next(
                (ln.split(":", 1)[1].split() for ln in handle if ln.startswith("flags")), []
            )
    except OSError:
        flags = []
    return 16 if "avx512f" in flags else 8 if "avx2" in flags else 1


def _pad(n: int, block: int) -> int:
    return -(-n // block) * block


def _conv_factor(node: ir.Node, kept: set[str], block: int) -> float:
    """MAC multiplier of a float Conv: NCHW path, or the NCHWc block padding."""
    if node.name in kept:
        return NCHW_FACTOR
    w = _dims(node.inputs[1])
    if w is None or len(w) < 3 or block <= 1:
        return 1.0
    group = node.attributes.get("group")
    groups = group.as_int() if group is not None else 1
    out_c, in_c = w[0], w[1] * groups
    factor = _pad(out_c, block) / out_c
    if groups == 1 and in_c >= block:
        factor *= _pad(in_c, block) / in_c
    return factor


@dataclasses.dataclass(frozen=True)
class ModelledCost:
    """A model's modelled cost (MAC units) and what it is made of."""

    total: float
    macs: int
    int8_macs: int
    standalone_qdq_elements: int
    kernel_calls: int

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (the cost rounded to whole MAC units)."""
        return {
            "cost": round(self.total),
            "macs": self.macs,
            "int8-macs": self.int8_macs,
            "standalone-qdq-elements": self.standalone_qdq_elements,
            "kernel-calls": self.kernel_calls,
        }


def _dims(value: ir.Value | None) -> list[int] | None:
    if value is None or value.shape is None:
        return None
    dims = [d for d in value.shape if isinstance(d, int) and d >= 0]
    return dims if len(dims) == len(value.shape) else None


def _integer_macs(node: ir.Node) -> int | None:
    """MACs of an integer Conv/MatMul/Gemm form, from its output and weight/activation shapes."""
    index, conv = INT8_OPS[node.op_type]
    out = _dims(node.outputs[0]) if node.outputs else None
    if out is None or len(node.inputs) <= index:
        return None
    if conv:
        w = _dims(node.inputs[index])
        return None if w is None else math.prod(out) * math.prod(w[1:])
    a = _dims(node.inputs[0])
    return None if not a else math.prod(out) * a[-1]


def _cost(model: ir.Model, optimized: onnx.GraphProto, vnni: bool, block: int) -> ModelledCost:
    """The cost of ``model`` (shapes inferred) given ORT's optimized main graph of it."""
    kept = {n.name for n in optimized.node}
    producers = {v.name: n for n in model.graph for v in n.outputs if v.name}
    values = {v.name: v for n in model.graph for v in n.outputs if v.name}
    values.update({v.name: v for v in model.graph.inputs if v.name})
    macs: dict[str, int] = {}
    compute = 0.0
    int8_macs = total_macs = 0
    for k, node in enumerate(model.graph):
        integer = node.domain in ("", "ai.onnx", "com.microsoft") and node.op_type in INT8_OPS
        n = _integer_macs(node) if integer else _node_macs(node)
        if not n or n < 0:
            continue
        macs[node.name or f"#{k}"] = n
        fused = integer
        if not integer and len(node.inputs) > 1:
            dq = producers.get(node.inputs[1].name or "") if node.inputs[1] is not None else None
            fused = dq is not None and dq.op_type == "DequantizeLinear" and dq.name not in kept
        total_macs += n
        if fused:
            int8_macs += n
            compute += n / _speedup(node, vnni)
        elif node.op_type == "Conv" and node.domain in ("", "ai.onnx"):
            compute += n * _conv_factor(node, kept, block)
        else:
            compute += n
    fallback = largest_activation(macs)
    elements = 0
    for node in optimized.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in _QDQ:
            continue
        name = node.input[0] if node.op_type == "QuantizeLinear" else node.output[0]
        dims = _dims(values.get(name))
        elements += fallback if dims is None else math.prod(dims)
    calls = len(optimized.node)
    total = compute + QDQ_COST * elements + KERNEL_COST * calls
    return ModelledCost(total, total_macs, int8_macs, elements, calls)


@functools.cache
def _block() -> int:
    return _block_size()


@functools.cache
def _vnni() -> bool:
    from nnopt_graph.passes.quantize.int8.plan import cpu_int8_features

    return bool(cpu_int8_features()["vnni"])


def modelled_cost(path: str | Path, shapes: Mapping[str, Sequence[int]]) -> ModelledCost:
    """The modelled cost of the model file at ``path`` with its inputs at ``shapes``."""
    from nnopt_graph.core import io
    from nnopt_graph.runtime.services import RuntimeServices

    model = shaped_clone(io.load(Path(path)), shapes)
    optimized = RuntimeServices().optimized_graph(model)
    return _cost(model, optimized.graph, _vnni(), _block())


@functools.lru_cache(maxsize=8)
def _input_cost(path: str, stamp: tuple[int, int], shapes: tuple[Any, ...]) -> ModelledCost:
    return modelled_cost(path, {k: list(v) for k, v in shapes})


def modelled_ratio(
    candidate: str | Path, reference: str | Path, shapes: Mapping[str, Sequence[int]]
) -> dict[str, Any]:
    """The candidate's modelled cost over the reference's (the input), with both costs.

    The reference's cost is computed once per process (keyed by path, size and mtime).
    """
    st = Path(reference).stat()
    key = tuple(sorted((k, tuple(int(d) for d in v)) for k, v in shapes.items()))
    ref = _input_cost(str(reference), (st.st_size, st.st_mtime_ns), key)
    cand = modelled_cost(candidate, shapes)
    return {
        "ratio": round(cand.total / ref.total, 6) if ref.total else 1.0,
        "candidate": cand.to_json(),
        "input": ref.to_json(),
    }

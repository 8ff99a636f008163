"""A deterministic cost model for keeping int8: the same model and data, the same answer.

Timed speed checks flip with machine load at the edge of the noise (the same command
wrote different files from run to run). The default decision instead compares modelled
costs of the float and the int8 candidate, both read off what ONNX Runtime's CPU EP will
actually run (its optimized graph, from the fusion check):

    cost(float) = sum of MACs of the Conv/ConvTranspose/Gemm/MatMul nodes
    cost(int8)  = sum over those nodes of MACs / speedup (when fused in int8, else MACs)
                  + QDQ_COST * elements through every Quantize/Dequantize left standalone
                  + KERNEL_COST * (standalone Quantize/Dequantize + layout Transposes)

Every standalone Quantize/Dequantize and every Transpose ONNX Runtime inserts to run an
int8 kernel channels-last is one more kernel call; on a small graph (rapidocr-cls:
16 M MACs, 48x192 input) those calls' fixed cost, not their elements, is what made a
partly int8 model 1.135x slower than float while elements alone modelled 0.832.

The speedups are per kernel family (int8 GEMM with VNNI about 3x, without about 2x;
depthwise and grouped int8 convolutions run no faster than float in ONNX Runtime's
kernels), QDQ_COST is a standalone (de)quantization's cost per element in MAC units.
int8 is kept only below ``KEEP_BELOW`` so a marginal gain is not taken.
"""

from __future__ import annotations

__all__ = ["KEEP_BELOW", "KERNEL_COST", "CostModel", "node_macs", "shaped_clone"]

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import onnx_ir as ir
import onnx_ir.passes.common as ir_passes

from nnopt_graph.analysis.stats import _node_macs

# Keep int8 only when its modelled cost is below this fraction of float's.
KEEP_BELOW = 0.9
# One standalone QuantizeLinear/DequantizeLinear element, in multiply-accumulates: it is
# memory-bound (read 4 bytes, write 1) where a GEMM does dozens of MACs per cycle.
QDQ_COST = 32.0
# One extra kernel call (a standalone Q/DQ or a layout Transpose), in multiply-accumulates:
# about 4-10 us each on rapidocr-cls's small tensors, where float convolutions ran about
# 12.6 k MACs per us (ORT profile: 1.29 ms of Conv for 16.3 M MACs, 2 threads).
KERNEL_COST = 50_000.0
# Drop a node family from int8 when the model says it costs this much less without it.
DROP_BELOW = 0.97


def _speedup(node: ir.Node, vnni: bool) -> float:
    if node.op_type in ("Conv", "ConvTranspose"):
        group = node.attributes.get("group")
        if group is not None and group.as_int() > 1:
            return 0.9  # depthwise/grouped int8 kernels are no faster than float ones
    return 3.0 if vnni else 2.0


def shaped_clone(model: ir.Model, shapes: Mapping[str, Sequence[int]]) -> ir.Model:
    """A clone with the inputs fixed to ``shapes`` and every node output re-inferred."""
    clone = model.clone()
    for value in clone.graph.inputs:
        if value.name and value.name in shapes:
            value.shape = ir.Shape(list(shapes[value.name]))
    for node in clone.graph:
        for value in node.outputs:
            value.shape = None  # re-inferred from the concrete inputs, not the symbolic ones
    ir_passes.ShapeInferencePass(strict_mode=False)(clone)
    return clone


def node_macs(model: ir.Model, shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """MACs of every main-graph Conv/ConvTranspose/Gemm/MatMul at these input shapes."""
    clone = shaped_clone(model, shapes)
    out: dict[str, int] = {}
    for node in clone.graph:
        macs = _node_macs(node)
        if macs and macs > 0:  # shapes with unknown (-1) dims give no count
            out[node.name or ""] = macs
    return out


def _elements(value: ir.Value | None) -> int | None:
    if value is None or value.shape is None:
        return None
    dims = [d for d in value.shape if isinstance(d, int) and d >= 0]
    if len(dims) != len(value.shape):
        return None
    return math.prod(dims)


@dataclasses.dataclass
class CostModel:
    """Modelled costs of candidates of one model (MACs at the calibration feed's shapes)."""

    macs: dict[str, int]
    vnni: bool

    @property
    def float_cost(self) -> float:
        """Cost of the float model."""
        return float(sum(self.macs.values()))

    def cost(
        self,
        nodes: Iterable[ir.Node],
        int8_nodes: set[str],
        standalone_qdq: Sequence[ir.Value | None],
        fallback_elements: int,
        layout_transposes: int = 0,
    ) -> dict[str, Any]:
        """Modelled cost of a candidate, relative to float.

        ``int8_nodes`` run fused in int8; ``standalone_qdq`` values pass through
        standalone Quantize/Dequantize nodes (unknown sizes count as ``fallback_elements``);
        ``layout_transposes`` Transposes ONNX Runtime added around int8 kernels. Each of
        those is one kernel call at ``KERNEL_COST``.
        """
        compute = 0.0
        for node in nodes:
            macs = self.macs.get(node.name or "")
            if not macs:
                continue
            compute += macs / _speedup(node, self.vnni) if node.name in int8_nodes else macs
        elements = 0
        for value in standalone_qdq:
            n = _elements(value)
            elements += fallback_elements if n is None else n
        calls = len(standalone_qdq) + layout_transposes
        total = compute + QDQ_COST * elements + KERNEL_COST * calls
        base = self.float_cost
        return {
            "ratio": round(total / base, 4) if base else 1.0,
            "int8-nodes": len(int8_nodes),
            "standalone-qdq-elements": int(elements),
            "extra-kernel-calls": calls,
        }


def largest_activation(macs: Mapping[str, int]) -> int:
    """A stand-in element count for a value of unknown size (the largest MACs' square root)."""
    return math.isqrt(max(max(macs.values(), default=1), 1))

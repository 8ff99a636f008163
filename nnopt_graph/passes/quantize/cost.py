"""A deterministic cost model for keeping int8: the same model and data, the same answer.

Timed speed checks flip with machine load at the edge of the noise (the same command
wrote different files from run to run). The default decision instead compares modelled
costs of the float and the int8 candidate, both read off what ONNX Runtime's CPU EP will
actually run (its optimized graph, from the fusion check):

    cost(float) = sum of MACs of the Conv/ConvTranspose/Gemm/MatMul nodes (x NCHW_FACTOR
                  for a Conv that is not 2-D)
    cost(int8)  = sum over those nodes of MACs / speedup (when fused in int8, else as float)
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

ONNX Runtime runs float 2-D convolutions in its NCHWc kernels; 1-D and 3-D ones take the
generic im2col + SGEMM path at about half the rate (silero-vad's STFT Conv: 264 k MACs in
about 41 us, 6.4 k MACs per us), while their int8 kernels run at the 2-D rate. Counted
at the 2-D rate, silero-vad's five 1-D Convs were modelled 1.58x slower in int8 and
measured 0.63x (bench/results/int8_cost_model.md).
"""

from __future__ import annotations

__all__ = [
    "KEEP_BELOW",
    "KERNEL_COST",
    "NCHW_FACTOR",
    "CostModel",
    "candidate_cost",
    "first_feed_shapes",
    "float_weights",
    "measured_node_macs",
    "node_macs",
    "shaped_clone",
]

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import onnx_ir as ir
import onnx_ir.passes.common as ir_passes

from nnopt_graph.analysis.stats import _node_macs

logger = logging.getLogger(__name__)

# Keep int8 only when its modelled cost is below this fraction of float's.
KEEP_BELOW = 0.9
# One standalone QuantizeLinear/DequantizeLinear element, in multiply-accumulates: it is
# memory-bound (read 4 bytes, write 1) where a GEMM does dozens of MACs per cycle.
QDQ_COST = 32.0
# One extra kernel call (a standalone Q/DQ or a layout Transpose), in multiply-accumulates:
# about 4-10 us each on rapidocr-cls's small tensors, where float convolutions ran about
# 12.6 k MACs per us (ORT profile: 1.29 ms of Conv for 16.3 M MACs, 2 threads).
KERNEL_COST = 50_000.0
# A float Conv ONNX Runtime leaves in NCHW (not blocked): its MACs cost this many times
# more than in the blocked NCHWc kernels (a round figure, checked against the grids in
# bench/results/search.md and silero-vad's 1-D Convs, not fitted per model). Here every
# Conv that is not 2-D counts so; search/modelled.py also reads which 2-D ones stay NCHW.
NCHW_FACTOR = 2.0
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
    return _counted(shaped_clone(model, shapes))[0]


def _counted(clone: ir.Model) -> tuple[dict[str, int], list[ir.Node]]:
    """MACs of the shaped clone's weighted main-graph nodes, and the named ones left unknown."""
    out: dict[str, int] = {}
    unknown: list[ir.Node] = []
    for node in clone.graph:
        macs = _node_macs(node)
        if macs and macs > 0:  # shapes with unknown (-1) dims give no count
            out[node.name or ""] = macs
        elif macs is None and node.name:
            unknown.append(node)
    return out, unknown


def first_feed_shapes(
    model: ir.Model, names: list[str], data: Any, capture: Callable[..., int], what: str
) -> dict[str, tuple[int, ...]] | None:
    """Shapes of the named main-graph values on one calibration feed; None when that fails."""
    seen: dict[str, tuple[int, ...]] = {}

    def on_batch(batch: dict[str, Any]) -> None:
        seen.update((k, tuple(v.shape)) for k, v in batch.items() if k not in seen)

    try:
        capture(model, names, data.take(1), on_batch)
    except Exception as exc:
        logger.debug("capturing %s shapes failed: %s", what, exc)
        return None
    return seen


def measured_node_macs(
    model: ir.Model,
    shapes: Mapping[str, Sequence[int]],
    data: Any,
    capture: Callable[..., int],
) -> tuple[dict[str, int], int]:
    """node_macs, completed from one calibration feed where inference left dims symbolic.

    Exported models compute pad amounts and reshape targets in the graph (silero-vad's
    STFT padding), which loses the length of every Conv after it: the cost model then
    counted those Convs as free and kept float on a model int8 makes 1.8x faster. The
    inputs and outputs of the nodes still unknown are captured at run time instead.
    Returns the MACs and how many weighted nodes stay unknown (capture failed).
    """
    clone = shaped_clone(model, shapes)
    macs, unknown = _counted(clone)
    if not unknown:
        return macs, 0
    values = {
        v.name: v
        for node in unknown
        for v in (node.inputs[0], node.outputs[0])
        if v is not None and v.name and v.producer() is not None
    }
    seen = first_feed_shapes(model, sorted(values), data, capture, "weighted-node") or {}
    for name, value in values.items():
        if name in seen:
            value.shape = ir.Shape(list(seen[name]))
    left = 0
    for node in unknown:
        count = _node_macs(node)
        if count and count > 0:
            macs[node.name or ""] = count
        else:
            left += 1
    return macs, left


def float_weights(model: ir.Model) -> dict[str, float]:
    """Per main-graph Conv that ONNX Runtime runs off its NCHWc kernels, its MAC weight."""
    out = {}
    for node in model.graph:
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or not node.name:
            continue
        weight = node.inputs[1] if len(node.inputs) > 1 else None
        rank = None if weight is None or weight.shape is None else len(weight.shape)
        if rank is None and weight is not None and weight.const_value is not None:
            rank = len(weight.const_value.shape)
        if rank is not None and rank not in (0, 4):
            out[node.name] = NCHW_FACTOR
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
    """Modelled costs of candidates of one model (MACs at the calibration feed's shapes).

    ``unknown`` weighted nodes have no MAC count (their shapes were neither inferred nor
    captured); they are reported with every cost, since the model treats them as free.
    ``weights`` scale a float node's MACs (see float_weights).
    """

    macs: dict[str, int]
    vnni: bool
    unknown: int = 0
    weights: dict[str, float] = dataclasses.field(default_factory=dict)

    def _float(self, name: str) -> float:
        return self.macs.get(name, 0) * self.weights.get(name, 1.0)

    @property
    def float_cost(self) -> float:
        """Cost of the float model."""
        return float(sum(self._float(name) for name in self.macs))

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
            if node.name in int8_nodes:
                compute += macs / _speedup(node, self.vnni)
            else:
                compute += self._float(node.name or "")
        elements = 0
        for value in standalone_qdq:
            n = _elements(value)
            elements += fallback_elements if n is None else n
        calls = len(standalone_qdq) + layout_transposes
        total = compute + QDQ_COST * elements + KERNEL_COST * calls
        base = self.float_cost
        return {
            "ratio": round(total / base, 4) if base else 1.0,
            "float-macs": int(sum(self.macs.values())),
            "float-cost": int(base),
            "int8-compute": int(compute),
            "int8-nodes": len(int8_nodes),
            "standalone-qdq-elements": int(elements),
            "extra-kernel-calls": calls,
            "nodes-of-unknown-macs": self.unknown,
        }


def candidate_cost(
    costs: CostModel, work: ir.Model, int8_nodes: set[str], fusion: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The modelled int8/float ratio of a built candidate, from its fusion check."""
    values = {v.name: v for n in work.graph for v in n.outputs}
    values.update({v.name: v for v in work.graph.inputs})
    fusion = fusion or {}
    standalone = [values.get(name) for name in fusion.get("standalone-qdq", [])]
    return costs.cost(
        work.graph,
        int8_nodes,
        standalone,
        largest_activation(costs.macs),
        layout_transposes=fusion.get("layout-transposes", 0),
    )


def largest_activation(macs: Mapping[str, int]) -> int:
    """A stand-in element count for a value of unknown size (the largest MACs' square root)."""
    return math.isqrt(max(max(macs.values(), default=1), 1))

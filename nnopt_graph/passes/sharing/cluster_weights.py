"""Lossy weight sharing: large float weights clustered into 2^N values (uniform grid or k-means)."""

from __future__ import annotations

__all__ = [
    "ClusterWeightsOptions",
    "ClusterWeightsPass",
    "kmeans_1d",
    "uniform_grid",
    "upgrade_blockers",
]

import collections
import dataclasses
import logging
import math
from typing import Any

import numpy as np
import onnx_ir as ir

from nnopt_graph.core.constants import constant_of_node
from nnopt_graph.core.names import NameScope
from nnopt_graph.errors import BadInputError
from nnopt_graph.passes.sharing.cluster.constants import (
    _FLOAT_DTYPES,
    _INTEGER_DTYPES,
    _MIN_OPSET,
    _OPSET_INT4,
    _OPSET_PER_AXIS,
    _STATS,
)
from nnopt_graph.passes.sharing.cluster.encode import (
    _Emitter,
    _encode_codebook,
    _encode_dequantize,
    _Encoded,
)
from nnopt_graph.passes.sharing.cluster.grids import (
    _sqnr_db,
    kmeans_1d,
    uniform_grid,
)
from nnopt_graph.passes.sharing.cluster.layout import (
    _Layout,
    _weight_axes,
)
from nnopt_graph.passes.sharing.cluster.opset import (
    _default_opset,
    _raise_opset,
    upgrade_blockers,
)
from nnopt_graph.passes.sharing.cluster.weights import (
    _already_clustered,
    _collect,
    _dims,
    _Weight,
)
from nnopt_graph.pipeline.base import Pass, PassContext, PassResult, register_pass

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ClusterWeightsOptions:
    """Options of cluster-weights.

    Attributes:
        bits: each group (tensor, channel or block) keeps at most 2**bits distinct values.
        method: kmeans (Lloyd, linear init) or uniform (an evenly spaced grid with zero).
        min_elements: float weights with fewer elements are left alone.
        granularity: one set of values per tensor, per output channel (per slice of
            axis 0 when the readers do not tell the channel axis), or per block of
            ``block_size`` along the reduction axis (dequantize encoding, opset 21).
        encoding: dequantize (integers + DequantizeLinear, kept as integers by ONNX
            Runtime), codebook (Gather from a codebook: smaller file, expanded at load),
            or auto: codebook for kmeans, dequantize for uniform.
        block_size: block length for granularity=block.
    """

    bits: int = dataclasses.field(default=8, metadata={"range": (1, 8, True, True)})
    method: str = dataclasses.field(default="kmeans", metadata={"choices": ("kmeans", "uniform")})
    min_elements: int = dataclasses.field(default=4096, metadata={"range": (1, None, True, True)})
    granularity: str = dataclasses.field(
        default="channel", metadata={"choices": ("tensor", "channel", "block")}
    )
    encoding: str = dataclasses.field(
        default="auto", metadata={"choices": ("auto", "dequantize", "codebook")}
    )
    block_size: int = dataclasses.field(default=32, metadata={"range": (2, None, True, True)})

    def problem(self) -> str | None:
        """Why these options cannot run together, or None."""
        if not 1 <= self.bits <= 8:
            return f"bits must be 1..8, not {self.bits}"
        if self.min_elements < 1:
            return f"min-elements must be >= 1, not {self.min_elements}"
        if self.granularity == "block" and self.block_size < 2:
            return f"block-size must be >= 2, not {self.block_size}"
        if self.method == "kmeans" and self.encoding == "dequantize":
            return "method=kmeans needs encoding=codebook (k-means centroids are no uniform grid)"
        if self.granularity == "block" and self.resolved_encoding == "codebook":
            return "granularity=block needs encoding=dequantize (and method=uniform)"
        return None

    @property
    def resolved_encoding(self) -> str:
        """The encoding after ``auto`` is resolved by the method."""
        if self.encoding != "auto":
            return self.encoding
        return "codebook" if self.method == "kmeans" else "dequantize"


@dataclasses.dataclass
class _Plan:
    weight: _Weight
    layout: _Layout
    notes: list[str]
    int4: bool = False
    emulate: bool = False
    changed: bool = False  # the opset settlement changed the plan after its first encoding
    fallbacks: list[str] = dataclasses.field(default_factory=list)  # stats counted if applied

    def needs_opset(self, encoding: str) -> int:
        if encoding != "dequantize":
            return _MIN_OPSET
        if self.int4 or self.layout.granularity == "block":
            return _OPSET_INT4
        if self.layout.granularity == "channel":
            return _OPSET_PER_AXIS
        return _MIN_OPSET


@register_pass
class ClusterWeightsPass(Pass):
    """Cluster large float weights into 2^N shared values (DequantizeLinear or codebook)."""

    name = "cluster-weights"
    lossy = True
    Options = ClusterWeightsOptions

    def requires(self, model: ir.Model) -> None:
        """Check the options (text options are checked here, when the pass is about to run).

        Raises:
            BadInputError: an option value is invalid, or two options do not go together.
        """
        problem = self.options.problem()
        if problem is not None:
            raise BadInputError(f"pass 'cluster-weights': {problem}")

    def back_off(self) -> Pass | None:
        """One more bit, up to 8; then nothing weaker is left."""
        if self.options.bits >= 8:
            return None
        return ClusterWeightsPass(dataclasses.replace(self.options, bits=self.options.bits + 1))

    def _skip(self, stats: collections.Counter[str], weight: _Weight, key: str, why: str) -> None:
        stats[key] += 1
        logger.debug("cluster-weights: left '%s' (%s) alone: %s", weight.name, weight.where, why)

    def _plan(
        self, weights: list[_Weight], outputs: set[int], stats: collections.Counter[str]
    ) -> list[_Plan]:
        """The weights to cluster and how, counting every skip."""
        o = self.options
        plans = []
        for weight in weights:
            tensor, value = weight.tensor, weight.value
            if tensor.dtype in _INTEGER_DTYPES:
                if tensor.size >= o.min_elements:
                    if _already_clustered(value, integer=True):
                        self._skip(stats, weight, "skipped-already-clustered", "encoded weight")
                    else:
                        self._skip(stats, weight, "skipped-integer-weights", "integer dtype")
                continue
            if not tensor.dtype.is_floating_point():
                continue
            if tensor.size < o.min_elements:
                stats["skipped-below-min-elements"] += 1
                continue
            if weight.node is None and value.is_graph_input():
                self._skip(stats, weight, "skipped-graph-input-initializers", "graph input")
                continue
            if id(value) in outputs:
                self._skip(stats, weight, "skipped-graph-output-weights", "graph output")
                continue
            if not value.uses():
                self._skip(stats, weight, "skipped-unused-weights", "no readers")
                continue
            if _already_clustered(value, integer=False):
                self._skip(stats, weight, "skipped-already-clustered", "scale or codebook")
                continue
            if len(tensor.shape) < 2:
                # Biases and norm scales: few bytes, and an error there shifts whole outputs
                # (rapidocr-rec's 6625-class bias alone cost 0.02 of output cosine at 8 bits).
                self._skip(stats, weight, "skipped-vectors", "vectors (biases, scales) stay float")
                continue
            if tensor.dtype not in _FLOAT_DTYPES:
                self._skip(stats, weight, "skipped-unsupported-dtype", str(tensor.dtype))
                continue
            rank = len(tensor.shape)
            notes: list[str] = []
            fallbacks: list[str] = []
            layout = _Layout("tensor")
            if o.granularity != "tensor":
                axes, why = _weight_axes(value, rank)
                if axes is None and rank < 2:
                    notes.append("per tensor: a vector has no channels")
                elif axes is None:
                    # Any grouping is valid (the weight's values only get closer); rows of
                    # axis 0 are never coarser than the whole tensor.
                    notes.append(f"groups along axis 0: {why}")
                    fallbacks.append("channel-axis-unknown")
                    layout = _Layout("channel", 0)
                elif o.granularity == "channel":
                    layout = _Layout("channel", axes[0])
                else:
                    layout = _Layout("block", axes[1], o.block_size)
            int4 = o.resolved_encoding == "dequantize" and o.bits <= 4
            plans.append(_Plan(weight, layout, notes, int4=int4, fallbacks=fallbacks))
        return plans

    def _settle_opset(
        self, model: ir.Model, plans: list[_Plan], stats: collections.Counter[str]
    ) -> dict[str, Any] | None:
        """Raise the opset where the plans need it and it is safe; degrade plans elsewhere."""
        encoding = self.options.resolved_encoding
        current = _default_opset(model)
        needed = max((p.needs_opset(encoding) for p in plans), default=current)
        if needed <= current:
            return None
        blockers: dict[int, list[str]] = {}

        def allowed(version: int) -> bool:
            if version <= current:
                return True
            if version not in blockers:
                blockers[version] = upgrade_blockers(model, version)
            return not blockers[version]

        for plan in plans:
            if plan.needs_opset(encoding) == _OPSET_INT4 and not allowed(_OPSET_INT4):
                why = f"opset {current} kept ({blockers[_OPSET_INT4][0]})"
                if plan.int4:
                    plan.int4 = False
                    plan.notes.append(f"int4 stored as int8: {why}")
                    plan.changed = True
                    plan.fallbacks.append("int4-stored-as-int8")
                if plan.layout.granularity == "block":
                    axes, _ = _weight_axes(plan.weight.value, len(plan.weight.tensor.shape))
                    plan.layout = _Layout("channel", axes[0] if axes else 0)
                    plan.notes.append(f"per channel instead of blocks: {why}")
                    plan.changed = True
                    plan.fallbacks.append("block-as-channel")
            if plan.layout.granularity == "channel" and not allowed(_OPSET_PER_AXIS):
                plan.emulate = plan.changed = True
                plan.fallbacks.append("channel-emulated")
        target = max((p.needs_opset(encoding) for p in plans if not p.emulate), default=current)
        if target <= current:
            reason = next(iter(blockers.values()))[0] if blockers else ""
            return {"opset": f"kept {current}", "wanted": needed, "reason": reason}
        _raise_opset(model, target)
        stats["opset-raised"] = 1
        logger.info("cluster-weights: raised the default opset from %d to %d", current, target)
        decision: dict[str, Any] = {"opset": f"raised {current} -> {target}"}
        if target < needed:
            decision["wanted"] = needed
            decision["reason"] = blockers[needed][0]
        return decision

    def _encode(self, plan: _Plan, array: np.ndarray) -> _Encoded:
        o = self.options
        dtype = plan.weight.tensor.dtype
        if o.resolved_encoding == "codebook":
            return _encode_codebook(array, dtype, o.bits, o.method, plan.layout)
        storage = ir.DataType.INT4 if plan.int4 else ir.DataType.INT8
        return _encode_dequantize(array, dtype, o.bits, plan.layout, storage, plan.emulate)

    def _apply(self, plan: _Plan, encoded: _Encoded, names: NameScope) -> None:
        """Replace the weight by decode nodes at the graph start (or where its Constant was)."""
        weight = plan.weight
        graph = weight.graph
        emit = _Emitter(graph, weight.name, names)
        values = {role: emit.const(role, tensor) for role, tensor in encoded.tensors.items()}
        output = encoded.build(emit, values)
        output.type = ir.TensorType(weight.tensor.dtype)
        output.shape = ir.Shape(_dims(weight.tensor))
        anchor = weight.node if weight.node is not None else (graph[0] if len(graph) else None)
        if anchor is None:
            graph.extend(emit.nodes)
        else:
            graph.insert_before(anchor, emit.nodes)
        name = weight.value.name
        weight.value.replace_all_uses_with(output)
        if weight.node is None:
            assert name is not None
            graph.initializers.pop(name)
        else:
            graph.remove(weight.node, safe=True)
        names.release(output.name or "")
        output.name = name

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Cluster every large float weight of the main graph and its subgraphs.

        Weights inside functions are counted and left alone (a function cannot read
        initializers). Each weight is loaded whole while it is encoded.
        """
        o = self.options
        stats: collections.Counter[str] = collections.Counter(dict.fromkeys(_STATS, 0))
        stats["skipped-function-constants"] = sum(
            1
            for function in model.functions.values()
            for node in ir.traversal.RecursiveGraphIterator(function)
            if constant_of_node(node) is not None
        )
        decisions: list[dict[str, Any]] = []
        if _default_opset(model) < _MIN_OPSET or (model.ir_version or 0) < 4:
            logger.debug(
                "cluster-weights skipped: opset below %d or IR version below 4", _MIN_OPSET
            )
            stats["skipped-old-model"] = 1
            return PassResult(dict(stats))
        weights, outputs, used = _collect(model)
        names = NameScope(used)
        plans = self._plan(weights, outputs, stats)
        encoded_plans: list[tuple[_Plan, _Encoded, np.ndarray]] = []
        for plan in plans:
            array = np.asarray(plan.weight.tensor.numpy()).reshape(_dims(plan.weight.tensor))
            if not np.isfinite(array).all():
                self._skip(stats, plan.weight, "skipped-non-finite-weights", "NaN or infinity")
                continue
            if plan.layout.granularity != "tensor" and plan.layout.rows(array).shape[1] < 2:
                plan.notes.append("per tensor: one element per group")
                plan.layout = _Layout("tensor")
            encoded_plans.append((plan, self._encode(plan, array), array))
        # Opset first (it can change storage), then re-encode the plans it changed.
        wanted = [p for p, e, _ in encoded_plans if e.disk_after < p.weight.tensor.nbytes]
        opset_decision = self._settle_opset(model, wanted, stats) if wanted else None
        if opset_decision:
            decisions.append(opset_decision)
        for plan, encoded, array in encoded_plans:
            before = plan.weight.tensor.nbytes
            if plan.changed:
                encoded = self._encode(plan, array)
            if encoded.disk_after >= before:
                self._skip(
                    stats,
                    plan.weight,
                    "skipped-no-saving",
                    f"encoded {encoded.disk_after} bytes >= {before}",
                )
                continue
            self._apply(plan, encoded, names)
            sqnr = _sqnr_db(array, encoded.decoded)
            decision: dict[str, Any] = {
                "weight": plan.weight.name,
                "graph": plan.weight.where,
                "shape": list(array.shape),
                "encoding": encoded.encoding,
                "storage": encoded.storage,
                "method": o.method,
                "bits": o.bits,
                "granularity": plan.layout.describe(),
                "bytes_disk_before": before,
                "bytes_disk_after": encoded.disk_after,
                "bytes_memory_before": before,
                "bytes_memory_after": encoded.memory_after,
                "sqnr_db": round(sqnr, 2) if math.isfinite(sqnr) else str(sqnr),
            }
            if encoded.iterations is not None:
                decision["kmeans_iterations"] = encoded.iterations
            notes = plan.notes + encoded.notes
            if notes:
                decision["notes"] = "; ".join(notes)
            decisions.append(decision)
            stats["weights-clustered"] += 1
            for key in plan.fallbacks:
                stats[key] += 1
            stats["bytes-saved-disk"] += before - encoded.disk_after
            stats["bytes-saved-memory"] += before - encoded.memory_after
            logger.info(
                "cluster-weights: '%s' (%s) -> %s %s, %s, %d -> %d bytes on disk, SQNR %.1f dB",
                plan.weight.name,
                plan.weight.where,
                encoded.encoding,
                encoded.storage,
                plan.layout.describe(),
                before,
                encoded.disk_after,
                sqnr,
            )
        return PassResult(dict(stats), decisions)

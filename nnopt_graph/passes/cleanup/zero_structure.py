"""Lossless zero-structure elimination: channels and ops that only compute or meet zeros go."""

from __future__ import annotations

__all__ = ["EliminateZeroStructureOptions", "EliminateZeroStructurePass"]

import contextlib
import dataclasses
import logging
from typing import Any

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as ir_passes

from nnopt_graph.analysis.channels import (
    ROLE_GROUPED,
    ROLE_IN,
    ROLE_OUT,
    ChannelGroup,
    ChannelSpace,
    apply_channel_removal,
    find_channel_groups,
)
from nnopt_graph.analysis.walk import STANDARD_DOMAINS, graph_nodes_recursive, model_graphs
from nnopt_graph.core.annotations import annotations_kept
from nnopt_graph.core.constants import const_array
from nnopt_graph.core.names import NameScope
from nnopt_graph.passes.cleanup.zero_ops import (
    WEIGHT_OPS,
    replace_zero_op,
    small_enough,
    zero_weight,
)
from nnopt_graph.pipeline.base import Pass, PassContext, PassResult, register_pass

logger = logging.getLogger(__name__)

_STATS = (
    "ops-replaced",
    "channels-removed",
    "params-removed",
    "groups-shrunk",
    "skipped-zero-ops-unknown-shape",
    "skipped-frozen-zero-channels",
    "skipped-functions",
)

# f(0) == 0 for every attribute value (Clip is checked separately).
_ZERO_UNARY = frozenset(
    """Relu LeakyRelu PRelu Tanh HardSwish Identity Dropout Neg Abs Sign Sin Tan Asin Atan Sinh
    Asinh Atanh Erf Softsign Gelu Mish Elu Selu Celu ThresholdedRelu Shrink Floor Ceil Round Cast
    CastLike""".split()
)
# Ops that move or pool values without mixing in anything else: zeros in, zeros out.
_ZERO_STRUCTURAL = frozenset(
    """Transpose Reshape Flatten Squeeze Unsqueeze Concat Split Slice Resize MaxPool AveragePool
    GlobalAveragePool GlobalMaxPool LpPool GlobalLpPool Expand Tile Gather ReduceMean ReduceSum
    ReduceMax ReduceMin ReduceL1 ReduceL2 ReduceSumSquare ReduceProd SpaceToDepth DepthToSpace
    Upsample""".split()
)
# Zero output needs every input zero.
_ZERO_IF_ALL = frozenset({"Add", "Sub", "Max", "Min", "Sum", "Mean"})


@dataclasses.dataclass(frozen=True)
class EliminateZeroStructureOptions:
    """Options of eliminate-zero-structure.

    Attributes:
        max_rounds: channel analyses at most; a removal can make more channels
            removable (a row gone leaves a column unused), so the pass repeats until
            nothing changes.
        round_to: keep a multiple of this many channels in each group (zero channels
            are kept to fill up), for runtimes whose fast kernels want channel counts
            that are multiples of 8 or 16 (ONNX Runtime's CPU NCHWc convolutions).
        max_weight_elements: weights larger than this are not read (so a multi-GB
            model's weights stay on disk); zero structure in them is not looked for.
    """

    max_rounds: int = dataclasses.field(default=8, metadata={"range": (1, None, True, True)})
    round_to: int = dataclasses.field(default=1, metadata={"range": (1, None, True, True)})
    max_weight_elements: int = dataclasses.field(
        default=1 << 24, metadata={"range": (0, None, True, True)}
    )


def _per_unit(
    space: ChannelSpace, num_units: int, zero: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(present, all_zero) per unit from a per-index zero mask along the space's axis."""
    present = np.bincount(space.unit_of, minlength=num_units) > 0
    all_zero = np.ones(num_units, dtype=bool)
    np.logical_and.at(all_zero, space.unit_of, zero)
    return present, all_zero


def _const_zero_along(space: ChannelSpace) -> np.ndarray | None:
    """Per index of a constant space's axis: is the whole slice zero?"""
    array = const_array(space.value)
    if array is None:
        return None
    moved = np.moveaxis(array, space.axis, 0).reshape(array.shape[space.axis], -1)
    return ~np.any(moved != 0, axis=1)


class _ZeroAnalysis:
    """Which units of a group are identically zero at each activation, for every input."""

    def __init__(self, group: ChannelGroup) -> None:
        self.group = group
        self.n = group.num_units
        self.memo: dict[int, np.ndarray] = {}
        self.active: set[int] = set()

    def space_of(self, value: ir.Value | None) -> ChannelSpace | None:
        if value is None:
            return None
        for space in self.group.spaces:
            if space.value is value:
                return space
        return None

    def const_units(self, space: ChannelSpace) -> np.ndarray:
        """Units whose slices of a constant are all zero (absent units count as zero)."""
        zero = _const_zero_along(space)
        if zero is None:
            return np.zeros(self.n, dtype=bool)
        return _per_unit(space, self.n, zero)[1]

    def input_zero(self, value: ir.Value | None, *, absent: bool) -> np.ndarray:
        """Units for which an operand is zero: tracked in the group, or an all-zero constant."""
        space = self.space_of(value)
        if space is not None:
            present, _ = _per_unit(space, self.n, np.ones(space.size, dtype=bool))
            units = self.const_units(space) if space.is_constant else self.units(space)
            return np.where(present, units, absent)
        array = const_array(value)
        if array is not None and not np.any(array != 0):
            return np.ones(self.n, dtype=bool)
        return np.full(self.n, False)

    def units(self, space: ChannelSpace) -> np.ndarray:
        """Per unit: is this activation zero at all of the unit's indices, for any input?"""
        key = id(space)
        if key in self.memo:
            return self.memo[key]
        if key in self.active:  # a cycle (cannot happen in a DAG): be conservative
            return np.zeros(self.n, dtype=bool)
        self.active.add(key)
        result = self._compute(space)
        self.active.discard(key)
        self.memo[key] = result
        return result

    def _compute(self, space: ChannelSpace) -> np.ndarray:
        none = np.zeros(self.n, dtype=bool)
        node = space.value.producer()
        if node is None or node.domain not in STANDARD_DOMAINS:
            return none
        op = node.op_type
        for weight in self.group.spaces:
            for role in weight.roles:
                if role.node is not node or role.data is None or role.data[0] is not space.value:
                    continue
                if role.role in (ROLE_OUT, ROLE_GROUPED):
                    return self._source(node, weight, role.role)
        if op in _ZERO_UNARY or (op == "Clip" and _clip_keeps_zero(node)):
            return self.input_zero(node.inputs[0], absent=False)
        if op in _ZERO_STRUCTURAL:
            if op == "Pad" and not _pad_keeps_zero(node):
                return none
            tracked = [v for v in node.inputs if self.space_of(v) is not None]
            if not tracked:
                return none
            out = np.ones(self.n, dtype=bool)
            for value in tracked:
                out &= self.input_zero(value, absent=True)
            return out
        if op in _ZERO_IF_ALL:
            out = np.ones(self.n, dtype=bool)
            for value in node.inputs:
                out &= self.input_zero(value, absent=False)
            return out
        if op == "Mul":
            out = np.zeros(self.n, dtype=bool)
            for value in node.inputs:
                out |= self.input_zero(value, absent=False)
            return out
        if op == "Div":
            return self.input_zero(node.inputs[0], absent=False)
        if op == "BatchNormalization":
            return self._batch_norm(node)
        return none

    def _source(self, node: ir.Node, weight: ChannelSpace, role: str) -> np.ndarray:
        """A Conv/Gemm/MatMul output: zero where the weight rows and the bias are zero."""
        zero = self.const_units(weight)
        if role == ROLE_GROUPED:
            zero = zero | self.input_zero(node.inputs[0], absent=False)
        bias_index = 2
        if node.op_type == "MatMul":
            return zero
        bias = node.inputs[bias_index] if len(node.inputs) > bias_index else None
        if bias is None:
            return zero
        space = self.space_of(bias)
        if space is not None:
            return zero & self.const_units(space)
        array = const_array(bias)
        if array is not None and not np.any(array != 0):
            return zero
        return np.zeros(self.n, dtype=bool)

    def _batch_norm(self, node: ir.Node) -> np.ndarray:
        """0 -> B - mean * scale / sqrt(var + eps): zero where B == 0 and mean or scale is 0."""
        x_zero = self.input_zero(node.inputs[0], absent=False)
        parts = []
        for index in (1, 2, 3):
            value = node.inputs[index] if len(node.inputs) > index else None
            space = self.space_of(value)
            if space is None:
                return np.zeros(self.n, dtype=bool)
            parts.append(self.const_units(space))
        scale_zero, bias_zero, mean_zero = parts
        return x_zero & bias_zero & (mean_zero | scale_zero)


def _clip_keeps_zero(node: ir.Node) -> bool:
    bounds = []
    for index, name in ((1, "min"), (2, "max")):
        value = node.inputs[index] if len(node.inputs) > index else None
        if value is not None:
            array = const_array(value)
            if array is None:
                return False
            bounds.append(float(array.reshape(-1)[0]))
        elif name in node.attributes:
            bounds.append(node.attributes[name].as_float())
        else:
            bounds.append(-np.inf if name == "min" else np.inf)
    return bounds[0] <= 0.0 <= bounds[1]


def _pad_keeps_zero(node: ir.Node) -> bool:
    mode = node.attributes.get("mode")
    if mode is not None and mode.as_string() != "constant":
        return True
    value = node.inputs[2] if len(node.inputs) > 2 else None
    if value is None:
        return True
    array = const_array(value)
    return array is not None and not np.any(array != 0)


def _removable_units(group: ChannelGroup) -> tuple[np.ndarray, np.ndarray]:
    """(removable, zero-but-frozen) unit masks of a group.

    A unit goes when every weight that reads it has zero input columns for it (its
    values are never used), or when every such weight reads an activation that is
    identically zero on it (its values never matter). Either way outputs are unchanged.
    """
    n = group.num_units
    sinks = [s for s in group.spaces if s.is_constant and s.has_role(ROLE_IN)]
    if not sinks:
        return np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    analysis = _ZeroAnalysis(group)
    dead = np.ones(n, dtype=bool)
    zero_in = np.ones(n, dtype=bool)
    for sink in sinks:
        dead &= analysis.const_units(sink)
        for role in sink.roles:
            if role.role != ROLE_IN:
                continue
            data = role.data[0] if role.data is not None else None
            zero_in &= analysis.input_zero(data, absent=True) if data is not None else False
    candidates = dead | zero_in
    return candidates & ~group.unit_frozen, candidates & group.unit_frozen


def _keep_units(group: ChannelGroup, removable: np.ndarray, round_to: int) -> np.ndarray:
    """Units to keep: all but the removable ones, topped up to a multiple of ``round_to``.

    Keeping a zero or unused unit is always exact, so rounding only gives back some of
    the removal. At least one unit stays (a tensor axis cannot become empty).
    """
    keep = ~removable
    width = max(1, group.unit_width)
    step = max(1, round_to // np.gcd(max(1, round_to), width))
    kept = int(keep.sum())
    target = max(1, -(-kept // step) * step) if kept else step
    for unit in np.nonzero(removable)[0][: max(0, min(target, group.num_units) - kept)]:
        keep[unit] = True
    return np.nonzero(keep)[0]


_SCREENED_OPS = WEIGHT_OPS | {"Mul", "BatchNormalization"}


def _may_hold_zero_structure(model: ir.Model, limit: int) -> bool:
    """Cheap screen: a weight with a zero row, column or everything, or a constant zero factor.

    Every channel the pass can remove needs one of these, so a model without any is
    left alone without running the channel analysis.
    """
    for node in graph_nodes_recursive(model.graph):
        if node.op_type not in _SCREENED_OPS or node.domain not in STANDARD_DOMAINS:
            continue
        if node.op_type in WEIGHT_OPS and len(node.inputs) > 1:
            if not small_enough(node.inputs[1], limit):
                continue
            w = const_array(node.inputs[1])
            if w is None or w.ndim < 2 or w.size == 0:
                continue
            nonzero = w != 0
            for axis in (0, 1) if node.op_type == "Conv" else (w.ndim - 2, w.ndim - 1):
                other = tuple(a for a in range(w.ndim) if a != axis)
                if not np.all(np.any(nonzero, axis=other)):
                    return True
        elif node.op_type in ("Mul", "BatchNormalization"):
            for value in node.inputs[1:2] if node.op_type == "BatchNormalization" else node.inputs:
                array = const_array(value)
                if array is not None and array.size > 1 and not array.all():  # a zero in it
                    return True
    return False


@register_pass
class EliminateZeroStructurePass(Pass):
    """Remove channels and ops that weights make zero or unused (exact, via channel groups)."""

    name = "eliminate-zero-structure"
    Options = EliminateZeroStructureOptions

    def _replace_zero_ops(self, model: ir.Model, stats: dict[str, int]) -> list[dict[str, Any]]:
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
        limit = self.options.max_weight_elements
        candidates = [
            node
            for graph in model_graphs(model)
            for node in graph
            if node.op_type in WEIGHT_OPS and zero_weight(node, limit)
        ]
        if not candidates:
            return []
        # The replacement needs the output's type and the input's rank: infer them only
        # when some candidate lacks them, and leave the input's annotations as they were.
        unknown = any(
            n.outputs[0].dtype is None
            or n.outputs[0].shape is None
            or (n.inputs[0] is not None and n.inputs[0].shape is None)
            for n in candidates
        )
        taken = NameScope.for_model(model)
        decisions = []
        with annotations_kept(model) if unknown else contextlib.nullcontext():
            if unknown:
                ir_passes.ShapeInferencePass(strict_mode=False)(model)
            for node in candidates:
                why = replace_zero_op(node, opset, taken)
                if why is not None:
                    stats["skipped-zero-ops-unknown-shape"] += 1
                    logger.debug("zero-structure: %s '%s' kept: %s", node.op_type, node.name, why)
                    continue
                stats["ops-replaced"] += 1
                logger.info(
                    "zero-structure: %s '%s' has an all-zero weight: replaced by its bias",
                    node.op_type,
                    node.name,
                )
                decisions.append(
                    {
                        "op": node.op_type,
                        "node": node.name,
                        "replaced-by": "Expand of its bias (or zeros)",
                    }
                )
        return decisions

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Replace all-zero-weight ops, then remove zero or unused channels to a fixed point."""
        stats = dict.fromkeys(_STATS, 0)
        stats["skipped-functions"] = len(model.functions)
        decisions = self._replace_zero_ops(model, stats)
        frozen = 0
        screen = _may_hold_zero_structure(model, self.options.max_weight_elements)
        rounds = max(1, self.options.max_rounds) if screen else 0
        if not rounds:
            logger.debug("zero-structure: no zero rows, columns or factors: nothing to analyze")
        for _ in range(rounds):
            # Every group's units are judged on this round's analysis; removing units of
            # one group only slices other axes of shared weights, so the judgements of
            # the other groups stay valid (zeros can only grow) and all apply together.
            groups = find_channel_groups(model, context.input_shapes or None)
            plans = [(group, *_removable_units(group)) for group in groups]
            frozen = sum(int(f.sum()) for _, _, f in plans)
            changed = False
            for group, removable, _ in plans:
                if not removable.any():
                    continue
                keep = _keep_units(group, removable, self.options.round_to)
                if len(keep) == group.num_units:
                    continue
                try:
                    result = apply_channel_removal(model, group, keep)
                except ValueError as exc:
                    logger.debug("zero-structure: group '%s' left alone: %s", group.name, exc)
                    continue
                if not result.units_removed:
                    continue
                changed = True
                stats["channels-removed"] += result.units_removed
                stats["params-removed"] += result.params_removed
                stats["groups-shrunk"] += 1
                logger.info(
                    "zero-structure: group '%s' %d -> %d units (%d parameters removed)",
                    group.name,
                    group.num_units,
                    group.num_units - result.units_removed,
                    result.params_removed,
                )
                decisions.append(
                    {
                        "group": group.name,
                        "units-before": group.num_units,
                        "units-removed": result.units_removed,
                        "params-removed": result.params_removed,
                    }
                )
            if not changed:
                break
        stats["skipped-frozen-zero-channels"] = frozen
        return PassResult(stats, decisions)

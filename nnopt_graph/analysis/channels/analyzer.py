"""The channel analysis of a model: propagation from the weights, then the groups."""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as ir_passes

from nnopt_graph.analysis.channels.base import _Dims, _Space
from nnopt_graph.analysis.channels.compute_ops import (
    _ELEMENTWISE,
    _POOLS,
    _REDUCES,
    _UNARY,
    _ComputeOps,
)
from nnopt_graph.analysis.channels.layout_ops import _RESHAPES, _LayoutOps
from nnopt_graph.analysis.channels.model import (
    ROLE_GROUPED,
    ROLE_OUT,
    ChannelAnalysis,
    ChannelEdit,
    ChannelGroup,
    ChannelSpace,
    _Key,
)
from nnopt_graph.analysis.walk import STANDARD_DOMAINS, opset_version
from nnopt_graph.core.constants import is_constant

logger = logging.getLogger(__name__)


class _Analyzer(_ComputeOps, _LayoutOps):
    """Propagates channel spaces from weights through one graph; union-find over indices."""

    def __init__(self, graph: ir.Graph, shapes: dict[str, _Dims], opset: int) -> None:
        super().__init__(graph, shapes, opset)
        self.handlers: dict[str, Callable[[ir.Node, str, int, int, _Key], None]] = {
            "Conv": self._conv,
            "ConvTranspose": self._conv_transpose,
            "Gemm": self._gemm,
            "MatMul": self._matmul,
            "BatchNormalization": self._batch_norm,
            "InstanceNormalization": self._instance_norm,
            "LayerNormalization": self._layer_norm,
            "Softmax": self._softmax,
            "LogSoftmax": self._softmax,
            "Hardmax": self._softmax,
            "Concat": self._concat,
            "Split": self._split,
            "Slice": self._slice,
            "Transpose": self._transpose,
            "Resize": self._resize,
            "Upsample": self._resize,
            "Pad": self._pad,
            "Gather": self._gather,
            "Expand": self._expand,
            "Shape": self._shape,
            "Constant": self._constant,
        }
        for op in _UNARY:
            self.handlers[op] = self._unary
        for op in _ELEMENTWISE:
            self.handlers[op] = self._elementwise
        for op in _POOLS:
            self.handlers[op] = self._pool
        for op in _REDUCES | {"ArgMax", "ArgMin"}:
            self.handlers[op] = self._reduce
        for op in _RESHAPES:
            self.handlers[op] = self._reshape

    # -------------------------------------------------------- propagation

    def seed(self) -> None:
        """Start from every weight's output-channel axis."""
        for node in self.graph:
            if node.domain not in STANDARD_DOMAINS:
                continue
            op = node.op_type
            w = node.inputs[1] if len(node.inputs) > 1 else None
            a = node.inputs[0] if node.inputs else None
            if op in ("Conv", "ConvTranspose") and is_constant(w):
                assert w is not None
                self.space(w, 0 if op == "Conv" else 1)
            elif op == "Gemm" and is_constant(w):
                assert w is not None
                self.space(w, 0 if node.attributes.get_int("transB", 0) else 1)
            elif op == "MatMul":
                if is_constant(w) and self.rank(w) == 2:
                    assert w is not None
                    self.space(w, 1)
                if is_constant(a) and self.rank(a) == 2:
                    assert a is not None
                    self.space(a, 0)

    def run(self) -> None:
        self.seed()
        while self.queue:
            key = self.queue.popleft()
            self.process(key)

    def process(self, key: _Key) -> None:
        space = self.spaces[key]
        value, axis = space.value, space.axis
        graph = self.graph
        if value.is_graph_input() and not space.constant:
            if value in graph.inputs:
                self.freeze(key, "graph input")
            else:
                self.freeze(key, "subgraph boundary: input of another graph")
        if value.is_graph_output():
            self.freeze(key, "graph output")
        producer = value.producer()
        if producer is not None:
            if producer.graph is not graph:
                self.freeze(key, "subgraph boundary: produced in an outer graph")
            else:
                self.visit(producer, "out", list(producer.outputs).index(value), axis, key)
        elif not space.constant and value not in graph.inputs:
            self.freeze(key, "subgraph boundary: value from an outer scope")
        # An outer graph's initializer read only here is sliced like a local one; a
        # reader in another graph freezes it below.
        for use in value.uses():
            node, index = use.node, use.idx
            if node.graph is not graph:
                self.freeze(key, "subgraph boundary: used inside a subgraph")
                continue
            self.visit(node, "in", index, axis, key)

    def visit(self, node: ir.Node, port: str, index: int, axis: int, key: _Key) -> None:
        memo = (id(node), port, index, axis)
        if memo in self.visited:
            return
        self.visited.add(memo)
        if node.domain not in STANDARD_DOMAINS:
            self.freeze(key, f"unsupported op: {node.domain}::{node.op_type}")
            return
        handler = self.handlers.get(node.op_type)
        if handler is None:
            self.freeze(key, f"unsupported op: {node.op_type}")
            return
        try:
            handler(node, port, index, axis, key)
        except Exception:  # noqa: BLE001  (an op the handler cannot read is not understood)
            logger.debug("channels: %s '%s' not followed", node.op_type, node.name, exc_info=True)
            self.freeze(key, f"unsupported op: {node.op_type} (not followed)")

    # -------------------------------------------------------- results

    def groups(self, first_id: int) -> list[ChannelGroup]:
        by_root: dict[int, list[_Space]] = collections.defaultdict(list)
        for space in self.order:
            by_root[self.space_uf.find(space.index)].append(space)
        edits_by_space: dict[_Key, list[ChannelEdit]] = collections.defaultdict(list)
        for edit in self.edits:
            for k in edit.spaces:
                edits_by_space[k].append(edit)
        groups: list[ChannelGroup] = []
        for members in by_root.values():
            if not any(s.constant and any(r.role == ROLE_OUT for r in s.roles) for s in members):
                continue  # no prunable dimension: no weight's output channels
            roots: dict[int, int] = {}
            # Units are numbered in the order of the primary space's channels.
            primary = self._primary(members)
            ordered = [primary] + [s for s in members if s is not primary]
            unit_of_space: dict[int, np.ndarray] = {}
            for space in ordered:
                ids = np.empty(space.size, dtype=np.int64)
                for i in range(space.size):
                    root = self.uf.find(space.base + i)
                    ids[i] = roots.setdefault(root, len(roots))
                unit_of_space[id(space)] = ids
            frozen = np.zeros(len(roots), dtype=bool)
            reasons: list[str] = []
            has_source = np.zeros(len(roots), dtype=bool)
            for space in members:
                ids = unit_of_space[id(space)]
                if space.frozen:
                    frozen[ids] = True
                    reasons.extend(r for r in space.frozen if r not in reasons)
                if space.constant and any(r.role in (ROLE_OUT, ROLE_GROUPED) for r in space.roles):
                    has_source[ids] = True
            if (~has_source & ~frozen).any():
                frozen |= ~has_source
                reasons.append("no source: a unit with no weight producing it")
            spaces = [
                ChannelSpace(
                    s.value,
                    s.axis,
                    s.size,
                    unit_of_space[id(s)],
                    s.constant,
                    list(s.roles),
                    list(s.frozen),
                )
                for s in ordered
            ]
            by_key = {(id(s.value), s.axis): s for s in spaces}
            edits: list[ChannelEdit] = []
            for s in ordered:
                for e in edits_by_space.get((id(s.value), s.axis), []):
                    if e not in edits:
                        edits.append(e)
            name = next(
                (
                    r.node.name or r.node.op_type
                    for s in spaces
                    for r in s.roles
                    if r.role == ROLE_OUT
                ),
                spaces[0].name,
            )
            group = ChannelGroup(
                first_id + len(groups),
                self.graph,
                name,
                spaces,
                len(roots),
                frozen,
                reasons,
                edits,
                by_key,
            )
            groups.append(group)
        return groups

    def _primary(self, members: list[_Space]) -> _Space:
        by_key = {(id(s.value), s.axis): s for s in members}
        for space in members:
            for role in space.roles:
                if role.role == ROLE_OUT and role.data is not None:
                    found = by_key.get((id(role.data[0]), role.data[1]))
                    if found is not None:
                        return found
        return members[0]


# Outer-scope constants up to this many elements are copied into the subgraphs that read
# them before shape inference: shape data (axes, pads, targets), not weights.
_LOCALIZED_MAX_ELEMENTS = 4096


def _localize_outer_constants(clone: ir.Model) -> int:
    """Give each subgraph its own copy of the small outer-scope constants it reads.

    ONNX shape inference does not read an outer graph's initializer values inside a
    subgraph. Where the constants of identical If branches were shared into the outer
    graph (dedup), an Unsqueeze's axes or a Reshape's target there is unknown, so every
    later shape in the branch is too and all its groups freeze. Only the clone the
    shapes are inferred on is changed. Returns the inputs rewired.
    """
    rewired = 0
    for graph in clone.graphs():
        if graph is clone.graph:
            continue
        local: dict[int, ir.Value] = {}
        for node in graph:
            for index, value in enumerate(node.inputs):
                tensor = None if value is None else value.const_value
                if (
                    value is None
                    or tensor is None
                    or value.producer() is not None
                    or value.graph is None
                    or value.graph is graph
                    or tensor.size > _LOCALIZED_MAX_ELEMENTS
                ):
                    continue
                if id(value) not in local:
                    name = f"{value.name}.local{len(local)}.{graph.name or 'subgraph'}"
                    # A new tensor: sharing the outer one would rename it (and the
                    # TensorProto the model was read from) to the copy's name.
                    copy = ir.Value(
                        name=name,
                        shape=value.shape,
                        type=value.type,
                        const_value=ir.tensor(tensor.numpy(), name=name),
                    )
                    graph.register_initializer(copy)
                    local[id(value)] = copy
                node.replace_input_with(index, local[id(value)])
                rewired += 1
    return rewired


def _inferred_shapes(
    model: ir.Model, input_shapes: Mapping[str, Sequence[int]] | None = None
) -> dict[str, _Dims]:
    """Shapes of all named values from ONNX shape inference on a clone (model untouched).

    ``input_shapes`` fixes dynamic main-graph inputs in the clone so that more dims
    are known; the model itself keeps its dynamic inputs.
    """
    clone = model.clone()
    _localize_outer_constants(clone)
    fixed = False
    for value in clone.graph.inputs:
        if input_shapes and value.name and value.name in input_shapes:
            value.shape = ir.Shape(list(input_shapes[value.name]))
            fixed = True
    try:
        if fixed:
            import onnxscript.optimizer  # only here: a default pipeline need not import it

            # Shapes computed at run time (Shape→Gather→Concat→Reshape) fold once the
            # inputs are static; only the clone is folded, to learn the dims.
            for _ in range(4):
                ir_passes.ShapeInferencePass(strict_mode=False)(clone)
                if not onnxscript.optimizer.fold_constants(clone).modified:
                    break
        ir_passes.ShapeInferencePass(strict_mode=False)(clone)
    except Exception:  # noqa: BLE001  (inference is best effort; unknown shapes freeze groups)
        logger.debug("channels: shape inference failed", exc_info=True)
    shapes: dict[str, _Dims] = {}
    for graph in clone.graphs():
        values: list[ir.Value] = list(graph.inputs)
        values.extend(graph.initializers.values())
        values.extend(out for node in graph for out in node.outputs)
        for value in values:
            if value.name and value.shape is not None:
                shapes[value.name] = tuple(
                    d if isinstance(d, int) else (d.value if d.value is not None else None)
                    for d in value.shape
                )
    return shapes


def analyze_channels(
    model: ir.Model, input_shapes: Mapping[str, Sequence[int]] | None = None
) -> ChannelAnalysis:
    """Find every channel group of the model, with statistics of what froze.

    Each graph (the main graph and every If/Loop/Scan body) is analyzed on its own;
    values that cross a graph boundary freeze their units. Functions are not analyzed
    (counted in ``skipped-functions``). The model is not modified: shapes come from
    ONNX shape inference on a clone, with dynamic inputs fixed to ``input_shapes`` when
    given (channel counts do not depend on them; Flatten blocks and broadcasts need them).
    """
    shapes = _inferred_shapes(model, input_shapes)
    opset = opset_version(model)
    groups: list[ChannelGroup] = []
    reasons: collections.Counter[str] = collections.Counter()
    for graph in model.graphs():
        analyzer = _Analyzer(graph, shapes, opset)
        analyzer.run()
        groups.extend(analyzer.groups(len(groups)))
        reasons.update(analyzer.reasons)
    stats = {
        "groups": len(groups),
        "groups-prunable": sum(1 for g in groups if not g.frozen),
        "units": sum(g.num_units for g in groups),
        "units-prunable": int(sum(int((~g.unit_frozen).sum()) for g in groups)),
        "skipped-functions": len(model.functions),
    }
    for reason, count in sorted(reasons.items()):
        stats["frozen-spaces-" + reason.replace(" ", "-").replace("_", "-")] = count
    return ChannelAnalysis(groups, stats, shapes)


def find_channel_groups(
    model: ir.Model, input_shapes: Mapping[str, Sequence[int]] | None = None
) -> list[ChannelGroup]:
    """Every channel group of the model (main graph and subgraphs), frozen ones included.

    A group couples every tensor axis whose indices must be removed together; see
    ``ChannelGroup``. Frozen units (graph inputs/outputs, ops not understood, values
    crossing a subgraph boundary, normalized or reduced channel axes) must be kept.
    ``input_shapes`` fixes dynamic inputs for the analysis's shape inference.
    """
    return analyze_channels(model, input_shapes).groups

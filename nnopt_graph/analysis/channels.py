"""Channel dependency groups (DepGraph on ONNX): which tensor axes must be pruned together."""

# One module (1.6k lines), for now: the per-op handlers (_unary ... _matmul) are methods of
# _Analyzer that link and freeze spaces in its one union-find, and the removal at the end
# replays the edits those handlers record. Splitting it into graph model / handlers /
# removal, with the handlers taking the analyzer as an argument, is the planned next step
# (docs/architecture.md, "Not there yet"); until then a reader should start at
# analyze_channels() and _Analyzer.visit().

from __future__ import annotations

__all__ = [
    "ChannelAnalysis",
    "ChannelEdit",
    "ChannelGroup",
    "ChannelRole",
    "ChannelSpace",
    "RemovalResult",
    "analyze_channels",
    "apply_channel_removal",
    "const_array",
    "find_channel_groups",
    "set_node_const_input",
]

import collections
import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as ir_passes
import onnxscript.optimizer

from nnopt_graph.analysis.walk import STANDARD_DOMAINS, opset_version
from nnopt_graph.core.constants import const_array, const_shape, is_constant, set_constant
from nnopt_graph.core.names import NameScope
from nnopt_graph.core.unionfind import UnionFind

logger = logging.getLogger(__name__)

# A tracked space is one axis of one value: (id(value), axis).
_Key = tuple[int, int]
_Dims = tuple[Any, ...]

# Roles a constant's axis plays for the node that reads it.
ROLE_OUT = "out"  # output channels of a weight (Conv W axis 0, MatMul W axis -1): a source
ROLE_IN = "in"  # input channels of a weight (Conv W axis 1, MatMul W axis -2): a sink
ROLE_PARAM = "param"  # per-channel parameter: bias, BN statistics, per-channel constants
ROLE_BN_SCALE = "bn-scale"  # BatchNormalization scale
ROLE_GROUPED = "grouped"  # output axis of a depthwise or grouped Conv weight
WEIGHT_ROLES = frozenset({ROLE_OUT, ROLE_IN, ROLE_GROUPED})

_UNARY = frozenset(
    """Relu Sigmoid Tanh HardSigmoid HardSwish LeakyRelu Elu Selu Celu Gelu Erf Exp Log Abs Neg
    Sqrt Reciprocal Softplus Softsign Mish Clip Cast CastLike Identity Floor Ceil Round Sign Sin
    Cos Tan Asin Acos Atan Sinh Cosh Asinh Acosh Atanh Not IsNaN IsInf ThresholdedRelu Shrink
    Dropout""".split()
)
_ELEMENTWISE = frozenset(
    """Add Sub Mul Div Pow Max Min Mean Sum Where And Or Xor Equal Greater Less GreaterOrEqual
    LessOrEqual Mod PRelu BitShift BitwiseAnd BitwiseOr BitwiseXor""".split()
)
_POOLS = frozenset(
    "MaxPool AveragePool LpPool GlobalAveragePool GlobalMaxPool GlobalLpPool".split()
)
_REDUCES = frozenset(
    """ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSum
    ReduceLogSumExp ReduceSumSquare""".split()
)
_RESHAPES = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})


@dataclasses.dataclass(frozen=True, eq=False)
class ChannelRole:
    """What a constant's axis is to one node that reads it.

    Attributes:
        node: the node reading the constant.
        role: ``out`` (source weight), ``in`` (sink weight), ``grouped`` (depthwise or
            grouped Conv weight), ``bn-scale`` or ``param``.
        data: for ``in``, the activation and axis the weight contracts with (the sink's
            data input); for ``out``, the node's output and channel axis; else None.
    """

    node: ir.Node
    role: str
    data: tuple[ir.Value, int] | None = None


@dataclasses.dataclass(eq=False)
class ChannelSpace:
    """One axis of one value whose indices belong to a group.

    Attributes:
        value: the tensor (an activation or a constant).
        axis: the non-negative axis.
        size: its length before pruning.
        unit_of: for each index along the axis, the group unit it belongs to.
        is_constant: a constant (initializer or Constant output), sliced on removal.
        roles: for constants, the roles it plays for the nodes that read it.
        frozen_reasons: why the whole space must keep all its indices (empty if free).
    """

    value: ir.Value
    axis: int
    size: int
    unit_of: np.ndarray = dataclasses.field(repr=False)
    is_constant: bool = False
    roles: list[ChannelRole] = dataclasses.field(default_factory=list)
    frozen_reasons: list[str] = dataclasses.field(default_factory=list)

    @property
    def name(self) -> str:
        """The value's name."""
        return self.value.name or ""

    @property
    def key(self) -> tuple[str, int]:
        """(value name, axis): stable across clones of the model."""
        return (self.name, self.axis)

    def has_role(self, *roles: str) -> bool:
        """Whether the constant plays any of these roles for some node."""
        return any(r.role in roles for r in self.roles)


@dataclasses.dataclass(frozen=True, eq=False)
class ChannelEdit:
    """A rewrite besides slicing that a removal needs: attributes and shape constants.

    Kinds: ``conv-group`` (Conv ``group`` attribute from ``spaces[0]``, its input);
    ``shape-entry`` (entry ``position`` of constant input ``input_index`` becomes the size
    of ``spaces[0]``: Reshape shapes, Resize sizes, Expand shapes); ``split`` (split sizes
    from the output spaces); ``slice`` (starts/ends at ``position`` from ``spaces`` =
    (input, output)).
    """

    kind: str
    node: ir.Node
    spaces: tuple[_Key, ...]
    input_index: int = -1
    position: int = -1
    data: tuple[int, ...] = ()


@dataclasses.dataclass(eq=False)
class ChannelGroup:
    """Coupled channel axes: removing a unit removes its indices from every space.

    A unit is a set of (space, index) pairs that must go together: for a plain
    Conv→Relu→Conv chain, unit i is channel i of the first Conv's output, row i of its
    weight, entry i of its bias and input channel i of the second Conv's weight. For a
    Concat the units of each input sit at their offsets; for attention heads a unit is a
    head (``head_dim`` features of each projection); for a grouped Conv a unit is a group.

    Attributes:
        id: index in the analysis.
        graph: the graph (main graph or a subgraph) holding the group.
        name: the first source node's name (for reports).
        spaces: every tensor axis in the group.
        num_units: number of units.
        unit_frozen: per unit, whether it must be kept.
        frozen_reasons: why units are frozen (graph outputs, unknown ops, ...).
        edits: attribute and shape-constant rewrites a removal needs.
    """

    id: int
    graph: ir.Graph
    name: str
    spaces: list[ChannelSpace]
    num_units: int
    unit_frozen: np.ndarray
    frozen_reasons: list[str]
    edits: list[ChannelEdit]
    _by_key: dict[_Key, ChannelSpace] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def frozen(self) -> bool:
        """True when no unit may be removed."""
        return bool(self.unit_frozen.all())

    @property
    def reason(self) -> str | None:
        """Why the group is frozen (first reason), or None when some unit is free."""
        return (
            (self.frozen_reasons[0] if self.frozen_reasons else "frozen") if self.frozen else None
        )

    @property
    def prunable_units(self) -> np.ndarray:
        """Indices of the units that may be removed."""
        return np.nonzero(~self.unit_frozen)[0]

    @property
    def sources(self) -> list[ChannelSpace]:
        """Constant spaces that are output channels of a weight (Conv, Gemm, MatMul)."""
        return [s for s in self.spaces if s.has_role(ROLE_OUT)]

    @property
    def sinks(self) -> list[ChannelSpace]:
        """Constant spaces that are input channels of a weight."""
        return [s for s in self.spaces if s.has_role(ROLE_IN)]

    @property
    def primary(self) -> ChannelSpace | None:
        """The output space of the first source node (unit i is its channel i when 1:1)."""
        for space in self.sources:
            for role in space.roles:
                if role.role == ROLE_OUT and role.data is not None:
                    key = (id(role.data[0]), role.data[1])
                    if key in self._by_key:
                        return self._by_key[key]
        return self.spaces[0] if self.spaces else None

    @property
    def unit_width(self) -> int:
        """Indices of the primary space per unit (1 for channels, head_dim for heads)."""
        primary = self.primary
        if primary is None or self.num_units == 0:
            return 1
        return max(1, primary.size // max(1, len(np.unique(primary.unit_of))))

    def space(self, value: ir.Value, axis: int) -> ChannelSpace | None:
        """The group's space for a value's axis, or None."""
        return self._by_key.get((id(value), axis))

    def unit_sizes(self) -> dict[tuple[str, int], int]:
        """Size of each space in the group."""
        return {s.key: s.size for s in self.spaces}


@dataclasses.dataclass
class ChannelAnalysis:
    """All groups of a model, what the analysis could not follow, and the dims it used."""

    groups: list[ChannelGroup]
    stats: dict[str, int]
    shapes: dict[str, tuple[Any, ...]] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def prunable(self) -> list[ChannelGroup]:
        """Groups with at least one removable unit."""
        return [g for g in self.groups if not g.frozen]


@dataclasses.dataclass
class RemovalResult:
    """What ``apply_channel_removal`` did."""

    kept: dict[tuple[str, int], np.ndarray]
    params_removed: int
    units_removed: int


# ---------------------------------------------------------------- constants


def set_node_const_input(
    node: ir.Node, index: int, array: np.ndarray, suffix: str = "pruned"
) -> None:
    """Give ``node`` a constant input ``index`` holding ``array``.

    The constant is changed in place when ``node`` is its only reader; otherwise (or
    when the input is missing) a new initializer is created for this node alone, so
    other readers of a shared constant keep their values.
    """
    graph = node.graph
    assert isinstance(graph, ir.Graph), "constant inputs are only rewritten in graphs"
    old = node.inputs[index] if index < len(node.inputs) else None
    if (
        old is not None
        and is_constant(old)
        and len(old.uses()) == 1
        and not old.is_graph_output()
        and (old.is_initializer() or old.producer() is not None)
    ):
        set_constant(old, array)
        return
    base = (
        f"{old.name}_{suffix}"
        if old is not None and old.name
        else f"{node.name or node.op_type}_{index}"
    )
    name = NameScope.for_graph(graph)(base)
    value = ir.Value(name=name, const_value=ir.tensor(np.ascontiguousarray(array), name=name))
    value.shape = ir.Shape(array.shape)
    value.dtype = ir.DataType.from_numpy(array.dtype)
    graph.register_initializer(value)
    if index >= len(node.inputs):
        node.resize_inputs(index + 1)
    node.replace_input_with(index, value)
    if old is not None and old.is_initializer() and not old.uses() and not old.is_graph_output():
        if graph.initializers.get(old.name or "") is old:
            graph.initializers.pop(old.name or "")


@dataclasses.dataclass(eq=False)
class _Space:
    value: ir.Value
    axis: int
    size: int
    base: int
    index: int
    constant: bool
    roles: list[ChannelRole] = dataclasses.field(default_factory=list)
    frozen: list[str] = dataclasses.field(default_factory=list)


def _product(dims: Iterable[int]) -> int:
    return int(math.prod(dims))


def _reshape_segments(xd: _Dims, yd: _Dims) -> list[tuple[list[int], list[int]]] | None:
    """Matching axis groups of a row-major reshape; axes of size 1 left out.

    Leading and trailing dims that are equal (ints or the same symbol) map one to one;
    the middle must be static and is split into groups of equal products. None when
    the reshape cannot be followed.
    """
    n, m = len(xd), len(yd)
    segments: list[tuple[list[int], list[int]]] = []
    p = 0
    while p < n and p < m and xd[p] is not None and xd[p] == yd[p]:
        if xd[p] != 1:
            segments.append(([p], [p]))
        p += 1
    s = 0
    while s < n - p and s < m - p and xd[n - 1 - s] is not None and xd[n - 1 - s] == yd[m - 1 - s]:
        s += 1
    tail = [([n - 1 - k], [m - 1 - k]) for k in range(s) if xd[n - 1 - k] != 1]
    mid_x = [a for a in range(p, n - s)]
    mid_y = [a for a in range(p, m - s)]
    if any(not isinstance(xd[a], int) for a in mid_x) or any(
        not isinstance(yd[a], int) for a in mid_y
    ):
        return None
    mid_x = [a for a in mid_x if xd[a] != 1]
    mid_y = [a for a in mid_y if yd[a] != 1]
    i = j = 0
    while i < len(mid_x) or j < len(mid_y):
        if i >= len(mid_x) or j >= len(mid_y):
            return None
        gx, gy = [mid_x[i]], [mid_y[j]]
        px, py = xd[mid_x[i]], yd[mid_y[j]]
        i += 1
        j += 1
        while px != py:
            if px < py:
                if i >= len(mid_x):
                    return None
                gx.append(mid_x[i])
                px *= xd[mid_x[i]]
                i += 1
            else:
                if j >= len(mid_y):
                    return None
                gy.append(mid_y[j])
                py *= yd[mid_y[j]]
                j += 1
        segments.append((gx, gy))
    segments.extend(reversed(tail))
    return segments


# ---------------------------------------------------------------- the analysis


class _Analyzer:
    """Propagates channel spaces from weights through one graph; union-find over indices."""

    def __init__(self, graph: ir.Graph, shapes: dict[str, _Dims], opset: int) -> None:
        self.graph = graph
        self.shapes = shapes
        self.opset = opset
        self.uf: UnionFind[int] = UnionFind()
        self.space_uf: UnionFind[int] = UnionFind()
        self._units = 0
        self.spaces: dict[_Key, _Space] = {}
        self.order: list[_Space] = []
        self.queue: collections.deque[_Key] = collections.deque()
        self.visited: set[tuple[int, str, int, int]] = set()
        self.edits: list[ChannelEdit] = []
        self.edit_keys: set[tuple[Any, ...]] = set()
        self.reasons: collections.Counter[str] = collections.Counter()
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

    # -------------------------------------------------------- spaces

    def dims(self, value: ir.Value | None) -> _Dims | None:
        if value is None:
            return None
        if value.name and value.name in self.shapes:
            return self.shapes[value.name]
        if value.shape is not None:
            return tuple(
                d if isinstance(d, int) else (d.value if d.value is not None else None)
                for d in value.shape
            )
        if is_constant(value):
            return const_shape(value)
        return None

    def rank(self, value: ir.Value | None) -> int | None:
        dims = self.dims(value)
        return None if dims is None else len(dims)

    def space(self, value: ir.Value, axis: int) -> _Space | None:
        """The space of a value's axis, created (and queued) on first use; None if unsized."""
        dims = self.dims(value)
        if dims is None or not -len(dims) <= axis < len(dims):
            return None
        axis %= len(dims)
        key = (id(value), axis)
        space = self.spaces.get(key)
        if space is not None:
            return space
        size = dims[axis]
        if not isinstance(size, int) or size < 1:
            return None
        base, self._units = self._units, self._units + size
        space = _Space(
            value,
            axis,
            size,
            base,
            len(self.order),
            is_constant(value),
        )
        self.spaces[key] = space
        self.order.append(space)
        self.queue.append(key)
        return space

    def freeze(self, key: _Key, reason: str) -> None:
        space = self.spaces[key]
        if reason not in space.frozen:
            space.frozen.append(reason)
            self.reasons[reason.split(":")[0]] += 1
            logger.debug("channels: %s axis %d frozen: %s", space.value.name, space.axis, reason)

    def link(
        self,
        origin: _Key,
        a: ir.Value,
        axis_a: int,
        b: ir.Value,
        axis_b: int,
        idx_a: np.ndarray | None = None,
        idx_b: np.ndarray | None = None,
    ) -> bool:
        """Union index idx_a[k] of (a, axis_a) with idx_b[k] of (b, axis_b); identity if None.

        On a size mismatch or an unsized space, the origin space is frozen instead.
        """
        sa, sb = self.space(a, axis_a), self.space(b, axis_b)
        if sa is None or sb is None:
            missing = a if sa is None else b
            self.freeze(origin, f"unknown shape: '{missing.name}'")
            return False
        if idx_a is None and idx_b is None:
            if sa.size != sb.size:
                self.freeze(origin, f"size mismatch: '{a.name}' vs '{b.name}'")
                return False
            idx_a = idx_b = np.arange(sa.size)
        assert idx_a is not None and idx_b is not None
        for i, j in zip(idx_a.tolist(), idx_b.tolist(), strict=True):
            self.uf.union(sa.base + i, sb.base + j)
        self.space_uf.union(sa.index, sb.index)
        return True

    def role(
        self,
        value: ir.Value,
        axis: int,
        node: ir.Node,
        role: str,
        data: tuple[ir.Value, int] | None = None,
    ) -> None:
        space = self.space(value, axis)
        if space is None or not space.constant:
            return
        if not any(r.node is node and r.role == role for r in space.roles):
            space.roles.append(ChannelRole(node, role, data))

    def edit(self, edit: ChannelEdit) -> None:
        memo = (edit.kind, id(edit.node), edit.spaces, edit.input_index, edit.position)
        if memo not in self.edit_keys:
            self.edit_keys.add(memo)
            self.edits.append(edit)

    def key(self, value: ir.Value, axis: int) -> _Key:
        return (id(value), axis % max(1, self.rank(value) or 1))

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

    # -------------------------------------------------------- helpers for handlers

    def _out(self, node: ir.Node, i: int = 0) -> ir.Value | None:
        return node.outputs[i] if i < len(node.outputs) else None

    def _in(self, node: ir.Node, i: int) -> ir.Value | None:
        return node.inputs[i] if i < len(node.inputs) else None

    def _used(self, value: ir.Value | None) -> bool:
        return value is not None and (bool(value.uses()) or value.is_graph_output())

    def _identity_all(
        self,
        node: ir.Node,
        port: str,
        index: int,
        axis: int,
        key: _Key,
        inputs: Sequence[int] = (0,),
    ) -> None:
        """Link the same axis of the given inputs and of every used output."""
        values = [self._in(node, i) for i in inputs] + [o for o in node.outputs if self._used(o)]
        tracked = self._in(node, index) if port == "in" else self._out(node, index)
        assert tracked is not None
        for value in values:
            if value is not None and value is not tracked:
                self.link(key, tracked, axis, value, axis)

    # -------------------------------------------------------- handlers

    def _constant(self, node: ir.Node, port: str, index: int, axis: int, key: _Key) -> None:
        """A Constant node produces a constant: sliced on removal."""

    def _unary(self, node: ir.Node, port: str, index: int, axis: int, key: _Key) -> None:
        if port == "in" and index != 0:
            self.freeze(key, f"unsupported operand: input {index} of {node.op_type}")
            return
        if node.op_type == "Dropout" and self._used(self._out(node, 1)):
            self.freeze(key, "unsupported op: Dropout mask")
            return
        x, y = self._in(node, 0), self._out(node, 0)
        if x is not None and y is not None:
            tracked, other = (x, y) if port == "in" else (y, x)
            self.link(key, tracked, axis, other, axis)

    def _elementwise(self, node: ir.Node, port: str, index: int, axis: int, key: _Key) -> None:
        y = self._out(node, 0)
        yd = self.dims(y)
        tracked = self._in(node, index) if port == "in" else y
        td = self.dims(tracked)
        if y is None or yd is None or tracked is None or td is None:
            self.freeze(key, f"unknown shape: {node.op_type} '{node.name}'")
            return
        out_axis = axis + len(yd) - len(td)
        out_dim = yd[out_axis]
        if not isinstance(out_dim, int):
            self.freeze(key, f"unknown shape: {node.op_type} '{node.name}'")
            return
        if td[axis] != out_dim:
            self.freeze(key, f"broadcast along the channel axis: {node.op_type} '{node.name}'")
            return
        if tracked is not y:
            self.link(key, tracked, axis, y, out_axis)
        for value in node.inputs:
            if value is None or value is tracked:
                continue
            vd = self.dims(value)
            if vd is None:
                self.freeze(key, f"unknown shape: '{value.name}'")
                continue
            a = out_axis - (len(yd) - len(vd))
            if a < 0 or vd[a] == 1:
                continue  # broadcast: the same value for every channel
            if vd[a] != out_dim:
                self.freeze(key, f"unknown shape: '{value.name}'")
                continue
            if self.link(key, y, out_axis, value, a) and is_constant(value):
                self.role(value, a, node, ROLE_PARAM)

    def _batch_norm(self, node: ir.Node, port: str, index: int, axis: int, key: _Key) -> None:
        if any(self._used(o) for o in node.outputs[1:]):
            self.freeze(key, "unsupported op: BatchNormalization in training mode")
            return
        x, y = self._in(node, 0), self._out(node, 0)
        assert x is not None and y is not None
        if not (port == "in" and index > 0) and axis != 1:
            if axis == 0:
                self.link(key, x if port == "in" else y, 0, y if port == "in" else x, 0)
            else:
                self.freeze(key, "spatial axis: BatchNormalization")
            return
        self.link(key, x, 1, y, 1)
        for i in range(1, 5):
            param = self._in(node, i)
            if param is not None and self.link(key, y, 1, param, 0):
                self.role(param, 0, node, ROLE_BN_SCALE if i == 1 else ROLE_PARAM)

    def _instance_norm(self, node: ir.Node, port: str, index: int, axis: int, key: _Key) -> None:
        x, y = self._in(node, 0), self._out(node, 0)
        assert x is not None and y is not None
        if port == "in" and index > 0:
            axis = 1
        elif axis == 0:
            self.link(key, x, 0, y, 0)
            return
        elif axis != 1:
            self.freeze(key, "normalized axis: InstanceNormalization")
            return
        self.link(key, x, 1, y, 1)
        for i in (1, 2):
            param = self._in(node, i)
            if param is not None and self.link(key, y, 1, param, 0):
                self.role(param, 0, node, ROLE_PARAM)

    def _layer_norm(self, node: ir.Node, port: str, index: int, axis: int, key: _Key) -> None:
        x = self._in(node, 0)
        rank = self.rank(x)
        if port == "in" and index > 0 or rank is None:
            self.freeze(key, "normalized axis: LayerNormalization")
            return
        start = node.attributes.get_int("axis", -1) % rank
        if axis >= start:
            self.freeze(key, "normalized axis: LayerNormalization")
            return
        self._identity_all(node, port, index, axis, key)

    def _softmax(self, node: ir.Node, port: str, index: int, axis: int, key: _Key) -> None:
        rank = self.rank(self._in(node, 0))
        if rank is None:
            self.freeze(key, f"unknown shape: {node.op_type}")
            return
        if self.opset >= 13:
            norm = node.attributes.get_int("axis", -1) % rank
            hit = axis == norm
        else:
            hit = axis >= node.attributes.get_int("axis", 1) % rank
        if hit:
            self.freeze(key, f"normalized axis: {node.op_type}")
            return
        self._identity_all(node, port, index, axis, key)

    def _pool(self, node: ir.Node, port: str, index: int, axis: int, key: _Key) -> None:
        if axis > 1:
            self.freeze(key, f"spatial axis: {node.op_type}")
            return
        if self._used(self._out(node, 1)):
            self.freeze(key, f"unsupported op: {node.op_type} indices")
            return
        self._unary(node, port, index, axis, key)

    def _reduce(self, node: ir.Node, port: str, index: int, axis: int, key: _Key) -> None:
        x, y = self._in(node, 0), self._out(node, 0)
        rank = self.rank(x)
        if port == "in" and index > 0 or rank is None or y is None:
            self.freeze(key, f"unsupported operand: {node.op_type}")
            return
        if node.op_type in ("ArgMax", "ArgMin"):
            axes = [node.attributes.get_int("axis", 0)]
        else:
            axes_c = const_array(self._in(node, 1)) if self._in(node, 1) is not None else None
            axes = (
                [int(a) for a in axes_c.ravel()]
                if axes_c is not None
                else node.attributes.get_ints("axes")
            )
            if axes is None or (axes_c is not None and axes_c.size == 0):
                if self._in(node, 1) is not None and axes_c is None:
                    self.freeze(key, f"computed axes: {node.op_type}")
                    return
                if node.attributes.get_int("noop_with_empty_axes", 0):
                    self._unary(node, port, index, axis, key)
                    return
                axes = list(range(rank))
        reduced = sorted({a % rank for a in axes})
        keep = node.attributes.get_int("keepdims", 1)
        if port == "in":
            if axis in reduced:
                self.freeze(key, f"reduced axis: {node.op_type}")
                return
            out_axis = axis if keep else axis - sum(1 for a in reduced if a < axis)
            self.link(key, x, axis, y, out_axis)
        else:
            in_axes = [a for a in range(rank) if keep or a not in reduced]
            in_axis = in_axes[axis] if axis < len(in_axes) else None
            if in_axis is None or in_axis in reduced:
                self.freeze(key, f"reduced axis: {node.op_type}")
                return
            self.link(key, y, axis, x, in_axis)

    def _transpose(self, node: ir.Node, port: str, index: int, axis: int, key: _Key) -> None:
        x, y = self._in(node, 0), self._out(node, 0)
        rank = self.rank(x)
        if rank is None or x is None or y is None:
            self.freeze(key, "unknown shape: Transpose")
            return
        perm = node.attributes.get_ints("perm") or list(range(rank))[::-1]
        if port == "in":
            self.link(key, x, axis, y, perm.index(axis))
        else:
            self.link(key, y, axis, x, perm[axis])

    def _concat(self, node: ir.Node, port: str, index: int, axis: int, key: _Key) -> None:
        y = self._out(node, 0)
        rank = self.rank(y)
        if rank is None or y is None:
            self.freeze(key, "unknown shape: Concat")
            return
        cat = node.attributes.get_int("axis", 0) % rank
        if axis != cat:
            self._identity_all(node, port, index, axis, key, range(len(node.inputs)))
            return
        offset = 0
        for value in node.inputs:
            dims = self.dims(value)
            if value is None or dims is None or not isinstance(dims[cat], int):
                self.freeze(key, "unknown shape: Concat input")
                return
            size = int(dims[cat])
            if size:
                self.link(
                    key, value, cat, y, cat, np.arange(size), np.arange(offset, offset + size)
                )
            offset += size

    def _split(self, node: ir.Node, port: str, index: int, axis: int, key: _Key) -> None:
        x = self._in(node, 0)
        rank = self.rank(x)
        if port == "in" and index > 0 or rank is None or x is None:
            self.freeze(key, "unsupported operand: Split")
            return
        cat = node.attributes.get_int("axis", 0) % rank
        if axis != cat:
            self._identity_all(node, port, index, axis, key)
            return
        split_input = self._in(node, 1)
        if split_input is not None and not is_constant(split_input):
            self.freeze(key, "computed split sizes: Split")
            return
        offset = 0
        spaces = []
        for value in node.outputs:
            dims = self.dims(value)
            if dims is None or not isinstance(dims[cat], int):
                self.freeze(key, "unknown shape: Split output")
                return
            size = int(dims[cat])
            if size:
                self.link(
                    key, x, cat, value, cat, np.arange(offset, offset + size), np.arange(size)
                )
            spaces.append(self.key(value, cat))
            offset += size
        self.edit(ChannelEdit("split", node, tuple(spaces)))

    def _slice(self, node: ir.Node, port: str, index: int, axis: int, key: _Key) -> None:
        x, y = self._in(node, 0), self._out(node, 0)
        xd = self.dims(x)
        if port == "in" and index > 0 or xd is None or x is None or y is None:
            self.freeze(key, "unsupported operand: Slice")
            return
        if self.opset < 10:
            self.freeze(key, "unsupported op: Slice with attributes (opset < 10)")
            return
        params = [
            const_array(self._in(node, i)) if self._in(node, i) is not None else None
            for i in range(1, 5)
        ]
        starts, ends, axes, steps = params
        if (
            starts is None
            or ends is None
            or any(
                self._in(node, i) is not None and p is None
                for i, p in zip(range(3, 5), (axes, steps), strict=True)
            )
        ):
            self.freeze(key, "computed bounds: Slice")
            return
        axes_l = [int(a) % len(xd) for a in (axes if axes is not None else range(len(starts)))]
        if axis not in axes_l:
            self.link(key, x if port == "in" else y, axis, y if port == "in" else x, axis)
            return
        pos = axes_l.index(axis)
        step = int(steps[pos]) if steps is not None else 1
        size = xd[axis]
        if step != 1 or not isinstance(size, int):
            self.freeze(key, "strided slice along the channel axis")
            return
        start, end = int(starts[pos]), int(ends[pos])
        start = min(max(start + size if start < 0 else start, 0), size)
        end = min(max(end + size if end < 0 else end, 0), size)
        count = max(0, end - start)
        if count == 0:
            self.freeze(key, "empty slice along the channel axis")
            return
        self.link(key, x, axis, y, axis, np.arange(start, start + count), np.arange(count))
        self.edit(
            ChannelEdit(
                "slice", node, (self.key(x, axis), self.key(y, axis)), position=pos, data=(start,)
            )
        )

    def _reshape(self, node: ir.Node, port: str, index: int, axis: int, key: _Key) -> None:
        x, y = self._in(node, 0), self._out(node, 0)
        xd, yd = self.dims(x), self.dims(y)
        if port == "in" and index > 0 or x is None or y is None or xd is None or yd is None:
            self.freeze(key, f"unsupported operand: {node.op_type}")
            return
        shape_c = None
        if node.op_type == "Reshape":
            shape_c = const_array(self._in(node, 1))
            if shape_c is None:
                self.freeze(key, "computed shape: Reshape")
                return
            shape_c = shape_c.astype(np.int64).ravel()
            if node.attributes.get_int("allowzero", 0) and (shape_c == 0).any():
                self.freeze(key, "unsupported op: Reshape with allowzero")
                return
        segments = _reshape_segments(xd, yd)
        if segments is None:
            self.freeze(key, f"reshape not followed: {node.op_type} '{node.name}'")
            return
        side = 0 if port == "in" else 1
        segment = next((seg for seg in segments if axis in seg[side]), None)
        if segment is None:
            self.freeze(key, f"reshape not followed: {node.op_type} '{node.name}'")
            return
        in_axes, out_axes = segment
        if len(in_axes) > 1 and len(out_axes) > 1:
            self.freeze(key, f"reshape not followed: {node.op_type} '{node.name}'")
            return
        if len(in_axes) == 1 and len(out_axes) == 1:
            a, o = in_axes[0], out_axes[0]
            idx_x = idx_y = None
        elif len(in_axes) == 1:  # split: follow the outermost output axis
            a, o = in_axes[0], out_axes[0]
            if port == "out" and axis != o:
                self.freeze(key, f"inner axis of a split reshape: '{node.name}'")
                return
            inner = _product(int(yd[k]) for k in out_axes[1:])
            idx_x = np.arange(int(xd[a]))
            idx_y = idx_x // inner
        else:  # merge: output index -> the tracked input axis's component
            o = out_axes[0]
            a = axis if port == "in" else in_axes[0]
            sizes = [int(xd[k]) for k in in_axes]
            idx_y = np.arange(_product(sizes))
            idx_x = np.unravel_index(idx_y, sizes)[in_axes.index(a)]
        if not self.link(key, x, a, y, o, idx_x, idx_y):
            return
        if shape_c is not None:
            if o >= len(shape_c):
                self.freeze(key, "reshape not followed: shape length")
                return
            entry = int(shape_c[o])
            if entry > 0:
                self.edit(
                    ChannelEdit("shape-entry", node, (self.key(y, o),), input_index=1, position=o)
                )
            elif entry == 0 and not (a == o and idx_x is None):
                self.freeze(key, "reshape not followed: copied dim moves")

    def _resize(self, node: ir.Node, port: str, index: int, axis: int, key: _Key) -> None:
        x, y = self._in(node, 0), self._out(node, 0)
        if port == "in" and index > 0 or x is None or y is None:
            self.freeze(key, f"unsupported operand: {node.op_type}")
            return
        if "axes" in node.attributes or (
            node.attributes.get("coordinate_transformation_mode") is not None
            and node.attributes["coordinate_transformation_mode"].as_string()
            == "tf_crop_and_resize"
        ):
            self.freeze(key, f"unsupported op: {node.op_type} with axes or crop")
            return
        if node.op_type == "Upsample":
            scales = const_array(self._in(node, 1)) if self._in(node, 1) is not None else None
            if scales is None and "scales" in node.attributes:
                scales = np.asarray(node.attributes["scales"].as_floats())
            sizes = None
        else:
            scales_v, sizes_v = self._in(node, 2), self._in(node, 3)
            scales = const_array(scales_v) if scales_v is not None else None
            sizes = const_array(sizes_v) if sizes_v is not None else None
            if scales is not None and scales.size == 0:
                scales = None
            if (scales_v is not None and scales is None and sizes is None) or (
                sizes_v is not None and sizes is None
            ):
                self.freeze(key, f"computed scales: {node.op_type}")
                return
        if scales is not None and axis < scales.size and float(scales.ravel()[axis]) == 1.0:
            self._unary(node, port, index, axis, key)
            return
        xd = self.dims(x)
        if (
            sizes is not None
            and xd is not None
            and axis < sizes.size
            and int(sizes.ravel()[axis]) == xd[axis]
        ):
            if self.link(key, x, axis, y, axis):
                self.edit(
                    ChannelEdit(
                        "shape-entry", node, (self.key(y, axis),), input_index=3, position=axis
                    )
                )
            return
        self.freeze(key, f"resized axis: {node.op_type}")

    def _pad(self, node: ir.Node, port: str, index: int, axis: int, key: _Key) -> None:
        x = self._in(node, 0)
        rank = self.rank(x)
        if port == "in" and index > 0 or rank is None:
            self.freeze(key, "unsupported operand: Pad")
            return
        if self.opset < 11:
            pads = node.attributes.get_ints("pads")
            axes = list(range(rank))
        else:
            pads_c = const_array(self._in(node, 1))
            pads = [int(p) for p in pads_c.ravel()] if pads_c is not None else None
            axes_v = self._in(node, 3)
            axes_c = const_array(axes_v) if axes_v is not None else None
            if axes_v is not None and axes_c is None:
                pads = None
            axes = (
                [int(a) % rank for a in axes_c.ravel()] if axes_c is not None else list(range(rank))
            )
        if pads is None:
            self.freeze(key, "computed pads: Pad")
            return
        if axis in axes:
            k = axes.index(axis)
            if pads[k] != 0 or pads[k + len(axes)] != 0:
                self.freeze(key, "padded channel axis: Pad")
                return
        self._unary(node, port, index, axis, key)

    def _gather(self, node: ir.Node, port: str, index: int, axis: int, key: _Key) -> None:
        x, idx, y = self._in(node, 0), self._in(node, 1), self._out(node, 0)
        rank, q = self.rank(x), self.rank(idx)
        if port == "in" and index > 0 or rank is None or q is None or x is None or y is None:
            self.freeze(key, "unsupported operand: Gather")
            return
        g = node.attributes.get_int("axis", 0) % rank
        if port == "in":
            if axis == g:
                self.freeze(key, "gathered axis: Gather")
                return
            self.link(key, x, axis, y, axis if axis < g else axis + q - 1)
        else:
            if g <= axis < g + q:
                self.freeze(key, "gathered axis: Gather")
                return
            self.link(key, y, axis, x, axis if axis < g else axis - q + 1)

    def _expand(self, node: ir.Node, port: str, index: int, axis: int, key: _Key) -> None:
        x, y = self._in(node, 0), self._out(node, 0)
        xd, yd = self.dims(x), self.dims(y)
        shape_c = const_array(self._in(node, 1))
        if (
            port == "in"
            and index > 0
            or xd is None
            or yd is None
            or shape_c is None
            or x is None
            or y is None
        ):
            self.freeze(key, "unsupported operand: Expand")
            return
        shape_c = shape_c.ravel()
        out_axis = axis + len(yd) - len(xd) if port == "in" else axis
        in_axis = out_axis - (len(yd) - len(xd))
        if in_axis < 0 or xd[in_axis] != yd[out_axis]:
            self.freeze(key, "broadcast along the channel axis: Expand")
            return
        position = out_axis - (len(yd) - shape_c.size)
        if position >= 0 and int(shape_c[position]) != 1:
            if int(shape_c[position]) != yd[out_axis]:
                self.freeze(key, "unsupported op: Expand shape")
                return
            self.edit(
                ChannelEdit(
                    "shape-entry", node, (self.key(y, out_axis),), input_index=1, position=position
                )
            )
        self.link(key, x, in_axis, y, out_axis)

    def _shape(self, node: ir.Node, port: str, index: int, axis: int, key: _Key) -> None:
        rank = self.rank(self._in(node, 0))
        if rank is None:
            self.freeze(key, "shape read: Shape")
            return

        def bound(name: str, default: int) -> int:
            attr = node.attributes.get(name)
            if attr is None:
                return default
            v = attr.as_int()
            return min(max(v + rank if v < 0 else v, 0), rank)

        if bound("start", 0) <= axis < bound("end", rank):
            self.freeze(key, "shape read: Shape")

    def _conv_axes_handled(
        self, node: ir.Node, port: str, index: int, axis: int, key: _Key
    ) -> bool:
        """Axes Conv and ConvTranspose treat alike; True when this axis was dealt with here.

        A computed weight freezes, the batch axis passes through, spatial and kernel
        axes freeze.
        """
        x, w, y = self._in(node, 0), self._in(node, 1), self._out(node, 0)
        op = node.op_type
        if w is None or x is None or y is None or not is_constant(w):
            self.freeze(key, f"unsupported op: {op} with a computed weight")
            return True
        if (port, index) in (("in", 0), ("out", 0)) and axis == 0:
            self.link(key, x if port == "in" else y, 0, y if port == "in" else x, 0)
            return True
        if (
            (port, index) in (("in", 0), ("out", 0))
            and axis != 1
            or (port, index) == ("in", 1)
            and axis > 1
        ):
            self.freeze(key, f"spatial axis: {op}")
            return True
        return False

    def _conv(self, node: ir.Node, port: str, index: int, axis: int, key: _Key) -> None:
        x, w, b, y = self._in(node, 0), self._in(node, 1), self._in(node, 2), self._out(node, 0)
        if self._conv_axes_handled(node, port, index, axis, key):
            return
        assert x is not None and w is not None and y is not None  # checked just above
        wd, xd = self.dims(w), self.dims(x)
        if wd is None or xd is None or not isinstance(xd[1], int):
            self.freeze(key, "unknown shape: Conv")
            return
        group = node.attributes.get_int("group", 1)
        cin, cout = int(xd[1]), int(wd[0])
        if group > 1 and (port, index) == ("in", 1) and axis == 1:
            self.freeze(key, "input axis of a grouped Conv weight")
            return
        if group == 1:
            if (port, index) == ("in", 0) or (port, index) == ("in", 1) and axis == 1:
                if self.link(key, x, 1, w, 1):
                    self.role(w, 1, node, ROLE_IN, (x, 1))
            else:
                self.link(key, w, 0, y, 1)
                self.role(w, 0, node, ROLE_OUT, (y, 1))
                if b is not None and self.link(key, y, 1, b, 0):
                    self.role(b, 0, node, ROLE_PARAM)
            return
        cin_g, cout_g = cin // group, cout // group
        if cin_g * group != cin or cout_g * group != cout:
            self.freeze(key, "unsupported op: Conv group sizes")
            return
        # Depthwise or grouped: a unit is a whole group (one channel when depthwise).
        xs, ys = np.arange(cin), np.arange(cout)
        self.link(key, x, 1, x, 1, xs, (xs // cin_g) * cin_g)
        self.link(key, y, 1, y, 1, ys, (ys // cout_g) * cout_g)
        g = np.arange(group)
        self.link(key, x, 1, y, 1, g * cin_g, g * cout_g)
        self.link(key, w, 0, y, 1)
        self.role(w, 0, node, ROLE_GROUPED, (y, 1))
        if b is not None and self.link(key, y, 1, b, 0):
            self.role(b, 0, node, ROLE_PARAM)
        self.edit(ChannelEdit("conv-group", node, (self.key(x, 1),), data=(group, cin)))

    def _conv_transpose(self, node: ir.Node, port: str, index: int, axis: int, key: _Key) -> None:
        x, w, b, y = self._in(node, 0), self._in(node, 1), self._in(node, 2), self._out(node, 0)
        if self._conv_axes_handled(node, port, index, axis, key):
            return
        assert x is not None and w is not None and y is not None  # checked just above
        if node.attributes.get_int("group", 1) != 1:
            self.freeze(key, "unsupported op: grouped ConvTranspose")
            return
        if (port, index) == ("in", 0) or (port, index) == ("in", 1) and axis == 0:
            if self.link(key, x, 1, w, 0):
                self.role(w, 0, node, ROLE_IN, (x, 1))
        else:
            self.link(key, w, 1, y, 1)
            self.role(w, 1, node, ROLE_OUT, (y, 1))
            if b is not None and self.link(key, y, 1, b, 0):
                self.role(b, 0, node, ROLE_PARAM)

    def _gemm(self, node: ir.Node, port: str, index: int, axis: int, key: _Key) -> None:
        a, bw, c, y = self._in(node, 0), self._in(node, 1), self._in(node, 2), self._out(node, 0)
        if a is None or bw is None or y is None:
            self.freeze(key, "unsupported operand: Gemm")
            return
        ta, tb = node.attributes.get_int("transA", 0), node.attributes.get_int("transB", 0)
        a_m, a_k = (1, 0) if ta else (0, 1)
        b_k, b_n = (1, 0) if tb else (0, 1)
        yd = self.dims(y)
        if yd is None:
            self.freeze(key, "unknown shape: Gemm")
            return
        if (port, index) == ("in", 2):
            cd = self.dims(c)
            if cd is None:
                self.freeze(key, "unknown shape: Gemm bias")
                return
            axis = axis + 2 - len(cd)
            port, index = "out", 0
        if (port, index) == ("in", 0) and axis == a_m or (port, index) == ("out", 0) and axis == 0:
            self.link(key, a, a_m, y, 0)
            self._gemm_bias(node, key, c, y, 0, yd)
        elif (port, index) == ("in", 0) or (port, index) == ("in", 1) and axis == b_k:
            if self.link(key, a, a_k, bw, b_k) and is_constant(bw):
                self.role(bw, b_k, node, ROLE_IN, (a, a_k))
            if is_constant(a):
                self.role(a, a_k, node, ROLE_IN, (bw, b_k))
        else:
            self.link(key, bw, b_n, y, 1)
            self.role(bw, b_n, node, ROLE_OUT, (y, 1))
            self._gemm_bias(node, key, c, y, 1, yd)

    def _gemm_bias(
        self, node: ir.Node, key: _Key, c: ir.Value | None, y: ir.Value, y_axis: int, yd: _Dims
    ) -> None:
        cd = self.dims(c)
        if c is None or cd is None:
            return
        a = y_axis - (2 - len(cd))
        if a >= 0 and cd[a] != 1 and self.link(key, y, y_axis, c, a):
            self.role(c, a, node, ROLE_PARAM)

    def _matmul(self, node: ir.Node, port: str, index: int, axis: int, key: _Key) -> None:
        a, b, y = self._in(node, 0), self._in(node, 1), self._out(node, 0)
        ad, bd, yd = self.dims(a), self.dims(b), self.dims(y)
        if a is None or b is None or y is None or ad is None or bd is None or yd is None:
            self.freeze(key, "unknown shape: MatMul")
            return
        ra, rb, ry = len(ad), len(bd), len(yd)
        if ra < 2 or rb < 2:
            self.freeze(key, "unsupported op: MatMul of a vector")
            return
        # Express the tracked axis as an output axis or as the contracted axis.
        if (
            port == "in"
            and index == 0
            and axis == ra - 1
            or port == "in"
            and index == 1
            and axis == rb - 2
        ):
            if self.link(key, a, ra - 1, b, rb - 2):
                if is_constant(b):
                    self.role(b, rb - 2, node, ROLE_IN, (a, ra - 1))
                if is_constant(a):
                    self.role(a, ra - 1, node, ROLE_IN, (b, rb - 2))
            return
        if port == "in":
            out_axis = axis + ry - (ra if index == 0 else rb)
        else:
            out_axis = axis
        if out_axis == ry - 1:
            self.link(key, b, rb - 1, y, ry - 1)
            self.role(b, rb - 1, node, ROLE_OUT, (y, ry - 1))
        elif out_axis == ry - 2:
            self.link(key, a, ra - 2, y, ry - 2)
            self.role(a, ra - 2, node, ROLE_OUT, (y, ry - 2))
        else:
            for value, vd in ((a, ad), (b, bd)):
                v_axis = out_axis - (ry - len(vd))
                if v_axis >= 0 and vd[v_axis] != 1:
                    if vd[v_axis] != yd[out_axis]:
                        self.freeze(key, "unknown shape: MatMul batch axis")
                        return
                    self.link(key, y, out_axis, value, v_axis)

    # -------------------------------------------------------- results

    def groups(self, first_id: int) -> list[ChannelGroup]:
        by_root: dict[int, list[_Space]] = collections.defaultdict(list)
        for space in self.order:
            by_root[self.space_uf.find(space.index)].append(space)
        edits_by_space: dict[_Key, list[ChannelEdit]] = collections.defaultdict(list)
        for edit in self.edits:
            for k in edit.spaces:
                edits_by_space[k].append(edit)
        groups = []
        for members in by_root.values():
            if not any(s.constant and any(r.role == ROLE_OUT for r in s.roles) for s in members):
                continue  # no prunable dimension: no weight's output channels
            roots = {}
            # Units are numbered in the order of the primary space's channels.
            primary = self._primary(members)
            ordered = [primary] + [s for s in members if s is not primary]
            unit_of_space = {}
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


def _inferred_shapes(
    model: ir.Model, input_shapes: Mapping[str, Sequence[int]] | None = None
) -> dict[str, _Dims]:
    """Shapes of all named values from ONNX shape inference on a clone (model untouched).

    ``input_shapes`` fixes dynamic main-graph inputs in the clone so that more dims
    are known; the model itself keeps its dynamic inputs.
    """
    clone = model.clone()
    fixed = False
    for value in clone.graph.inputs:
        if input_shapes and value.name in input_shapes:
            value.shape = ir.Shape(list(input_shapes[value.name]))
            fixed = True
    try:
        if fixed:
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


# ---------------------------------------------------------------- removal


def _apply_edit(edit: ChannelEdit, kept: dict[_Key, np.ndarray], sizes: dict[_Key, int]) -> None:
    node = edit.node
    if edit.kind == "conv-group":
        group, cin = edit.data
        new_cin = len(kept[edit.spaces[0]])
        node.attributes["group"] = ir.AttrInt64("group", group * new_cin // cin)
    elif edit.kind == "shape-entry":
        array = const_array(node.inputs[edit.input_index])
        assert array is not None
        array = array.copy()
        flat = array.reshape(-1)
        if flat[edit.position] > 0:
            flat[edit.position] = len(kept[edit.spaces[0]])
        set_node_const_input(node, edit.input_index, array)
    elif edit.kind == "split":
        new_sizes = np.array(
            [len(kept[k]) if k in kept else sizes[k] for k in edit.spaces], dtype=np.int64
        )
        split_input = node.inputs[1] if len(node.inputs) > 1 else None
        if split_input is not None:
            set_node_const_input(node, 1, new_sizes)
        elif "split" in node.attributes:
            node.attributes["split"] = ir.AttrInt64s("split", new_sizes.tolist())
        else:
            if "num_outputs" in node.attributes:
                del node.attributes["num_outputs"]
            graph = node.graph
            assert graph is not None
            opset = graph.opset_imports.get("", 0) if isinstance(graph, ir.Graph) else 0
            if opset and opset < 13:
                node.attributes["split"] = ir.AttrInt64s("split", new_sizes.tolist())
            else:
                set_node_const_input(node, 1, new_sizes)
    elif edit.kind == "slice":
        in_key, out_key = edit.spaces
        start = edit.data[0]
        in_kept = kept[in_key] if in_key in kept else np.arange(sizes[in_key])
        out_count = len(kept[out_key]) if out_key in kept else sizes[out_key]
        new_start = int(np.sum(in_kept < start))
        for index, value in ((1, new_start), (2, new_start + out_count)):
            array = const_array(node.inputs[index])
            assert array is not None
            array = array.copy()
            array.reshape(-1)[edit.position] = value
            set_node_const_input(node, index, array)
    else:  # pragma: no cover
        raise ValueError(f"unknown edit {edit.kind}")


def apply_channel_removal(
    model: ir.Model, group: ChannelGroup, keep_units: Sequence[int] | np.ndarray
) -> RemovalResult:
    """Remove every unit of ``group`` not in ``keep_units``, consistently everywhere.

    Constants (weights, biases, BN parameters, per-channel constants) are sliced along
    their axis; Reshape/Resize/Expand shape constants, Split sizes, Slice bounds and
    Conv ``group`` are rewritten; activations get their new dim in the shape annotation.
    Shared shape constants are copied before they change. Tensors are replaced, never
    written to, so clones of the model sharing them keep the old values. Run ONNX shape
    inference afterwards to refresh other annotations.

    Args:
        model: the model holding the group (modified in place).
        group: a group from ``find_channel_groups`` on this model, not yet applied.
        keep_units: the unit indices to keep; must include every frozen unit and leave
            every space at least one index.

    Returns:
        The kept indices of each space, keyed by (value name, axis), and counts.

    Raises:
        ValueError: a frozen unit would be removed, or a space would become empty.
    """
    del model  # the group holds the values and nodes it rewrites
    keep_mask = np.zeros(group.num_units, dtype=bool)
    keep_mask[np.asarray(list(keep_units), dtype=np.int64)] = True
    if (group.unit_frozen & ~keep_mask).any():
        raise ValueError(f"group '{group.name}': frozen units cannot be removed")
    kept: dict[_Key, np.ndarray] = {}
    sizes: dict[_Key, int] = {}
    for space in group.spaces:
        k = (id(space.value), space.axis)
        idx = np.nonzero(keep_mask[space.unit_of])[0]
        if len(idx) == 0:
            raise ValueError(
                f"group '{group.name}': '{space.name}' axis {space.axis} would be empty"
            )
        kept[k] = idx
        sizes[k] = space.size
    params = 0
    if keep_mask.all():
        return RemovalResult({s.key: kept[(id(s.value), s.axis)] for s in group.spaces}, 0, 0)
    for space in group.spaces:
        idx = kept[(id(space.value), space.axis)]
        if len(idx) == space.size:
            continue
        if space.is_constant:
            array = const_array(space.value)
            assert array is not None
            new = np.take(array, idx, axis=space.axis)
            params += int(array.size - new.size)
            set_constant(space.value, new)
        elif space.value.shape is not None:
            dims = list(space.value.shape)
            if space.axis < len(dims):
                dims[space.axis] = len(idx)
                space.value.shape = ir.Shape(dims)
    for edit in group.edits:
        _apply_edit(edit, kept, sizes)
    units = int(group.num_units - keep_mask.sum())
    logger.info(
        "channels: group '%s' %d -> %d units", group.name, group.num_units, group.num_units - units
    )
    return RemovalResult({s.key: kept[(id(s.value), s.axis)] for s in group.spaces}, params, units)

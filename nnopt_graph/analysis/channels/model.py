"""The channel dependency model: spaces (one axis of one tensor), groups, edits."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx_ir as ir

# A tracked space is one axis of one value: (id(value), axis).
_Key = tuple[int, int]

# Roles a constant's axis plays for the node that reads it.
ROLE_OUT = "out"  # output channels of a weight (Conv W axis 0, MatMul W axis -1): a source
ROLE_IN = "in"  # input channels of a weight (Conv W axis 1, MatMul W axis -2): a sink
ROLE_PARAM = "param"  # per-channel parameter: bias, BN statistics, per-channel constants
ROLE_BN_SCALE = "bn-scale"  # BatchNormalization scale
ROLE_GROUPED = "grouped"  # output axis of a depthwise or grouped Conv weight
WEIGHT_ROLES = frozenset({ROLE_OUT, ROLE_IN, ROLE_GROUPED})


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

"""What the per-op handlers share: the spaces found so far, one union-find over their units."""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from nnopt_graph.analysis.channels.model import (
    ChannelEdit,
    ChannelRole,
    _Key,
)
from nnopt_graph.core.constants import const_shape, is_constant
from nnopt_graph.core.unionfind import UnionFind

logger = logging.getLogger(__name__)

_Dims = tuple[Any, ...]


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


class _AnalyzerBase:
    """Spaces of one graph, linked in one union-find over their units; the handlers' primitives."""

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

    def _unary(self, node: ir.Node, port: str, index: int, axis: int, key: _Key) -> None:
        """The same axis of the first input and the output (also the pass-through case)."""
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

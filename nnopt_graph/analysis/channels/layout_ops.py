"""Per-op channel handlers for ops that move data (transpose, concat, split, slice, reshape...)."""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from nnopt_graph.analysis.channels.base import (
    _AnalyzerBase,
    _product,
    _reshape_segments,
)
from nnopt_graph.analysis.channels.model import (
    ChannelEdit,
    _Key,
)
from nnopt_graph.core.constants import const_array, is_constant

logger = logging.getLogger(__name__)

_RESHAPES = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})


class _LayoutOps(_AnalyzerBase):
    """How channels pass through ops that move or reshape data."""

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
        pads: list[int] | None
        if self.opset < 11:
            listed = node.attributes.get_ints("pads")
            pads = None if listed is None else list(listed)
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

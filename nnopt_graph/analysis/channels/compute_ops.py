"""Channel handlers for ops that compute: elementwise, norms, pools, reductions, Conv, MatMul."""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from nnopt_graph.analysis.channels.base import _AnalyzerBase, _Dims
from nnopt_graph.analysis.channels.model import (
    ROLE_BN_SCALE,
    ROLE_GROUPED,
    ROLE_IN,
    ROLE_OUT,
    ROLE_PARAM,
    ChannelEdit,
    _Key,
)
from nnopt_graph.core.constants import const_array, is_constant

logger = logging.getLogger(__name__)

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


class _ComputeOps(_AnalyzerBase):
    """How channels pass through ops that compute on them."""

    def _constant(self, node: ir.Node, port: str, index: int, axis: int, key: _Key) -> None:
        """A Constant node produces a constant: sliced on removal."""

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
        if port == "in" and index > 0 or rank is None or x is None or y is None:
            self.freeze(key, f"unsupported operand: {node.op_type}")
            return
        if node.op_type in ("ArgMax", "ArgMin"):
            axes = [node.attributes.get_int("axis", 0)]
        else:
            axes_c = const_array(self._in(node, 1)) if self._in(node, 1) is not None else None
            listed = node.attributes.get_ints("axes")
            axes = (
                [int(a) for a in axes_c.ravel()]
                if axes_c is not None
                else (None if listed is None else list(listed))
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

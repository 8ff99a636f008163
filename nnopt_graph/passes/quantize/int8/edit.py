"""Inserting QDQ pairs and taking them out again: the int8 graph editor and its numbers."""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import onnx_ir as ir

from nnopt_graph.core.constants import const_array
from nnopt_graph.core.names import NameScope
from nnopt_graph.passes.quantize.common import (
    add_initializer,
    drop_if_unused,
    name_of,
)
from nnopt_graph.passes.quantize.int8.plan import (
    _FLOAT,
    _Format,
    _QParams,
    _Target,
)

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class _ActRecord:
    value: ir.Value
    q: ir.Node
    dqs: list[tuple[ir.Node, ir.Node, int]]
    params: tuple[ir.Value, ir.Value]


@dataclasses.dataclass
class _WeightRecord:
    node: ir.Node
    weight_index: int
    original: ir.Value
    dq: ir.Node
    float_bytes: int
    bias_index: int | None = None
    bias_original: ir.Value | None = None
    bias_added: bool = False
    bias_dq: ir.Node | None = None
    add_restore: tuple[ir.Node, int, ir.Value] | None = None
    corrected: bool = False


def _act_params(low: float, high: float, fmt: _Format) -> _QParams:
    low, high = min(low, 0.0), max(high, 0.0)
    if not (math.isfinite(low) and math.isfinite(high)):
        low, high = 0.0, 1.0
    if fmt.symmetric:
        scale = max(-low, high) / 127.0
        return _QParams(np.float32(scale if scale > 0 else 1.0), 0, fmt.activation)
    qmin, qmax = (0, 255) if fmt.activation == np.uint8 else (-128, 127)
    scale = (high - low) / (qmax - qmin)
    if not scale > 0:
        return _QParams(np.float32(1.0), qmin if low >= 0 else 0, fmt.activation)
    scale32 = np.float32(scale)
    zero = int(np.clip(round(qmin - low / float(scale32)), qmin, qmax))
    return _QParams(scale32, zero, fmt.activation)


def _quantize_weight(
    weight: np.ndarray, axis: int, per_channel: bool, qmax: int
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 weights and their float32 scales (per channel along ``axis``)."""
    if per_channel:
        others = tuple(i for i in range(weight.ndim) if i != axis)
        absmax = np.abs(weight).max(axis=others)
        shape = [1] * weight.ndim
        shape[axis] = -1
    else:
        absmax = np.array(np.abs(weight).max())
        shape = [1] * weight.ndim
    scale = np.where(absmax > 0, absmax / qmax, 1.0).astype(np.float32)
    q = np.clip(np.rint(weight / scale.reshape(shape)), -qmax, qmax).astype(np.int8)
    return q, scale


def _requantize(weight: np.ndarray, scale: np.ndarray, axis: int | None, qmax: int) -> np.ndarray:
    """Symmetric int8 codes of ``weight`` for given scales (per channel along ``axis``)."""
    shape = [1] * weight.ndim
    if axis is not None:
        shape[axis] = -1
    return np.clip(np.rint(weight / scale.reshape(shape)), -qmax, qmax).astype(np.int8)


def _bias_shift(t: _Target, delta: np.ndarray, mean: np.ndarray) -> np.ndarray | None:
    """E[x] times the weight error: the output shift per channel that bias correction removes."""
    op = t.node.op_type
    if op == "Conv":
        group = t.node.attributes.get_int("group", 1)
        summed = delta.reshape(delta.shape[0], delta.shape[1], -1).sum(axis=2)  # [M, C/g]
        per_group = summed.shape[0] // group
        cin = summed.shape[1]
        if mean.shape[0] != cin * group:
            return None
        out = np.empty(summed.shape[0])
        for j in range(group):
            rows = slice(j * per_group, (j + 1) * per_group)
            out[rows] = summed[rows] @ mean[j * cin : (j + 1) * cin]
        return out
    if op in ("Gemm", "MatMul"):
        if t.axis == 0:  # Gemm transB: [N, K]
            return delta @ mean if mean.shape[0] == delta.shape[1] else None
        return mean @ delta if mean.shape[0] == delta.shape[0] else None
    return None


def _bias_add_of(node: ir.Node, channels: int) -> tuple[ir.Node, int, np.ndarray] | None:
    """The Add of a constant [N] bias that alone reads a MatMul's output."""
    uses = list(node.outputs[0].uses())
    if len(uses) != 1 or node.outputs[0].is_graph_output():
        return None
    add = uses[0].node
    if add.op_type != "Add" or add.graph is not node.graph or len(add.inputs) != 2:
        return None
    index = 1 - uses[0].idx
    bias = const_array(add.inputs[index])
    if bias is None or bias.dtype != np.float32 or bias.shape != (channels,):
        return None
    bias_value = add.inputs[index]
    if bias_value is None or len(list(bias_value.uses())) != 1:
        return None
    return add, index, bias


class _Editor:
    """Inserts QDQ into a graph and takes it out again, pair by pair."""

    def __init__(self, graph: ir.Graph) -> None:
        self.graph = graph
        self.names = NameScope.for_graph(graph)
        self.acts: list[_ActRecord] = []
        self.weights: list[_WeightRecord] = []
        self.removed_edges = 0

    def _const(self, base: str, array: np.ndarray) -> ir.Value:
        return add_initializer(self.graph, self.names, base, array)

    def _qdq_params(self, base: str, qp: _QParams) -> tuple[ir.Value, ir.Value]:
        return (
            self._const(f"{base}_scale", np.array(qp.scale, dtype=np.float32)),
            self._const(f"{base}_zero_point", np.array(qp.zero_point, dtype=qp.dtype)),
        )

    def quantize_value(
        self, value: ir.Value, qp: _QParams, order: dict[int, int]
    ) -> _ActRecord | None:
        """Q after the value and one DQ in front of each main-graph consumer."""
        uses = [u for u in value.uses() if u.node.graph is self.graph]
        if not uses:
            return None
        base = name_of(value) or "value"
        scale, zero = self._qdq_params(base, qp)
        q_out = ir.Value(
            name=self.names(f"{base}_quantized"),
            type=ir.TensorType(ir.DataType.from_numpy(np.dtype(qp.dtype))),
            shape=value.shape,
        )
        q = ir.node(
            "QuantizeLinear",
            [value, scale, zero],
            outputs=[q_out],
            name=self.names(f"{base}_QuantizeLinear"),
        )
        first = min(uses, key=lambda u: order.get(id(u.node), 1 << 30)).node
        self.graph.insert_before(first, q)
        dqs = []
        for use in uses:
            dq_out = ir.Value(
                name=self.names(f"{base}_dequantized"), type=value.type, shape=value.shape
            )
            dq = ir.node(
                "DequantizeLinear",
                [q_out, scale, zero],
                outputs=[dq_out],
                name=self.names(f"{base}_DequantizeLinear"),
            )
            self.graph.insert_before(use.node, dq)
            use.node.replace_input_with(use.idx, dq_out)
            dqs.append((dq, use.node, use.idx))
        record = _ActRecord(value, q, dqs, (scale, zero))
        self.acts.append(record)
        return record

    def quantize_weight(
        self,
        node: ir.Node,
        q: np.ndarray,
        scale: np.ndarray,
        axis: int,
        per_channel: bool,
    ) -> _WeightRecord:
        """DQ of int8 weights in place of the node's float weight input."""
        original = node.inputs[1]
        assert original is not None
        base = f"{name_of(node)}_weight"
        q_value = self._const(f"{base}_quantized", q)
        s_value = self._const(f"{base}_scale", scale if per_channel else scale.reshape(()))
        z_value = self._const(
            f"{base}_zero_point", np.zeros(scale.shape if per_channel else (), dtype=np.int8)
        )
        attrs = {"axis": axis} if per_channel else {}
        out = ir.Value(
            name=self.names(f"{base}_dequantized"), type=original.type, shape=ir.Shape(q.shape)
        )
        dq = ir.node(
            "DequantizeLinear",
            [q_value, s_value, z_value],
            attributes=attrs,
            outputs=[out],
            name=self.names(f"{base}_DequantizeLinear"),
        )
        self.graph.insert_before(node, dq)
        node.replace_input_with(1, out)
        float_bytes = int(np.prod(q.shape)) * 4
        record = _WeightRecord(node, 1, original, dq, float_bytes)
        self.weights.append(record)
        return record

    def set_bias(
        self,
        record: _WeightRecord,
        bias: np.ndarray,
        index: int,
        quantized: tuple[np.ndarray, np.ndarray] | None,
        per_channel: bool,
    ) -> None:
        """Give the node a (corrected) bias: int32 through a DQ, or float."""
        node = record.node
        base = f"{name_of(node)}_bias"
        record.bias_index = index
        if index < len(node.inputs) and node.inputs[index] is not None:
            record.bias_original = node.inputs[index]
        else:
            record.bias_added = True
            node.resize_inputs(index + 1)
        if quantized is None:
            node.replace_input_with(
                index, self._const(f"{base}_corrected", bias.astype(np.float32))
            )
            return
        q, scale = quantized
        q_value = self._const(f"{base}_quantized", q)
        s_value = self._const(f"{base}_scale", scale if per_channel else scale.reshape(()))
        attrs = {"axis": 0} if per_channel else {}
        out = ir.Value(
            name=self.names(f"{base}_dequantized"),
            type=ir.TensorType(_FLOAT),
            shape=ir.Shape(q.shape),
        )
        dq = ir.node(
            "DequantizeLinear",
            [q_value, s_value],
            attributes=attrs,
            outputs=[out],
            name=self.names(f"{base}_DequantizeLinear"),
        )
        self.graph.insert_before(node, dq)
        node.replace_input_with(index, out)
        record.bias_dq = dq

    def correct_add(
        self, record: _WeightRecord, add: ir.Node, index: int, bias: np.ndarray
    ) -> None:
        """Replace the bias of the Add after a MatMul by a corrected copy."""
        original = add.inputs[index]
        assert original is not None
        add.replace_input_with(
            index, self._const(f"{name_of(original)}_corrected", bias.astype(np.float32))
        )
        record.add_restore = (add, index, original)

    def _remove(self, node: ir.Node) -> None:
        inputs = list(node.inputs)
        self.graph.remove(node, safe=True)
        for value in inputs:
            drop_if_unused(self.graph, value)

    def undo_weight(self, record: _WeightRecord) -> None:
        """Float weights (and the original bias) back in place."""
        node = record.node
        node.replace_input_with(record.weight_index, record.original)
        self._remove(record.dq)
        if record.bias_index is not None:
            current = node.inputs[record.bias_index]
            if record.bias_added:
                node.replace_input_with(record.bias_index, None)
                node.resize_inputs(record.bias_index)
            else:
                node.replace_input_with(record.bias_index, record.bias_original)
            if record.bias_dq is not None:
                self._remove(record.bias_dq)
            else:
                drop_if_unused(self.graph, current)
        if record.add_restore is not None:
            add, index, original = record.add_restore
            current = add.inputs[index]
            add.replace_input_with(index, original)
            drop_if_unused(self.graph, current)
        self.weights.remove(record)

    def undo_edge(self, record: _ActRecord, dq: ir.Node) -> None:
        """One consumer reads the float value again."""
        for entry in list(record.dqs):
            if entry[0] is dq:
                _, consumer, index = entry
                consumer.replace_input_with(index, record.value)
                self.graph.remove(dq, safe=True)
                record.dqs.remove(entry)
                self.removed_edges += 1
        if not record.dqs:
            self.graph.remove(record.q, safe=True)
            for value in record.params:
                drop_if_unused(self.graph, value)
            self.acts.remove(record)

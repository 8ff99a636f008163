"""Graph-building helpers shared by the sparsity passes: fresh names, constants, Shape slices."""

from __future__ import annotations

__all__ = ["ShapeBuilder", "replace_output"]

import logging

import numpy as np
import onnx_ir as ir

from nnopt_graph.core.names import NameScope

logger = logging.getLogger(__name__)


class ShapeBuilder:
    """Builds nodes and constants in one graph with names no other value there has."""

    def __init__(self, graph: ir.Graph, opset: int, names: NameScope) -> None:
        self.graph = graph
        self.opset = opset
        self.names = names

    def name(self, base: str) -> str:
        """A fresh name starting with ``base``."""
        return self.names(base)

    def const(self, base: str, array: np.ndarray) -> ir.Value:
        """A new initializer holding ``array``."""
        name = self.name(base)
        value = ir.Value(
            name=name,
            shape=ir.Shape(array.shape),
            type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
        )
        # asarray keeps a 0-d array 0-d (ascontiguousarray would make it 1-d).
        value.const_value = ir.tensor(np.asarray(array, order="C"), name=name)
        self.graph.register_initializer(value)
        return value

    def node(self, op: str, inputs: list[ir.Value | None], base: str, **attrs: int) -> ir.Node:
        """A node (not yet inserted) with integer attributes."""
        attributes = [ir.AttrInt64(k, v) for k, v in attrs.items()]
        return ir.Node("", op, inputs, attributes, name=self.name(base))

    def dims(self, x: ir.Value, start: int, end: int, base: str) -> tuple[list[ir.Node], ir.Value]:
        """Nodes computing ``Shape(x)[start:end]`` (Shape's start/end from opset 15, else Slice)."""
        if self.opset >= 15:
            shape = self.node("Shape", [x], f"{base}/dims", start=start, end=end)
            return [shape], shape.outputs[0]
        full = self.node("Shape", [x], f"{base}/shape")
        starts = self.const(f"{base}/dims_start", np.array([start], np.int64))
        ends = self.const(f"{base}/dims_end", np.array([end], np.int64))
        part = self.node("Slice", [full.outputs[0], starts, ends], f"{base}/dims")
        return [full, part], part.outputs[0]


def replace_output(node: ir.Node, new_nodes: list[ir.Node], result: ir.Value) -> None:
    """Insert ``new_nodes`` before ``node``, make ``result`` take over its output, remove it.

    ``result`` keeps the old output's name, type and shape, also when it is a graph output.
    """
    graph = node.graph
    assert graph is not None
    old = node.outputs[0]
    result.type = old.type
    result.shape = old.shape
    graph.insert_before(node, new_nodes)
    ir.convenience.replace_all_uses_with(old, result, replace_graph_outputs=True)
    name = old.name
    old.name = None
    graph.remove(node, safe=True)
    result.name = name

"""Finding the weights to cluster, and recognizing ones already clustered."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator

import onnx_ir as ir

from nnopt_graph.core.constants import constant_of_node
from nnopt_graph.passes.sharing.cluster.constants import (
    _BYTE_DTYPES,
    _INDEX_OPS,
)

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class _Weight:
    """A constant tensor read by the model: an initializer or a Constant node's value."""

    value: ir.Value
    graph: ir.Graph
    where: str
    node: ir.Node | None
    tensor: ir.TensorProtocol

    @property
    def name(self) -> str:
        return self.value.name or "<unnamed>"


def _dims(tensor: ir.TensorProtocol) -> tuple[int, ...]:
    return tuple(int(d) for d in tensor.shape.numpy())


def _graphs(graph: ir.Graph, where: str) -> Iterator[tuple[ir.Graph, str]]:
    """The graph and its nested subgraphs, with a label for each."""
    yield graph, where
    for node in graph:
        for attr in node.attributes.values():
            if not isinstance(attr, ir.Attr):
                continue
            label = f"{node.name or node.op_type}/{attr.name}"
            if attr.type == ir.AttributeType.GRAPH:
                yield from _graphs(attr.as_graph(), label)
            elif attr.type == ir.AttributeType.GRAPHS:
                for i, sub in enumerate(attr.as_graphs()):
                    yield from _graphs(sub, f"{label}[{i}]")


def _collect(model: ir.Model) -> tuple[list[_Weight], set[int], set[str]]:
    """Every weight of the main graph and subgraphs, ids of graph outputs, names in use."""
    weights: list[_Weight] = []
    outputs: set[int] = set()
    names: set[str] = set()
    for graph, where in _graphs(model.graph, "main"):
        outputs.update(id(v) for v in graph.outputs)
        for value in [*graph.inputs, *graph.initializers.values()]:
            if value.name:
                names.add(value.name)
        for value in graph.initializers.values():
            if value.const_value is not None:
                weights.append(_Weight(value, graph, where, None, value.const_value))
        for node in graph:
            names.update(v.name for v in node.outputs if v.name)
            tensor = constant_of_node(node)
            if tensor is not None:
                weights.append(_Weight(node.outputs[0], graph, where, node, tensor))
    return weights, outputs, names


def _is_codebook_gather(node: ir.Node) -> bool:
    """Gather(1-D constant codebook, indices computed from 8-bit constants), as written here."""
    if node.op_type != "Gather" or len(node.inputs) < 2:
        return False
    data, indices = node.inputs[0], node.inputs[1]
    if data is None or data.const_value is None or len(data.const_value.shape) != 1:
        return False
    if indices is None or indices.const_value is not None:
        return False
    roots = _index_roots(indices)
    return roots is not None and True in roots


def _index_roots(value: ir.Value, depth: int = 0) -> set[bool] | None:
    """The kinds of constants an index value is computed from, through index ops.

    Returns:
        A set holding True for 8-bit constants and False for small helper constants
        (shapes, divisors); None when anything else (a graph input, another op) feeds it.
    """
    tensor = value.const_value
    if tensor is not None:
        if tensor.dtype in _BYTE_DTYPES:
            return {True}
        return {False} if tensor.size <= 8 else None
    node = value.producer()
    if node is None or depth > 8 or node.op_type not in _INDEX_OPS:
        return None
    roots: set[bool] = set()
    for source in node.inputs:
        if source is None:
            continue
        found = _index_roots(source, depth + 1)
        if found is None:
            return None
        roots |= found
    return roots


def _feeds_codebook(value: ir.Value, depth: int = 0) -> bool:
    """Whether a value flows through index-unpacking ops into a codebook Gather's indices."""
    if depth > 8:
        return False
    for use in value.uses():
        node = use.node
        if use.idx == 1 and _is_codebook_gather(node):
            return True
        if node.op_type in _INDEX_OPS and any(
            _feeds_codebook(out, depth + 1) for out in node.outputs
        ):
            return True
    return False


def _decodes_weight(value: ir.Value | None, depth: int = 0) -> bool:
    """Whether a value is decoded from an encoded weight.

    That is a codebook Gather's or a DequantizeLinear's output, or one scaled or shifted
    per channel (Mul, Add, Sub).
    """
    node = value.producer() if value is not None else None
    if node is None or depth > 4:
        return False
    if node.op_type in ("Mul", "Add", "Sub"):
        return any(_decodes_weight(v, depth + 1) for v in node.inputs if v is not value)
    return node.op_type == "DequantizeLinear" or _is_codebook_gather(node)


def _already_clustered(value: ir.Value, integer: bool) -> bool:
    """A weight this pass (or a quantizer) wrote.

    That is: any input of DequantizeLinear or QuantizeLinear; an integer feeding a
    codebook Gather's indices; a codebook itself; a per-channel scale, offset or zero
    point applied (Mul, Add, Sub) to a decoded weight.
    """
    for use in value.uses():
        node = use.node
        if node.op_type in ("DequantizeLinear", "QuantizeLinear"):
            return True
        if integer:
            continue
        if use.idx == 0 and _is_codebook_gather(node):
            return True
        if node.op_type in ("Mul", "Add", "Sub") and any(
            _decodes_weight(v) for v in node.inputs if v is not value
        ):
            return True
    return integer and _feeds_codebook(value)

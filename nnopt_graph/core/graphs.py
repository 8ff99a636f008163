"""The graphs of a model (main graph and If/Loop/Scan bodies), found without onnx-ir's walk.

onnx-ir's ``model.graphs()`` visits every node through a generic recursive iterator; this
walk looks only at nodes that have attributes, and gives the same graphs in the same order.
"""

from __future__ import annotations

__all__ = ["model_graphs", "node_subgraphs", "subgraphs_of"]

from collections.abc import Iterator

import onnx_ir as ir


def node_subgraphs(node: ir.Node) -> Iterator[ir.Graph]:
    """The graphs held by a node's attributes (If branches, Loop/Scan bodies), in order."""
    for attr in node.attributes.values():
        if not isinstance(attr, ir.Attr):
            continue  # a function's reference attribute holds no graph
        if attr.type == ir.AttributeType.GRAPH:
            yield attr.as_graph()
        elif attr.type == ir.AttributeType.GRAPHS:
            yield from attr.as_graphs()


def _collect(graph: ir.Graph | ir.Function, seen: dict[ir.Graph, None]) -> None:
    """Collect the subgraphs below ``graph`` in depth-first order of entry."""
    for node in graph:
        if not node.attributes:  # most nodes: no attribute can hold a graph
            continue
        for sub in node_subgraphs(node):
            seen.setdefault(sub, None)
            _collect(sub, seen)


def subgraphs_of(graph: ir.Graph | ir.Function) -> list[ir.Graph]:
    """``graph.subgraphs()``: every subgraph below ``graph``, in onnx-ir's order."""
    seen: dict[ir.Graph, None] = {}
    _collect(graph, seen)
    seen.pop(graph, None)  # type: ignore[arg-type]  # a Function is never a key: no-op
    return list(seen)


def model_graphs(model: ir.Model) -> list[ir.Graph]:
    """``model.graphs()``: the main graph and every subgraph, in the same order, faster."""
    return [model.graph, *subgraphs_of(model.graph)]

"""Traversal helpers that see every graph: main graph, subgraphs and functions."""

from __future__ import annotations

__all__ = [
    "STANDARD_DOMAINS",
    "all_graphs",
    "all_nodes",
    "count_nodes",
    "custom_domain_nodes",
    "graph_nodes_recursive",
    "model_graphs",
    "opset_version",
]

from collections.abc import Iterator

import onnx_ir as ir

from nnopt_graph.core.graphs import model_graphs
from nnopt_graph.core.graphs import node_subgraphs as _node_subgraphs
from nnopt_graph.core.graphs import subgraphs_of as _subgraphs_of

# Domains whose ops follow the ONNX spec (and ONNX Runtime's contrib ops we can read).
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})


def all_graphs(model: ir.Model) -> Iterator[ir.Graph | ir.Function]:
    """The main graph, every subgraph (If/Loop/Scan bodies), and every function."""
    yield from model_graphs(model)
    for function in model.functions.values():
        yield function
        for node in graph_nodes_recursive(function):
            if not node.attributes:
                continue
            for sub in _node_subgraphs(node):
                yield sub
                yield from _subgraphs_of(sub)


def graph_nodes_recursive(graph: ir.Graph | ir.Function) -> Iterator[ir.Node]:
    """Every node of a graph, including those inside its subgraphs.

    The order of ``ir.traversal.RecursiveGraphIterator``: each node, then the nodes of
    the graphs its attributes hold.
    """
    for node in graph:
        yield node
        if node.attributes:
            for sub in _node_subgraphs(node):
                yield from graph_nodes_recursive(sub)


def all_nodes(model: ir.Model) -> Iterator[ir.Node]:
    """Every node of the model, in every graph and function."""
    yield from graph_nodes_recursive(model.graph)
    for function in model.functions.values():
        yield from graph_nodes_recursive(function)


def count_nodes(model: ir.Model) -> int:
    """Number of nodes in the whole model."""
    return sum(1 for _ in all_nodes(model))


def custom_domain_nodes(model: ir.Model) -> list[ir.Node]:
    """Nodes whose domain is neither ONNX's nor a model-local function's."""
    local = {(f.domain, f.name) for f in model.functions.values()}
    return [
        n
        for n in all_nodes(model)
        if n.domain not in STANDARD_DOMAINS and (n.domain, n.op_type) not in local
    ]


def opset_version(model: ir.Model, domain: str = "") -> int:
    """The model's opset version for a domain (0 when not imported)."""
    return model.opset_imports.get(
        domain, model.opset_imports.get("ai.onnx", 0) if not domain else 0
    )

"""Traversal helpers that see every graph: main graph, subgraphs and functions."""

from __future__ import annotations

__all__ = [
    "STANDARD_DOMAINS",
    "all_graphs",
    "all_nodes",
    "count_nodes",
    "custom_domain_nodes",
    "graph_nodes_recursive",
    "opset_version",
]

from collections.abc import Iterator

import onnx_ir as ir

# Domains whose ops follow the ONNX spec (and ONNX Runtime's contrib ops we can read).
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})


def all_graphs(model: ir.Model) -> Iterator[ir.Graph | ir.Function]:
    """The main graph, every subgraph (If/Loop/Scan bodies), and every function."""
    yield from model.graphs()
    for function in model.functions.values():
        yield function
        for node in ir.traversal.RecursiveGraphIterator(function):
            for attr in node.attributes.values():
                if not isinstance(attr, ir.Attr):
                    continue
                if attr.type == ir.AttributeType.GRAPH:
                    yield from _graph_and_subgraphs(attr.as_graph())
                elif attr.type == ir.AttributeType.GRAPHS:
                    for g in attr.as_graphs():
                        yield from _graph_and_subgraphs(g)


def _graph_and_subgraphs(graph: ir.Graph) -> Iterator[ir.Graph]:
    yield graph
    yield from graph.subgraphs()


def graph_nodes_recursive(graph: ir.Graph | ir.Function) -> Iterator[ir.Node]:
    """Every node of a graph, including those inside its subgraphs."""
    yield from ir.traversal.RecursiveGraphIterator(graph)


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

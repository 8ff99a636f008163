"""Walking ONNX protos: a graph and every subgraph its nodes' attributes hold."""

from __future__ import annotations

__all__ = ["proto_graphs"]

from collections.abc import Iterator

import onnx


def proto_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and its subgraphs at any depth (If/Loop/Scan bodies), depth first."""
    stack = [graph]
    while stack:
        g = stack.pop()
        yield g
        for node in g.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    stack.append(attr.g)
                stack.extend(attr.graphs)

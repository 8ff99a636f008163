"""Trailing empty optional outputs (``Split -> ['Y', '']``): onnx-ir drops them on save.

The ONNX contract keeps them (an empty name means "not computed"); ``restore_empty_outputs``
puts them back on the saved file, in every graph and function, in the IR's order.
"""

from __future__ import annotations

__all__ = ["has_trailing_empty_outputs", "restore_empty_outputs"]

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir

from nnopt_graph.core.graphs import model_graphs, subgraphs_of


def _ir_graphs_in_order(graph: ir.Graph | ir.Function) -> Iterator[ir.Graph | ir.Function]:
    """A graph and its subgraphs, in the order the serializer writes them."""
    yield graph
    for node in graph:
        for attr in node.attributes.values():
            if attr.is_ref():
                continue
            if attr.type == ir.AttributeType.GRAPH:
                yield from _ir_graphs_in_order(attr.value)
            elif attr.type == ir.AttributeType.GRAPHS:
                for sub in attr.value:
                    yield from _ir_graphs_in_order(sub)


def _proto_graphs_in_order(graph: onnx.GraphProto | onnx.FunctionProto) -> Iterator[Any]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.ref_attr_name:
                continue
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _proto_graphs_in_order(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _proto_graphs_in_order(sub)


def has_trailing_empty_outputs(model: ir.Model) -> bool:
    """Whether any node of any graph or function ends with empty optional outputs."""
    graphs: list[ir.Graph | ir.Function] = [*model_graphs(model)]
    for function in model.functions.values():
        graphs += [function, *subgraphs_of(function)]
    return any(
        len(node.outputs) and not node.outputs[-1].name for graph in graphs for node in graph
    )


def restore_empty_outputs(model: ir.Model, staged: Path) -> None:
    """Put back the trailing empty optional outputs the IR's serializer drops.

    Ops like Split-18 need as many outputs as ``num_outputs`` (``Split -> [Y, '']``).
    """
    proto = onnx.load(staged, load_external_data=False)
    roots: list[tuple[ir.Graph | ir.Function, Any]] = [(model.graph, proto.graph)]
    roots += list(zip(model.functions.values(), proto.functions, strict=True))
    for ir_root, proto_root in roots:
        pairs = zip(_ir_graphs_in_order(ir_root), _proto_graphs_in_order(proto_root), strict=True)
        for ir_graph, proto_graph in pairs:
            for node, node_proto in zip(ir_graph, proto_graph.node, strict=True):
                missing = len(node.outputs) - len(node_proto.output)
                if missing > 0:
                    node_proto.output.extend([""] * missing)
    with open(staged, "wb") as handle:
        handle.write(proto.SerializeToString())

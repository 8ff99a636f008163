"""Structural checks of the IR that the ONNX checker does not make or names poorly."""

from __future__ import annotations

__all__ = ["check_model_proto", "structural_problems"]

import onnx
import onnx_ir as ir
import onnx_ir.passes.common as ir_passes

from nnopt_graph.analysis.walk import all_graphs


def _parent_scopes(model: ir.Model) -> dict[int, ir.Graph | ir.Function]:
    """Map from id(subgraph) to the graph or function holding the node that owns it."""
    parents: dict[int, ir.Graph | ir.Function] = {}
    for graph in all_graphs(model):
        for node in graph:
            for attr in node.attributes.values():
                if not isinstance(attr, ir.Attr):
                    continue
                if attr.type == ir.AttributeType.GRAPH:
                    parents[id(attr.as_graph())] = graph
                elif attr.type == ir.AttributeType.GRAPHS:
                    for sub in attr.as_graphs():
                        parents[id(sub)] = graph
    return parents


def _defined_in_scope(
    value: ir.Value,
    graph: ir.Graph | ir.Function,
    parents: dict[int, ir.Graph | ir.Function],
) -> bool:
    """Whether ``value`` is visible from ``graph`` (its own or an enclosing scope)."""
    scope: ir.Graph | ir.Function | None = graph
    producer = value.producer()
    while scope is not None:
        if value in scope.inputs:
            return True
        if isinstance(scope, ir.Graph) and scope.initializers.get(value.name or "") is value:
            return True
        if producer is not None and producer.graph is scope:
            return True
        scope = parents.get(id(scope))
    return False


def structural_problems(model: ir.Model) -> list[str]:
    """Problems that make a model unserializable or unrunnable; empty when sound."""
    problems: list[str] = []
    parents = _parent_scopes(model)
    for graph in all_graphs(model):
        seen: set[ir.Node] = set()
        label = graph.name or "main graph"
        for node in graph:
            if node.graph is not graph:
                problems.append(f"{label}: node '{node.name}' does not point back to its graph")
            for value in node.inputs:
                if value is None:
                    continue
                if not _defined_in_scope(value, graph, parents):
                    problems.append(
                        f"{label}: input '{value.name}' of node '{node.name}' ({node.op_type}) "
                        "is not defined in scope"
                    )
                producer = value.producer()
                if producer is not None and producer.graph is graph and producer not in seen:
                    problems.append(
                        f"{label}: node '{node.name}' uses '{value.name}' before it is produced"
                    )
            seen.add(node)
        for value in graph.outputs:
            if not _defined_in_scope(value, graph, parents):
                problems.append(f"{label}: output '{value.name}' is not produced")
    return problems


def check_model_proto(model: ir.Model, *, full_check: bool = True) -> None:
    """Run the ONNX checker (with shape inference when full) on the model.

    Large weights are left out of the serialized copy, so this works for models of
    any size and does not read external data.

    Raises:
        onnx.checker.ValidationError: the checker's finding.
    """
    ir_passes.CheckerPass(full_check=full_check)(model)


# Re-exported so callers can catch the checker's error without importing onnx.
ValidationError = onnx.checker.ValidationError

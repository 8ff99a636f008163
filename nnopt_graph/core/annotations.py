"""Value annotations (value_info) around passes: what the written file says about shapes.

ONNX Runtime fuses differently on an annotated graph (Add + LayerNormalization into
SkipLayerNormalization once shapes are known, slower on small encoders), and annotations
grow the file, so passes put back, or do not add, what the input did not have.
"""

from __future__ import annotations

__all__ = ["annotations_kept", "annotations_not_added"]

import contextlib
from collections.abc import Iterator

import onnx_ir as ir

from nnopt_graph.core.graphs import model_graphs, subgraphs_of


def _graphs(model: ir.Model) -> list[ir.Graph | ir.Function]:
    """The main graph, every subgraph and every function with its subgraphs."""
    out: list[ir.Graph | ir.Function] = [*model_graphs(model)]
    for function in model.functions.values():
        out += [function, *subgraphs_of(function)]
    return out


def _all_values(model: ir.Model) -> Iterator[ir.Value]:
    """Every value of every graph and function: inputs, initializers and node outputs."""
    for graph in _graphs(model):
        yield from graph.inputs
        if isinstance(graph, ir.Graph):
            yield from graph.initializers.values()
        for node in graph:
            yield from node.outputs


def _graph_boundary(graph: ir.Graph | ir.Function) -> set[int]:
    ids = {id(v) for v in graph.inputs}
    ids.update(id(v) for v in graph.outputs)
    if isinstance(graph, ir.Graph):
        ids.update(id(v) for v in graph.initializers.values())
    return ids


@contextlib.contextmanager
def annotations_kept(model: ir.Model) -> Iterator[None]:
    """Let the block annotate values with inferred shapes, then put the old annotations back.

    Every value that existed before gets its type and shape back (none where it had
    none), so the written file carries the value_info the input had and no more: ONNX
    Runtime fuses differently on an annotated graph, and annotations grow the file.
    Values made inside the block keep theirs only if they are graph inputs, outputs or
    initializers.
    """
    saved: dict[int, tuple[ir.Value, ir.TypeProtocol | None, ir.Shape | None]] = {}
    for value in _all_values(model):
        shape = value.shape.copy() if value.shape is not None else None
        saved[id(value)] = (value, value.type, shape)
    try:
        yield
    finally:
        for graph in _graphs(model):
            boundary = _graph_boundary(graph)
            for value in [*graph.inputs, *graph.outputs, *(o for n in graph for o in n.outputs)]:
                entry = saved.get(id(value))
                if entry is None or entry[0] is not value:
                    if id(value) not in boundary:
                        value.type, value.shape = None, None
                    continue
                _, old_type, old_shape = entry
                if old_type is None and old_shape is None and id(value) in boundary:
                    continue  # graph inputs and outputs may keep a type a pass gave them
                value.type, value.shape = old_type, old_shape


@contextlib.contextmanager
def annotations_not_added(model: ir.Model) -> Iterator[None]:
    """Let the block change shapes, then drop the annotations it added where none were.

    For passes that change shapes (pruning): a value whose name was annotated before
    keeps its new, correct annotation; any other intermediate value ends with none (by
    name: the block may rebuild the graph from a copy). Pruning wrote 78 value_info
    entries on the zoo bert-encoder, which had none, and ONNX Runtime then fused Add +
    LayerNormalization into the slower SkipLayerNormalization: the pruned model ran
    1.06x the input instead of 0.88x.
    """
    annotated = {
        value.name
        for value in _all_values(model)
        if value.name and (value.type is not None or value.shape is not None)
    }
    try:
        yield
    finally:
        for graph in _graphs(model):
            boundary = _graph_boundary(graph)
            for node in graph:
                for value in node.outputs:
                    if id(value) in boundary:
                        continue
                    if value.name not in annotated:
                        value.type, value.shape = None, None

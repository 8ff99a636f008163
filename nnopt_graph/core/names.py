"""Fresh node and value names: the one generator every pass that adds to a graph uses."""

from __future__ import annotations

__all__ = ["NameScope"]

from collections.abc import Iterable

import onnx_ir as ir


class NameScope:
    """Names already in use, and fresh ones derived from a base: ``base``, ``base_1``..."""

    def __init__(self, used: Iterable[str] = ()) -> None:
        self.used: set[str] = set(used)

    @classmethod
    def for_graph(cls, graph: ir.Graph) -> NameScope:
        """Every node and value name of ``graph`` and its subgraphs."""
        scope = cls()
        for g in [graph, *graph.subgraphs()]:
            scope.used.update(v.name for v in g.inputs if v.name)
            scope.used.update(g.initializers)
            for node in g:
                if node.name:
                    scope.used.add(node.name)
                scope.used.update(v.name for v in node.outputs if v.name)
        return scope

    @classmethod
    def for_model(cls, model: ir.Model) -> NameScope:
        """Every value name in the model's graphs (value names are model-wide in ONNX)."""
        scope = cls()
        for graph in model.graphs():
            scope.used.update(graph.initializers)
            scope.used.update(v.name for v in graph.inputs if v.name)
            scope.used.update(v.name for node in graph for v in node.outputs if v.name)
        return scope

    def __call__(self, base: str) -> str:
        """``base``, or ``base_1``, ``base_2``... whichever is still free (now taken)."""
        name, i = base, 0
        while name in self.used:
            i += 1
            name = f"{base}_{i}"
        self.used.add(name)
        return name

    def release(self, name: str) -> None:
        """Give ``name`` back (its value was renamed or removed)."""
        self.used.discard(name)

"""The fast walkers visit what onnx-ir's recursive iterator and ``graphs()`` visit, in order."""

from __future__ import annotations

import onnx
import onnx_ir as ir
import pytest

from models import zoo
from nnopt_graph.analysis.walk import all_graphs, all_nodes, count_nodes, model_graphs

# An If inside a Loop body, an empty else branch, and a function whose body holds an If
# whose branch holds another If (subgraphs of functions, nested twice).
_NESTED = """
<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
agraph (float[N] x, bool c) => (float[N] y, float[N] z) {
    t = Constant <value = int64 {2}> ()
    y = Loop (t, c, x) <body = body (int64 i, bool cin, float[N] h) => (bool cout, float[N] h2) {
        cout = Identity (cin)
        h2 = If (cin) <then_branch = th () => (float[N] a) { a = Relu (h) },
                       else_branch = el () => (float[N] b) { b = Identity (h) }>
    }>
    z = local.f (x, c)
}
<domain: "local", opset_import: ["" : 17]>
f (x, c) => (z) {
    z = If (c) <then_branch = ft () => (float[N] a) {
        a = If (c) <then_branch = ftt () => (float[N] p) { p = Neg (x) },
                    else_branch = fte () => (float[N] q) { q = Abs (x) }>
    }, else_branch = fe () => (float[N] b) { b = Relu (x) }>
}
"""


def _reference_all_graphs(model: ir.Model) -> list:
    out: list = [*model.graphs()]
    for function in model.functions.values():
        out.append(function)
        for node in ir.traversal.RecursiveGraphIterator(function):
            for attr in node.attributes.values():
                if not isinstance(attr, ir.Attr):
                    continue
                if attr.type == ir.AttributeType.GRAPH:
                    out += [attr.as_graph(), *attr.as_graph().subgraphs()]
                elif attr.type == ir.AttributeType.GRAPHS:
                    for g in attr.as_graphs():
                        out += [g, *g.subgraphs()]
    return out


def _reference_nodes(model: ir.Model) -> list:
    nodes = list(ir.traversal.RecursiveGraphIterator(model.graph))
    for function in model.functions.values():
        nodes += list(ir.traversal.RecursiveGraphIterator(function))
    return nodes


def _models() -> list[ir.Model]:
    built = [ir.serde.deserialize_model(zoo.ZOO[name]()) for name in sorted(zoo.ZOO)]
    return [*built, ir.from_onnx_text(_NESTED)]


@pytest.mark.parametrize("index", range(len(zoo.ZOO) + 1))
def test_walkers_match_onnx_ir(index: int) -> None:
    model = _models()[index]
    assert [id(n) for n in all_nodes(model)] == [id(n) for n in _reference_nodes(model)]
    assert [id(g) for g in model_graphs(model)] == [id(g) for g in model.graphs()]
    assert [id(g) for g in all_graphs(model)] == [id(g) for g in _reference_all_graphs(model)]
    assert count_nodes(model) == len(_reference_nodes(model))


def test_nested_model_counts_every_graph_and_node() -> None:
    model = ir.from_onnx_text(_NESTED)
    # main, Loop body, If then/else in it; function f, its then (with 2 nested) and else.
    assert len(model_graphs(model)) == 4
    assert len(list(all_graphs(model))) == 4 + 1 + 4 + 2  # nested ones seen twice
    assert {n.op_type for n in all_nodes(model)} >= {"Neg", "Abs", "Loop", "f"}


def test_a_graph_without_subgraphs_is_only_the_main_graph() -> None:
    model = ir.serde.deserialize_model(
        onnx.parser.parse_model(
            '<ir_version: 8, opset_import: ["" : 17]> g (float[N] x) => (float[N] y) '
            "{ h = Relu (x)\n y = Neg (h) }"
        )
    )
    assert model_graphs(model) == [model.graph]
    assert [n.op_type for n in all_nodes(model)] == ["Relu", "Neg"]

"""core/rewrite.ShapeBuilder: constants keep their rank and their values."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from nnopt_graph.core.names import NameScope
from nnopt_graph.core.rewrite import ShapeBuilder


def _builder() -> tuple[ir.Graph, ShapeBuilder]:
    graph = ir.Graph([], [], nodes=[], name="g", opset_imports={"": 18})
    model = ir.Model(graph, ir_version=8)
    return graph, ShapeBuilder(graph, 18, NameScope.for_model(model))


@pytest.mark.parametrize(
    "array",
    [np.array(2.0, np.float32), np.array([-1], np.int64), np.arange(6.0).reshape(2, 3)],
    ids=["0-d", "1-d", "2-d"],
)
def test_const_keeps_shape_and_values(array):
    graph, builder = _builder()
    value = builder.const("c", array)
    stored = value.const_value.numpy()
    assert stored.shape == array.shape == tuple(value.shape.dims)
    np.testing.assert_array_equal(stored, array)
    assert graph.initializers[value.name] is value


def test_const_names_are_fresh():
    _, builder = _builder()
    a = builder.const("c", np.array(1.0, np.float32))
    b = builder.const("c", np.array(1.0, np.float32))
    assert a.name != b.name

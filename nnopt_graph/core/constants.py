"""Reading and writing constant tensors in the IR: initializers and Constant nodes alike.

Exporters put weights in either (PaddlePaddle and spox exports use Constant nodes); every
pass and analysis asks these helpers what is constant, so "constant" means one thing: an
initializer that is not also a graph input (those can be overridden at run time), a
value built with a tensor and no producer, or the output of an ONNX Constant node in any
of its attribute forms (``value``, ``value_float``, ``value_ints``...). A value computed by
another node is never constant here, even when an optimizer left a ``const_value`` on it.
"""

from __future__ import annotations

__all__ = [
    "ONNX_DOMAINS",
    "add_initializer",
    "const_array",
    "const_shape",
    "constant_bool",
    "constant_node_tensor",
    "constant_of_node",
    "constant_tensor",
    "drop_if_unused",
    "is_constant",
    "set_constant",
]

from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

if TYPE_CHECKING:
    from nnopt_graph.core.names import NameScope

# The ONNX domain, spelled both ways.
ONNX_DOMAINS = ("", "ai.onnx")


def constant_of_node(node: ir.Node) -> ir.TensorProtocol | None:
    """The tensor a Constant node holds in its ``value`` attribute, else None."""
    if node.op_type != "Constant" or node.domain not in ONNX_DOMAINS or len(node.attributes) != 1:
        return None
    attr = node.attributes.get("value")
    if not isinstance(attr, ir.Attr) or attr.is_ref() or attr.type != ir.AttributeType.TENSOR:
        return None
    return attr.as_tensor()


def constant_node_tensor(value: ir.Value) -> ir.TensorProtocol | None:
    """The tensor of the Constant node (``value`` attribute) producing ``value``, else None."""
    producer = value.producer()
    return None if producer is None else constant_of_node(producer)


def constant_tensor(value: ir.Value | None) -> ir.TensorProtocol | None:
    """The constant tensor behind ``value`` (see the module docstring), else None."""
    if value is None or value.is_graph_input():
        return None
    producer = value.producer()
    if producer is None:
        return value.const_value
    if producer.op_type != "Constant" or producer.domain not in ONNX_DOMAINS:
        return None
    try:
        return ir.convenience.get_const_tensor(value)
    except Exception:  # noqa: BLE001  (an attribute onnx-ir cannot read, e.g. sparse_value)
        return None


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The constant contents of ``value`` as an array, else None."""
    tensor = constant_tensor(value)
    return None if tensor is None else np.asarray(tensor.numpy())


def is_constant(value: ir.Value | None) -> bool:
    """Whether ``value`` is a constant (without reading its data)."""
    if value is None or value.is_graph_input():
        return False
    producer = value.producer()
    if producer is None:
        return value.const_value is not None
    return constant_tensor(value) is not None


def const_shape(value: ir.Value | None) -> tuple[int, ...] | None:
    """The shape of a constant (without reading its data), else None."""
    tensor = constant_tensor(value)
    return None if tensor is None else tuple(int(d) for d in tensor.shape.numpy())


def constant_bool(value: ir.Value | None) -> bool | None:
    """A constant boolean input's value; False for a missing optional input, None if computed."""
    if value is None:
        return False
    tensor = constant_tensor(value)
    return None if tensor is None else bool(np.asarray(tensor.numpy()).item())


def set_constant(value: ir.Value, array: np.ndarray) -> ir.TensorProtocol:
    """Replace the constant behind ``value`` (initializer or Constant node) by ``array``.

    The old tensor object is left untouched (other graphs may share it). Returns the new one.
    """
    tensor: ir.TensorProtocol = ir.tensor(np.ascontiguousarray(array), name=value.name)
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant":
        producer.attributes["value"] = ir.AttrTensor("value", tensor)
        if value.const_value is not None:
            value.const_value = tensor
    else:
        value.const_value = tensor
    value.shape = ir.Shape(array.shape)
    return tensor


def add_initializer(graph: ir.Graph, names: NameScope, base: str, array: np.ndarray) -> ir.Value:
    """Register ``array`` as a new initializer named after ``base``."""
    name = names(base)
    array = np.asarray(array)
    tensor = ir.tensor(array, name=name)
    value = ir.Value(
        name=name, type=ir.TensorType(tensor.dtype), shape=ir.Shape(array.shape), const_value=tensor
    )
    graph.register_initializer(value)
    return value


def drop_if_unused(graph: ir.Graph, value: ir.Value | None) -> int:
    """Remove an unused initializer, or an unused Constant node; the bytes freed."""
    if value is None or value.uses() or value.is_graph_output():
        return 0
    name = value.name or ""
    if value.is_initializer() and name in graph.initializers and not value.is_graph_input():
        size = value.const_value.nbytes if value.const_value is not None else 0
        graph.initializers.pop(name)
        return size
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and producer.graph is graph:
        array = const_array(value)
        graph.remove(producer, safe=True)
        return 0 if array is None else int(array.nbytes)
    return 0

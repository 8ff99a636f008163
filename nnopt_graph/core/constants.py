"""Reading and writing constant tensors in the IR: initializers and Constant nodes alike.

Exporters put weights in either (PaddlePaddle and spox exports use Constant nodes); the
passes treat both as weights through these two helpers.
"""

from __future__ import annotations

__all__ = ["constant_node_tensor", "set_constant"]

import numpy as np
import onnx_ir as ir

# The ONNX domain, spelled both ways.
_ONNX_DOMAINS = ("", "ai.onnx")


def constant_node_tensor(value: ir.Value) -> ir.TensorProtocol | None:
    """The tensor of the Constant node (``value`` attribute) producing ``value``, else None."""
    producer = value.producer()
    if producer is None or producer.op_type != "Constant" or producer.domain not in _ONNX_DOMAINS:
        return None
    attr = producer.attributes.get("value")
    if attr is None or attr.type != ir.AttributeType.TENSOR:
        return None
    return attr.as_tensor()


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

"""Elements, bytes, dims and dtype of a tensor, reading its shape once.

A tensor loaded from a file builds a new ``Shape`` on every ``shape``, ``size`` and
``nbytes``, and a new ``DataType`` on every ``dtype``; summing sizes over a model of many
small weights spent most of its time there. A loaded tensor's figures are read straight
from its proto instead.
"""

from __future__ import annotations

__all__ = ["size_and_bytes", "tensor_dims", "tensor_dtype", "tensor_nbytes"]

import math

import onnx_ir as ir

# onnx-ir's shape-based size and nbytes, shared by loaded, in-memory and external tensors.
_GENERIC_SIZE, _GENERIC_NBYTES = ir.Tensor.size, ir.Tensor.nbytes
# A tensor read from a TensorProto: its dims and data type are the proto's fields.
_PROTO_TENSOR = ir.serde.TensorProtoTensor
_DTYPES = {int(d): d for d in ir.DataType}


def tensor_dims(tensor: ir.TensorProtocol) -> tuple[int, ...]:
    """The tensor's shape as a tuple of ints (without building a ``Shape`` when loaded)."""
    if type(tensor) is _PROTO_TENSOR:
        return tuple(tensor.raw.dims)
    return tuple(tensor.shape.numpy())


def tensor_dtype(tensor: ir.TensorProtocol) -> ir.DataType:
    """``tensor.dtype`` (without building a new enum member when loaded)."""
    if type(tensor) is _PROTO_TENSOR:
        dtype = _DTYPES.get(tensor.raw.data_type)
        if dtype is not None:
            return dtype
    return tensor.dtype


def size_and_bytes(
    tensor: ir.TensorProtocol, dims: tuple[int, ...] | None = None
) -> tuple[int, int]:
    """(elements, bytes) of ``tensor``, the values its ``size`` and ``nbytes`` give.

    Args:
        tensor: any tensor.
        dims: its shape, when the caller has it already.
    """
    kind = type(tensor)
    if getattr(kind, "size", None) is _GENERIC_SIZE and getattr(kind, "nbytes", None) is (
        _GENERIC_NBYTES
    ):
        size = math.prod(dims if dims is not None else tensor_dims(tensor))
        return size, math.ceil(tensor_dtype(tensor).itemsize * size)
    return int(tensor.size), int(tensor.nbytes)


def tensor_nbytes(tensor: ir.TensorProtocol, dims: tuple[int, ...] | None = None) -> int:
    """``tensor.nbytes``, reading its shape once (or not at all, given ``dims``)."""
    return size_and_bytes(tensor, dims)[1]

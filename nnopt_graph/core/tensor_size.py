"""Elements and bytes of a tensor, reading its shape once.

A tensor loaded from a file builds a new ``Shape`` on every ``shape``, ``size`` and
``nbytes``; summing sizes over a model of many small weights spent most of its time there.
"""

from __future__ import annotations

__all__ = ["size_and_bytes", "tensor_nbytes"]

import math

import onnx_ir as ir

# onnx-ir's shape-based size and nbytes, shared by loaded, in-memory and external tensors.
_GENERIC_SIZE, _GENERIC_NBYTES = ir.Tensor.size, ir.Tensor.nbytes


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
        size = math.prod(dims if dims is not None else tensor.shape.numpy())
        return size, math.ceil(tensor.dtype.itemsize * size)
    return int(tensor.size), int(tensor.nbytes)


def tensor_nbytes(tensor: ir.TensorProtocol, dims: tuple[int, ...] | None = None) -> int:
    """``tensor.nbytes``, reading its shape once (or not at all, given ``dims``)."""
    return size_and_bytes(tensor, dims)[1]

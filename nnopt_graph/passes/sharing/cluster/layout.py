"""Which axes of a weight are its channels and its reduction, per consuming op."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from nnopt_graph.passes.sharing.cluster.constants import (
    _ONNX_DOMAINS,
)

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class _Layout:
    """How a weight is cut into groups that each get their own 2^N values."""

    granularity: str  # "tensor", "channel" or "block"
    axis: int | None = None  # channel axis, or the blocked axis
    block_size: int = 0

    def rows(self, array: np.ndarray) -> np.ndarray:
        """The groups of ``array`` as rows [R, M] (blocks padded by repeating their last value)."""
        if self.granularity == "tensor":
            return array.reshape(1, -1)
        assert self.axis is not None
        moved = np.moveaxis(array, self.axis, 0 if self.granularity == "channel" else -1)
        if self.granularity == "channel":
            return moved.reshape(moved.shape[0], -1)
        length = moved.shape[-1]
        blocks = -(-length // self.block_size)
        pad = blocks * self.block_size - length
        if pad:
            moved = np.pad(moved, [(0, 0)] * (moved.ndim - 1) + [(0, pad)], mode="edge")
        return moved.reshape(-1, self.block_size)

    def unrows(self, rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """The inverse of ``rows`` for an array of ``shape``."""
        if self.granularity == "tensor":
            return rows.reshape(shape)
        assert self.axis is not None
        if self.granularity == "channel":
            moved_shape = (shape[self.axis], *shape[: self.axis], *shape[self.axis + 1 :])
            return np.moveaxis(rows.reshape(moved_shape), 0, self.axis)
        length = shape[self.axis]
        rest = shape[: self.axis] + shape[self.axis + 1 :]
        moved = rows.reshape(*rest, -1)[..., :length]
        return np.moveaxis(moved, -1, self.axis)

    def group_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of per-group parameters (scales) in DequantizeLinear's layout."""
        if self.granularity == "tensor":
            return ()
        assert self.axis is not None
        if self.granularity == "channel":
            return (shape[self.axis],)
        blocked = list(shape)
        blocked[self.axis] = -(-shape[self.axis] // self.block_size)
        return tuple(blocked)

    def per_group(self, values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """Per-row values [R] reshaped to ``group_shape`` (block rows come in moved order)."""
        if self.granularity != "block":
            return values.reshape(self.group_shape(shape))
        assert self.axis is not None
        rest = shape[: self.axis] + shape[self.axis + 1 :]
        return np.moveaxis(values.reshape(*rest, -1), -1, self.axis)

    def broadcast_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Per-channel values shaped to broadcast against the weight (channel only)."""
        assert self.granularity == "channel" and self.axis is not None
        dims = [1] * len(shape)
        dims[self.axis] = shape[self.axis]
        return tuple(dims)

    def describe(self) -> str:
        if self.granularity == "tensor":
            return "tensor"
        if self.granularity == "channel":
            return f"channel (axis {self.axis})"
        return f"block (axis {self.axis}, size {self.block_size})"


def _axes_for_use(node: ir.Node, index: int, rank: int) -> tuple[int, int] | None:
    """(output-channel axis, reduction axis) of a weight read by ``node`` at input ``index``."""
    if node.domain not in _ONNX_DOMAINS or rank < 2:
        return None
    op = node.op_type
    if op == "Conv" and index == 1:
        return 0, 1
    if op == "ConvTranspose" and index == 1:
        return 1, 0
    if op == "Gemm" and rank == 2:
        if index == 1:
            return (0, 1) if node.attributes.get_int("transB", 0) else (1, 0)
        if index == 0:
            return (1, 0) if node.attributes.get_int("transA", 0) else (0, 1)
    if op == "MatMul":
        if index == 1:
            return rank - 1, rank - 2
        if index == 0:
            return rank - 2, rank - 1
    if op in ("LSTM", "GRU", "RNN") and index in (1, 2) and rank == 3:
        return 1, 2
    if op == "Gather" and index == 0 and rank == 2:
        axis = node.attributes.get_int("axis", 0) % rank
        return axis, 1 - axis
    return None


def _weight_axes(value: ir.Value, rank: int) -> tuple[tuple[int, int] | None, str]:
    """(output-channel axis, reduction axis) all readers of a weight agree on.

    Returns:
        The axes and "" when the readers tell them; None and why not otherwise (a vector,
        a reader this pass does not know, or readers that disagree).
    """
    if rank < 2:
        return None, f"rank {rank}"
    found: set[tuple[int, int]] = set()
    unknown: set[str] = set()
    for use in value.uses():
        axes = _axes_for_use(use.node, use.idx, rank)
        if axes is None:
            unknown.add(f"{use.node.op_type} input {use.idx}")
        else:
            found.add(axes)
    if unknown:
        return None, f"channel axis unknown for {', '.join(sorted(unknown))}"
    if len(found) != 1:
        return None, f"readers disagree on the channel axis ({sorted(found)})"
    return found.pop(), ""

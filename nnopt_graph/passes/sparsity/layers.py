"""Weight layers for sparsity: Conv/MatMul/Gemm weights as [rows, K] matrices, input statistics."""

from __future__ import annotations

__all__ = [
    "ActivationStats",
    "Layer",
    "find_layers",
    "im2col",
    "read_weight",
    "write_weight",
]

import dataclasses
import logging
import math
from collections.abc import Iterator

import numpy as np
import onnx_ir as ir

from nnopt_graph.analysis.walk import STANDARD_DOMAINS
from nnopt_graph.core.constants import constant_node_tensor, set_constant

logger = logging.getLogger(__name__)

_FLOAT_TYPES = frozenset(
    {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16}
)
# im2col rows built at once (bounds the memory of a Conv's unfolded input).
_IM2COL_CHUNK_ELEMENTS = 1 << 22


@dataclasses.dataclass
class Layer:
    """A Conv, MatMul or Gemm with a constant weight, seen as a [rows, K] matrix.

    Rows are output channels (Conv) or output features (MatMul/Gemm); K runs along
    the reduction axis. For Conv, K is ordered kernel position first, then input
    channel, so that M consecutive columns are M consecutive input channels at one
    kernel position (TensorRT's 2:4 layout).
    """

    node: ir.Node
    weight: ir.Value
    op: str
    shape: tuple[int, ...]
    groups: int = 1
    trans_a: bool = False
    trans_b: bool = False
    in_main_graph: bool = True

    @property
    def name(self) -> str:
        """The node's name (or its output's when unnamed)."""
        return self.node.name or (self.node.outputs[0].name or "")

    @property
    def rows(self) -> int:
        """Output channels / features."""
        if self.op == "Conv" or (self.op == "Gemm" and self.trans_b):
            return self.shape[0]
        return self.shape[1]

    @property
    def k(self) -> int:
        """Length of the reduction axis per group."""
        if self.op == "Conv":
            return math.prod(self.shape[1:])
        return self.shape[1] if self.op == "Gemm" and self.trans_b else self.shape[0]

    @property
    def c_in(self) -> int:
        """Input channels per group (Conv) or K (MatMul/Gemm): where N:M groups run."""
        return self.shape[1] if self.op == "Conv" else self.k

    @property
    def kernel(self) -> tuple[int, ...]:
        """The Conv kernel's spatial shape (empty for MatMul/Gemm)."""
        return self.shape[2:] if self.op == "Conv" else ()

    def to_matrix(self, array: np.ndarray) -> np.ndarray:
        """The weight as [rows, K]."""
        if self.op == "Conv":
            return np.moveaxis(array, 1, -1).reshape(self.shape[0], -1)
        return array if self.op == "Gemm" and self.trans_b else array.T

    def from_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """The inverse of ``to_matrix``."""
        if self.op == "Conv":
            unfolded = matrix.reshape(self.shape[0], *self.kernel, self.shape[1])
            return np.ascontiguousarray(np.moveaxis(unfolded, -1, 1))
        return np.ascontiguousarray(matrix if self.op == "Gemm" and self.trans_b else matrix.T)

    def group_rows(self) -> list[slice]:
        """Rows of each group (one slice unless a grouped Conv)."""
        per = self.rows // self.groups
        return [slice(g * per, (g + 1) * per) for g in range(self.groups)]

    @property
    def activation(self) -> ir.Value | None:
        """The input whose columns the weight multiplies."""
        return self.node.inputs[0] if self.node.inputs else None


def read_weight(value: ir.Value) -> ir.TensorProtocol | None:
    """The constant tensor of an initializer or a Constant node's output, else None."""
    if value.is_initializer() and value.const_value is not None:
        return value.const_value
    return constant_node_tensor(value)


def write_weight(value: ir.Value, array: np.ndarray) -> None:
    """Replace the constant behind ``value`` (initializer or Constant node) by ``array``."""
    tensor = set_constant(value, array)
    if value.type is None:
        value.type = ir.TensorType(tensor.dtype)


def _skip_reason(node: ir.Node, weight: ir.Value, tensor: ir.TensorProtocol) -> str | None:
    """Why a layer's weight cannot be changed in place, or None."""
    if tensor.dtype not in _FLOAT_TYPES:
        return "weight-not-float"
    if weight.is_graph_output():
        return "weight-is-graph-output"
    if weight.is_graph_input():
        return "weight-is-graph-input"
    if len(weight.uses()) > 1:
        return "shared-weight"
    return None


def _layer_of(node: ir.Node, in_main: bool) -> tuple[Layer | None, str | None]:
    """(layer, None) for a supported node, (None, reason) for an unsupported one."""
    op = node.op_type
    if len(node.inputs) < 2 or node.inputs[1] is None or node.inputs[0] is None:
        return None, "missing-inputs"
    weight = node.inputs[1]
    tensor = read_weight(weight)
    if tensor is None:
        return None, "weight-not-constant"
    shape = tuple(int(d) for d in tensor.shape.numpy())
    if op == "Conv":
        if len(shape) < 3:
            return None, "bad-weight-rank"
        layer = Layer(node, weight, op, shape, groups=node.attributes.get_int("group", 1))
    elif op == "MatMul":
        if len(shape) != 2:
            return None, "weight-not-2d"
        layer = Layer(node, weight, op, shape)
    else:
        if len(shape) != 2:
            return None, "weight-not-2d"
        layer = Layer(
            node,
            weight,
            op,
            shape,
            trans_a=bool(node.attributes.get_int("transA", 0)),
            trans_b=bool(node.attributes.get_int("transB", 0)),
        )
    layer.in_main_graph = in_main
    reason = _skip_reason(node, weight, tensor)
    return (None, reason) if reason else (layer, None)


def find_layers(
    model: ir.Model, ops: frozenset[str]
) -> Iterator[tuple[ir.Node, Layer | None, str | None]]:
    """Every Conv/MatMul/Gemm of ``ops`` in the main graph and subgraphs, with a layer or why not.

    Functions are not searched (their weights come as Constant nodes shared by every
    call); the caller counts them separately.
    """
    main = model.graph
    for node in ir.traversal.RecursiveGraphIterator(main):
        if node.domain not in STANDARD_DOMAINS or node.op_type not in ops:
            continue
        layer, reason = _layer_of(node, node.graph is main)
        yield node, layer, reason


def _conv_pads(node: ir.Node, spatial: tuple[int, ...], kernel: tuple[int, ...]) -> list[int]:
    """Begin pads then end pads, resolving auto_pad the way ONNX defines it."""
    rank = len(kernel)
    strides = _ints(node, "strides", [1] * rank)
    dilations = _ints(node, "dilations", [1] * rank)
    auto_pad = node.attributes.get("auto_pad")
    mode = auto_pad.as_string() if auto_pad is not None else "NOTSET"
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=False):
            out = -(-size // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            small = total // 2
            begin = small if mode == "SAME_UPPER" else total - small
            begins.append(begin)
            ends.append(total - begin)
        return begins + ends
    if mode == "VALID":
        return [0] * (2 * rank)
    return _ints(node, "pads", [0] * (2 * rank))


def _ints(node: ir.Node, name: str, default: list[int]) -> list[int]:
    attr = node.attributes.get(name)
    return list(attr.as_ints()) if attr is not None else default


def im2col(layer: Layer, x: np.ndarray) -> Iterator[list[np.ndarray]]:
    """Chunks of the unfolded Conv input: per chunk, one [rows, K] array per group.

    Column order matches ``Layer.to_matrix`` (kernel position, then input channel).
    """
    kernel = layer.kernel
    rank = len(kernel)
    node = layer.node
    strides = _ints(node, "strides", [1] * rank)
    dilations = _ints(node, "dilations", [1] * rank)
    pads = _conv_pads(node, tuple(x.shape[2:]), kernel)
    pad_width = [(0, 0), (0, 0)] + [(pads[i], pads[i + rank]) for i in range(rank)]
    xp = np.pad(x, pad_width)
    window = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=False)]
    spatial_axes = tuple(range(2, 2 + rank))
    views = np.lib.stride_tricks.sliding_window_view(xp, window, axis=spatial_axes)
    index = (slice(None), slice(None))
    index += tuple(slice(None, None, s) for s in strides)
    index += tuple(slice(None, None, d) for d in dilations)
    views = views[index]  # [N, C, *out, *kernel]
    n, c = views.shape[:2]
    out = views.shape[2 : 2 + rank]
    c_group = layer.shape[1]
    per_row = n * math.prod(out[1:]) * c * math.prod(kernel)
    step = max(1, _IM2COL_CHUNK_ELEMENTS // max(per_row, 1)) if out else 1
    first = out[0] if out else 1
    for start in range(0, first, step):
        chunk = views[:, :, start : start + step]
        # [N, C, *out, *kernel] -> [N, *out, *kernel, C]
        moved = np.moveaxis(chunk, 1, -1)
        parts = []
        for g in range(layer.groups):
            part = moved[..., g * c_group : (g + 1) * c_group]
            parts.append(np.ascontiguousarray(part, dtype=np.float32).reshape(-1, layer.k))
        yield parts


class ActivationStats:
    """Streaming statistics of a layer's input columns: energies (diag of X^T X) or Hessians.

    With ``cross``, also X^T X_ref, where X_ref is the same input computed by a reference
    model (the dense original): what reconstructing toward the reference's output needs.

    Rows are buffered until there are about as many as columns, so that each product
    is a well-shaped matrix multiplication and the float64 sum is updated rarely.
    """

    def __init__(self, layer: Layer, hessian: bool, cross: bool = False) -> None:
        self.layer = layer
        self.hessian = hessian or cross
        self.cross = cross
        k = layer.k
        shape = (k, k) if self.hessian else (k,)
        self._sums = [np.zeros(shape, dtype=np.float64) for _ in range(layer.groups)]
        self._cross = [
            np.zeros((k, k), dtype=np.float64) for _ in range(layer.groups if cross else 0)
        ]
        self._pending: list[list[np.ndarray]] = [[] for _ in range(layer.groups)]
        self._pending_ref: list[list[np.ndarray]] = [[] for _ in range(layer.groups)]
        self._pending_rows = 0
        self._flush_rows = max(1024, k)
        self.rows = 0

    @staticmethod
    def nbytes(layer: Layer, hessian: bool, cross: bool = False) -> int:
        """Memory the statistics of a layer take."""
        per_group = layer.k * layer.k * (2 if cross else 1) if hessian or cross else layer.k
        return layer.groups * per_group * 8

    def _flush(self) -> None:
        for group, pending in enumerate(self._pending):
            if not pending:
                continue
            # The product in float32 (BLAS's fast path), summed in float64.
            cols = np.concatenate(pending) if len(pending) > 1 else pending[0]
            if self.hessian:
                self._sums[group] += cols.T @ cols
            else:
                self._sums[group] += np.einsum("ij,ij->j", cols, cols, dtype=np.float64)
            if self.cross:
                ref = self._pending_ref[group]
                self._cross[group] += cols.T @ (np.concatenate(ref) if len(ref) > 1 else ref[0])
                ref.clear()
            pending.clear()
        self._pending_rows = 0

    def _add(self, parts: list[np.ndarray], ref_parts: list[np.ndarray] | None = None) -> None:
        for group, cols in enumerate(parts):
            self._pending[group].append(np.asarray(cols, dtype=np.float32))
            if self.cross:
                assert ref_parts is not None
                self._pending_ref[group].append(np.asarray(ref_parts[group], dtype=np.float32))
        self._pending_rows += len(parts[0])
        self.rows += len(parts[0])
        if self._pending_rows >= self._flush_rows:
            self._flush()

    def _columns(self, x: np.ndarray) -> Iterator[list[np.ndarray]]:
        """The layer's input as chunks of [rows, K] per group."""
        layer = self.layer
        if layer.op == "Conv":
            yield from im2col(layer, np.asarray(x))
            return
        x = np.asarray(x, dtype=np.float32)
        if layer.op == "Gemm" and layer.trans_a:
            x = x.T
        yield [x.reshape(-1, layer.k)]

    def update(self, x: np.ndarray, reference: np.ndarray | None = None) -> None:
        """Fold in one batch of the layer's input.

        Args:
            x: the input as the model being sparsified computes it.
            reference: the same input computed by the reference model (cross statistics).

        Raises:
            ValueError: cross statistics without a reference of the same shape.
        """
        if not self.cross:
            for parts in self._columns(x):
                self._add(parts)
            return
        if reference is None or np.shape(reference) != np.shape(x):
            raise ValueError("cross statistics need the reference input, of the same shape")
        for parts, ref_parts in zip(self._columns(x), self._columns(reference), strict=True):
            self._add(parts, ref_parts)

    @property
    def sums(self) -> list[np.ndarray]:
        """Per group: sum of x x^T over rows (Hessian) or of x^2 (energies)."""
        self._flush()
        return self._sums

    @property
    def cross_sums(self) -> list[np.ndarray]:
        """Per group: sum of x x_ref^T over rows (empty without cross statistics)."""
        self._flush()
        return self._cross

    def energy(self, group: int = 0) -> np.ndarray:
        """Sum of squares of each input column (||X_j||^2)."""
        s = self.sums[group]
        return np.diag(s).copy() if self.hessian else s

"""Writing a clustered weight: DequantizeLinear grids or a Gather codebook."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx_ir as ir

from nnopt_graph.core.names import NameScope
from nnopt_graph.passes.sharing.cluster.grids import (
    kmeans_1d,
    uniform_grid,
)
from nnopt_graph.passes.sharing.cluster.layout import (
    _Layout,
)

logger = logging.getLogger(__name__)


class _Emitter:
    """Adds new initializers and decode nodes for one weight to its graph."""

    def __init__(self, graph: ir.Graph, base: str, names: NameScope) -> None:
        self.graph = graph
        self.base = base
        self.names = names
        self.nodes: list[ir.Node] = []

    def fresh(self, suffix: str) -> str:
        return self.names(f"{self.base}_{suffix}")

    def const(self, suffix: str, tensor: ir.Tensor) -> ir.Value:
        name = self.fresh(suffix)
        tensor.name = name
        value = ir.Value(
            name=name,
            type=ir.TensorType(tensor.dtype),
            shape=ir.Shape(tensor.shape),
            const_value=tensor,
        )
        self.graph.initializers.add(value)
        return value

    def node(
        self, op: str, inputs: list[ir.Value], suffix: str, attributes: list[ir.Attr] | None = None
    ) -> ir.Value:
        output = ir.Value(name=self.fresh(suffix))
        node = ir.Node(
            "", op, inputs, attributes or [], outputs=[output], name=self.fresh(f"{suffix}_node")
        )
        self.nodes.append(node)
        return output


@dataclasses.dataclass
class _Encoded:
    """A weight's encoding, computed before anything changes in the graph."""

    encoding: str
    storage: str
    decoded: np.ndarray
    tensors: dict[str, ir.Tensor]
    build: Callable[[_Emitter, dict[str, ir.Value]], ir.Value]
    memory_after: int
    notes: list[str]
    iterations: int | None = None

    @property
    def disk_after(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


def _int_tensor(values: np.ndarray, dtype: ir.DataType) -> ir.Tensor:
    if dtype == ir.DataType.INT4:
        return ir.Tensor(values.astype(np.int8), dtype=dtype)
    return ir.Tensor(values.astype(dtype.numpy()))


def _scalar(value: Any, dtype: type) -> ir.Tensor:
    return ir.Tensor(np.asarray(value, dtype=dtype))


def _int64s(values: list[int]) -> ir.Tensor:
    return ir.Tensor(np.asarray(values, dtype=np.int64))


def _finish(emit: _Emitter, value: ir.Value, dtype: ir.DataType) -> ir.Value:
    """Cast a float32 decode to the weight's dtype where it differs."""
    if dtype == ir.DataType.FLOAT:
        return value
    return emit.node("Cast", [value], "cast", [ir.AttrInt64("to", int(dtype))])


def _encode_dequantize(
    array: np.ndarray,
    dtype: ir.DataType,
    bits: int,
    layout: _Layout,
    storage: ir.DataType,
    emulate: bool,
) -> _Encoded:
    """A uniform grid stored as integers with scale and zero point, decoded by DequantizeLinear.

    Per-channel scales at opsets below 13 (``emulate``): a per-tensor DequantizeLinear with
    scale 1 gives the integers as floats, then Sub and Mul apply per-channel zero points and
    scales; ONNX Runtime does not fold DequantizeLinear, so the integers stay in memory.
    """
    shape = array.shape
    rows = layout.rows(array)
    scale, zero, levels = uniform_grid(rows, bits)
    offset = 1 << (bits - 1)  # signed storage: levels 0..2^N-1 become -2^(N-1)..2^(N-1)-1
    stored = layout.unrows(levels - offset, shape)
    stored_zero = zero - offset
    decoded_rows = (levels - zero[:, None]).astype(np.float32) * scale[:, None]
    decoded = layout.unrows(decoded_rows, shape).astype(dtype.numpy())
    storage_name = "int4" if storage == ir.DataType.INT4 else "int8"
    tensors = {"q": _int_tensor(stored, storage)}
    if emulate:
        bshape = layout.broadcast_shape(shape)
        tensors["one"] = _scalar(1.0, np.float32)
        tensors["zero"] = _int_tensor(np.asarray(0), storage)
        tensors["zero_point"] = ir.Tensor(stored_zero.astype(np.float32).reshape(bshape))
        tensors["scale"] = ir.Tensor(scale.astype(np.float32).reshape(bshape))
    else:
        tensors["scale"] = ir.Tensor(layout.per_group(scale.astype(np.float32), shape))
        tensors["zero_point"] = _int_tensor(layout.per_group(stored_zero, shape), storage)

    def build(emit: _Emitter, v: dict[str, ir.Value]) -> ir.Value:
        if emulate:
            raw = emit.node("DequantizeLinear", [v["q"], v["one"], v["zero"]], "int")
            centred = emit.node("Sub", [raw, v["zero_point"]], "centred")
            return _finish(emit, emit.node("Mul", [centred, v["scale"]], "dequant"), dtype)
        attributes: list[ir.Attr] = []
        if layout.granularity != "tensor":
            attributes.append(ir.AttrInt64("axis", int(layout.axis or 0)))
        if layout.granularity == "block":
            attributes.append(ir.AttrInt64("block_size", layout.block_size))
        out = emit.node(
            "DequantizeLinear", [v["q"], v["scale"], v["zero_point"]], "dequant", attributes
        )
        return _finish(emit, out, dtype)

    memory = sum(t.nbytes for t in tensors.values())
    notes = ["per-channel via DequantizeLinear+Sub+Mul (opset < 13)"] if emulate else []
    return _Encoded("dequantize", storage_name, decoded, tensors, build, memory, notes)


def _pack_nibbles(indices: np.ndarray) -> np.ndarray:
    """Two 4-bit indices per byte: element i in the low nibble, element i + half in the high."""
    flat = indices.reshape(-1).astype(np.uint8)
    half = -(-flat.size // 2)
    padded = np.zeros(2 * half, np.uint8)
    padded[: flat.size] = flat
    return padded[:half] | (padded[half:] << 4)


def _fit_codebook(
    values: np.ndarray, bits: int, method: str, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, int | None]:
    """One codebook for a flat array: (codebook [k] float64, index of each value, iterations).

    With ``weights`` the values are already normalised per channel: k-means weighs them,
    and the uniform grid spans their whole range.
    """
    row = values.reshape(1, -1)
    if method == "kmeans":
        k = min(1 << bits, row.shape[1])
        w = None if weights is None else weights.reshape(1, -1)
        centres, assignment, iterations = kmeans_1d(row, k, w)
        return centres[0], assignment[0], iterations
    scale, zero, levels = uniform_grid(
        row, bits, np.float64, search=weights is None, keep_sums=weights is None
    )
    codebook = (np.arange(1 << bits) - zero[0]) * float(scale[0])
    return codebook, levels[0], None


def _encode_codebook(
    array: np.ndarray, dtype: ir.DataType, bits: int, method: str, layout: _Layout
) -> _Encoded:
    """A codebook of 2^N values and uint8 (or packed 4-bit) indices, decoded by Gather.

    Per tensor: one codebook fitted to the values (Deep Compression's weight sharing).
    Per channel: a codebook of 2^N values per channel would cost more than the indices
    save when channels are short, so each channel is mapped onto [0, 1] by its own
    range, one codebook is fitted to all mapped values (k-means weighted by each
    channel's squared range, so it minimises the error in the weights' own units), and
    each channel's scale and offset are then refitted by least squares; the decode is
    Gather, Mul and Add. A channel still holds at most 2^N distinct values.
    """
    shape = array.shape
    np_dtype = dtype.numpy()
    affine = None
    if layout.granularity == "channel":
        rows = layout.rows(array).astype(np.float64)
        low = rows.min(axis=1)
        span = rows.max(axis=1) - low
        span[span == 0] = 1.0
        mapped = (rows - low[:, None]) / span[:, None]
        weights = np.broadcast_to((span * span)[:, None], rows.shape)
        centres, assignment, iterations = _fit_codebook(mapped, bits, method, weights)
        codebook = centres.astype(np_dtype)
        chosen = codebook.astype(np.float64)[assignment].reshape(rows.shape)
        centred = chosen - chosen.mean(axis=1, keepdims=True)
        spread = np.sum(centred * centred, axis=1)
        slope = np.sum(centred * rows, axis=1) / np.where(spread > 0, spread, 1.0)
        slope = np.where(spread > 0, slope, span)
        intercept = rows.mean(axis=1) - slope * chosen.mean(axis=1)
        bshape = layout.broadcast_shape(shape)
        affine = (
            slope.astype(np_dtype).reshape(bshape),
            intercept.astype(np_dtype).reshape(bshape),
        )
        indices = layout.unrows(assignment.reshape(rows.shape), shape)
        decoded = codebook[indices] * affine[0] + affine[1]
    else:
        centres, assignment, iterations = _fit_codebook(array.reshape(-1), bits, method)
        codebook = centres.astype(np_dtype)
        indices = assignment.reshape(shape)
        decoded = codebook[indices]
    packed = bits <= 4
    tensors: dict[str, ir.Tensor] = {"codebook": ir.Tensor(codebook)}
    if packed:
        tensors["indices"] = ir.Tensor(_pack_nibbles(indices))
        tensors["sixteen"] = _scalar(16, np.int32)
        if indices.size % 2:
            tensors["starts"] = _int64s([0])
            tensors["ends"] = _int64s([indices.size])
        tensors["shape"] = _int64s(list(shape))
    else:
        tensors["indices"] = ir.Tensor(indices.astype(np.uint8))
    if affine is not None:
        tensors["scale"] = ir.Tensor(affine[0])
        tensors["offset"] = ir.Tensor(affine[1])

    def build(emit: _Emitter, v: dict[str, ir.Value]) -> ir.Value:
        int32 = ir.AttrInt64("to", int(ir.DataType.INT32))
        index = emit.node("Cast", [v["indices"]], "index", [int32])
        if packed:
            high = emit.node("Div", [index, v["sixteen"]], "high")
            low = emit.node("Sub", [index, emit.node("Mul", [high, v["sixteen"]], "high16")], "low")
            index = emit.node("Concat", [low, high], "nibbles", [ir.AttrInt64("axis", 0)])
            if "starts" in v:
                index = emit.node("Slice", [index, v["starts"], v["ends"]], "trim")
            index = emit.node("Reshape", [index, v["shape"]], "unpacked")
        out = emit.node("Gather", [v["codebook"], index], "shared", [ir.AttrInt64("axis", 0)])
        if "scale" in v:
            out = emit.node("Mul", [out, v["scale"]], "scaled")
            out = emit.node("Add", [out, v["offset"]], "shifted")
        return out

    memory = array.size * array.itemsize
    storage = "packed 4-bit indices" if packed else "uint8 indices"
    return _Encoded("codebook", storage, decoded, tensors, build, memory, [], iterations)

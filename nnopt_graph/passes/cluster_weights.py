"""Lossy weight sharing: large float weights clustered into 2^N values (uniform grid or k-means)."""

from __future__ import annotations

__all__ = [
    "ClusterWeightsOptions",
    "ClusterWeightsPass",
    "kmeans_1d",
    "uniform_grid",
    "upgrade_blockers",
]

import collections
import dataclasses
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import onnx
import onnx.defs
import onnx_ir as ir

from nnopt_graph.errors import BadInputError
from nnopt_graph.pipeline.base import Pass, PassContext, PassResult, register_pass

logger = logging.getLogger(__name__)

_ONNX_DOMAINS = ("", "ai.onnx")
# Float dtypes the pass clusters; both encodings end in the weight's own dtype.
_FLOAT_DTYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE})
_INTEGER_DTYPES = frozenset(
    {
        ir.DataType.INT4,
        ir.DataType.UINT4,
        ir.DataType.INT8,
        ir.DataType.UINT8,
        ir.DataType.INT16,
        ir.DataType.UINT16,
        ir.DataType.INT32,
        ir.DataType.UINT32,
        ir.DataType.INT64,
        ir.DataType.UINT64,
    }
)
# Opsets: DequantizeLinear appears at 10 (per tensor), per axis at 13, INT4 and block_size at 21.
_MIN_OPSET = 10
_OPSET_PER_AXIS = 13
_OPSET_INT4 = 21
# The IR version each raised opset needs (INT4 tensors need IR 10).
_IR_FOR_OPSET = {_OPSET_PER_AXIS: 7, _OPSET_INT4: 10}
# k-means: Lloyd iterations stop when the partition no longer changes, when no centroid
# moves by more than this fraction of the row's range, or after this many iterations.
_KMEANS_TOL = 1e-7
_KMEANS_MAX_ITER = 1000
# Range factors the uniform grid tries per group, keeping the least squared error.
_CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6)
# Rows with more elements than this fit their centroids on an evenly strided sample.
_KMEANS_MAX_FIT = 1 << 22
_ASSIGN_CHUNK = 1 << 22
# Integer dtypes of codebook indices (and of the packed bytes).
_BYTE_DTYPES = frozenset({ir.DataType.UINT8, ir.DataType.INT8})
# Ops that unpack or offset codebook indices (the chain this pass writes).
_INDEX_OPS = frozenset({"Cast", "Div", "Mul", "Sub", "Add", "Concat", "Slice", "Reshape", "Mod"})
_STATS = (
    "weights-clustered",
    "bytes-saved-disk",
    "bytes-saved-memory",
    "opset-raised",
    "int4-stored-as-int8",
    "block-as-channel",
    "channel-axis-unknown",
    "channel-emulated",
    "skipped-below-min-elements",
    "skipped-vectors",
    "skipped-integer-weights",
    "skipped-already-clustered",
    "skipped-graph-input-initializers",
    "skipped-graph-output-weights",
    "skipped-unused-weights",
    "skipped-unsupported-dtype",
    "skipped-no-saving",
    "skipped-non-finite-weights",
    "skipped-function-constants",
)

# Ops whose meaning changes at an opset although their signature does not.
_SEMANTIC_CHANGES = {
    "Softmax": 13,
    "LogSoftmax": 13,
    "Hardmax": 13,
    "GridSample": 20,
    "DFT": 20,
    "GroupNormalization": 21,
}


# ---------------------------------------------------------------- clustering (numpy)


def _keep_sums(position: np.ndarray, levels: np.ndarray, top: int) -> None:
    """Re-round the fewest levels so each row's sum stays within half a step (in place).

    ``position`` is each value in units of the step (what was rounded). A row whose
    rounding errors add up to e steps gets round(|e|) of its most marginal roundings
    (those that went furthest in the direction of e) moved one level back.
    """
    error = levels - position
    excess = error.sum(axis=1)
    count = np.rint(np.abs(excess)).astype(np.int64)
    if not count.any():
        return
    up = excess[:, None] > 0
    movable = np.where(up, (error > 0) & (levels > 0), (error < 0) & (levels < top))
    key = np.where(movable, np.where(up, -error, error), np.inf)
    order = np.argsort(key, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(levels.shape[1])[None, :], axis=1)
    flip = (rank < count[:, None]) & movable
    levels -= np.where(up, 1, -1) * flip


def uniform_grid(
    rows: np.ndarray,
    bits: int,
    scale_dtype: type = np.float32,
    search: bool = True,
    keep_sums: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A uniform grid of 2^bits levels per row, including zero.

    The grid spans [min(row, 0), max(row, 0)] shrunk by the factor in ``_CLIP_RATIOS``
    that gives the row the least squared error (``search``); values beyond it clip to
    the end levels. With ``keep_sums``, rounding is then adjusted so that each row's
    decoded values add up to its original sum within half a step: rounding errors no
    longer shift a row's mean (a data-free bias correction; k-means and the per-channel
    codebook keep the sums by construction).

    Args:
        rows: values, one row per group (tensor, channel or block), shape [R, M].
        bits: grid levels are 2**bits.
        scale_dtype: dtype the scales are stored in; levels are computed with it.
        search: choose the range per row by least squared error.
        keep_sums: keep each row's sum within half a step.

    Returns:
        (scale [R] in ``scale_dtype``, zero point [R] in 0..2^bits-1, levels [R, M] in
        0..2^bits-1, both int64): a value decodes to ``(level - zero_point) * scale``.
    """
    top = (1 << bits) - 1
    lo = np.minimum(rows.min(axis=1), 0).astype(np.float64)
    hi = np.maximum(rows.max(axis=1), 0).astype(np.float64)
    best_scale: np.ndarray = np.ones(rows.shape[0], scale_dtype)
    best_zero = np.zeros(rows.shape[0], np.int64)
    levels = np.empty(rows.shape, np.int64)
    step = max(1, _ASSIGN_CHUNK // max(rows.shape[1], 1))
    for start in range(0, rows.shape[0], step):
        part = slice(start, start + step)
        values = rows[part].astype(np.float64)
        best_error = np.full(values.shape[0], np.inf)
        for ratio in _CLIP_RATIOS if search else (1.0,):
            scale = ((hi[part] - lo[part]) * ratio / top).astype(scale_dtype)
            scale[~(scale > 0)] = 1  # an all-zero group, or a scale that underflowed
            wide = scale.astype(np.float64)
            zero = np.clip(np.rint(-lo[part] * ratio / wide), 0, top).astype(np.int64)
            grid = np.clip(np.rint(values / wide[:, None]) + zero[:, None], 0, top)
            error = np.sum(((grid - zero[:, None]) * wide[:, None] - values) ** 2, axis=1)
            better = error < best_error
            best_error[better] = error[better]
            best_scale[part][better] = scale[better]
            best_zero[part][better] = zero[better]
            levels[part][better] = grid[better]
        if keep_sums:
            wide = best_scale[part].astype(np.float64)
            position = values / wide[:, None] + best_zero[part, None]
            _keep_sums(position, levels[part], top)
    return best_scale, best_zero, levels


def _reseed_empty(
    centroids: np.ndarray,
    total: np.ndarray,
    sums: np.ndarray,
    safe: np.ndarray,
    square: np.ndarray,
    bounds: np.ndarray,
    ordered: np.ndarray,
) -> bool:
    """Move empty clusters into the clusters with the largest squared error (in place).

    Each empty centroid goes halfway between the mean and the largest value of one of
    the worst clusters, which the next assignment then splits; clusters without error
    (a single repeated value) are never split. Returns whether any centroid moved.
    """
    empty = total <= 0
    moved = False
    for i in np.flatnonzero(empty.any(axis=1)):
        error = np.diff(square[i, bounds[i]]) - sums[i] ** 2 / safe[i]
        error[~(total[i] > 0)] = 0.0
        worst = [j for j in np.argsort(-error, kind="stable") if error[j] > 1e-12]
        slots = np.flatnonzero(empty[i])[: len(worst)]
        for slot, j in zip(slots, worst, strict=False):
            centroids[i, slot] = (centroids[i, j] + ordered[i, bounds[i, j + 1] - 1]) / 2
            moved = True
        centroids[i] = np.sort(centroids[i])
    return moved


def kmeans_1d(
    rows: np.ndarray,
    k: int,
    weights: np.ndarray | None = None,
    max_iter: int = _KMEANS_MAX_ITER,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Weighted 1-D k-means (Lloyd) of each row, centroids initialised evenly over [min, max].

    Values are sorted once per row; with sorted centroids, each cluster is a contiguous
    run of the sorted values, found by binary search for the midpoints between
    centroids, and its weighted mean comes from prefix sums: an iteration costs
    O(R k log M). All rows are handled together: row ``i`` is normalised to [0, 1] and
    shifted to [2i, 2i + 1], so one search over the concatenation serves every row.
    Rows of more than ``_KMEANS_MAX_FIT`` elements in all are fitted on an evenly
    strided sample; every value is then assigned to its nearest centroid.

    Args:
        rows: values, one row per group, shape [R, M].
        k: clusters per row (at most M).
        weights: non-negative weight of each value (shape [R, M]); None weighs all alike.
        max_iter: Lloyd iterations at most.

    Returns:
        (codebook [R, k] float64; assignment [R, M] int64 of each value to its nearest
        centroid before the last update of the codebook from the values; iterations run).
    """
    r, m = rows.shape
    lo = rows.min(axis=1).astype(np.float64)
    span = rows.max(axis=1).astype(np.float64) - lo
    span[span == 0] = 1.0
    stride = max(1, math.ceil(r * m / _KMEANS_MAX_FIT))
    sample = (rows[:, ::stride].astype(np.float64) - lo[:, None]) / span[:, None]
    n = sample.shape[1]
    order = np.argsort(sample, axis=1, kind="stable")
    ordered = np.take_along_axis(sample, order, 1)
    weight = (
        np.ones_like(ordered)
        if weights is None
        else np.take_along_axis(weights[:, ::stride].astype(np.float64), order, 1)
    )
    mass = np.zeros((r, n + 1))
    np.cumsum(weight, axis=1, out=mass[:, 1:])
    moment = np.zeros((r, n + 1))
    np.cumsum(weight * ordered, axis=1, out=moment[:, 1:])
    square = np.zeros((r, n + 1))
    np.cumsum(weight * ordered * ordered, axis=1, out=square[:, 1:])
    shift = 2.0 * np.arange(r)
    flat = (ordered + shift[:, None]).ravel()
    first = (np.arange(r) * n)[:, None]
    centroids = np.tile(np.linspace(0.0, 1.0, k), (r, 1))
    previous = None
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        mids = (centroids[:, 1:] + centroids[:, :-1]) / 2
        cuts = np.searchsorted(flat, (mids + shift[:, None]).ravel()).reshape(r, k - 1) - first
        bounds = np.concatenate(
            [np.zeros((r, 1), np.int64), cuts, np.full((r, 1), n, np.int64)], axis=1
        )
        if previous is not None and np.array_equal(bounds, previous):
            break
        total = np.diff(np.take_along_axis(mass, bounds, 1), axis=1)
        sums = np.diff(np.take_along_axis(moment, bounds, 1), axis=1)
        safe = np.where(total > 0, total, 1.0)
        updated = np.where(total > 0, sums / safe, centroids)
        reseeded = _reseed_empty(updated, total, sums, safe, square, bounds, ordered)
        moved = float(np.max(np.abs(updated - centroids))) if updated.size else 0.0
        centroids, previous = updated, bounds
        if moved <= _KMEANS_TOL and not reseeded:
            break
    centroids = np.sort(centroids, axis=1)
    codebook = centroids * span[:, None] + lo[:, None]
    assignment = np.empty((r, m), np.int64)
    for i in range(r):
        mids = (codebook[i, 1:] + codebook[i, :-1]) / 2
        for start in range(0, m, _ASSIGN_CHUNK):
            part = rows[i, start : start + _ASSIGN_CHUNK].astype(np.float64)
            assignment[i, start : start + _ASSIGN_CHUNK] = np.searchsorted(mids, part)
    # A last update from the values themselves (not their normalised copies), so a
    # cluster of one repeated value (zero, say) holds exactly that value.
    slots = (assignment + (np.arange(r) * k)[:, None]).ravel()
    w = None if weights is None else np.broadcast_to(weights, rows.shape).ravel()
    count = np.bincount(slots, weights=w, minlength=r * k).reshape(r, k)
    w_values = rows.astype(np.float64) if w is None else rows * weights
    total = np.bincount(slots, weights=np.ravel(w_values), minlength=r * k).reshape(r, k)
    codebook = np.where(count > 0, total / np.where(count > 0, count, 1.0), codebook)
    return codebook, assignment, iterations


def _sqnr_db(original: np.ndarray, decoded: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when exact)."""
    a = original.astype(np.float64).ravel()
    noise = float(np.sum((a - decoded.astype(np.float64).ravel()) ** 2))
    signal = float(np.sum(a * a))
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10 * math.log10(signal / noise)


# ---------------------------------------------------------------- groups: tensor, channel, block


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


def _attr_int(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    if isinstance(attr, ir.Attr) and attr.type == ir.AttributeType.INT:
        return int(attr.as_int())
    return default


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
            return (0, 1) if _attr_int(node, "transB", 0) else (1, 0)
        if index == 0:
            return (1, 0) if _attr_int(node, "transA", 0) else (0, 1)
    if op == "MatMul":
        if index == 1:
            return rank - 1, rank - 2
        if index == 0:
            return rank - 2, rank - 1
    if op in ("LSTM", "GRU", "RNN") and index in (1, 2) and rank == 3:
        return 1, 2
    if op == "Gather" and index == 0 and rank == 2:
        axis = _attr_int(node, "axis", 0) % rank
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


# ---------------------------------------------------------------- opset upgrade check


def _schema(op: str, version: int) -> onnx.defs.OpSchema | None:
    try:
        return onnx.defs.get_schema(op, version, "")
    except onnx.defs.SchemaError:
        return None


def _formal(params: Sequence[Any], index: int) -> Any:
    """The formal parameter at ``index`` (the last one when it is variadic)."""
    if index < len(params):
        return params[index]
    if params and params[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
        return params[-1]
    return None


def _step_problem(node: ir.Node, old: onnx.defs.OpSchema, new: onnx.defs.OpSchema) -> str | None:
    """Why ``node`` does not mean the same under ``new`` as under ``old``, or None."""
    op, version = node.op_type, new.since_version
    if new.deprecated:
        return f"{op} is deprecated at opset {version}"
    if op in _SEMANTIC_CHANGES and old.since_version < _SEMANTIC_CHANGES[op] <= version:
        return f"{op} changes meaning at opset {_SEMANTIC_CHANGES[op]}"
    n_in, n_out = len(node.inputs), len(node.outputs)
    if not new.min_input <= n_in <= new.max_input or not new.min_output <= n_out <= new.max_output:
        return f"{op} with {n_in} inputs and {n_out} outputs is invalid at opset {version}"
    if op == "BatchNormalization" and version == 14 and n_out != 1:
        return "BatchNormalization with training outputs changes at opset 14"
    if op == "Split" and version == 18 and n_in < 2:
        return "Split without a 'split' input needs 'num_outputs' at opset 18"
    if op == "Resize" and version == 13:
        mode = node.attributes.get("coordinate_transformation_mode")
        if isinstance(mode, ir.Attr) and mode.as_string() == "tf_half_pixel_for_nn":
            return "Resize mode tf_half_pixel_for_nn is gone at opset 13"
    for index in range(n_in):
        before, after = _formal(old.inputs, index), _formal(new.inputs, index)
        if before is None or after is None:
            return f"{op} input {index} has no formal parameter at opset {version}"
        renamed = before.name != after.name and (op, version) != ("BatchNormalization", 14)
        if renamed or not set(before.types) <= set(after.types):
            return f"{op} input {index} changes at opset {version}"
    for name, attr in node.attributes.items():
        formal = new.attributes.get(name)
        if (
            formal is None
            or not isinstance(attr, ir.Attr)
            or getattr(formal.type, "name", None) != attr.type.name  # INT, INTS, TENSOR, ...
        ):
            return f"{op} attribute '{name}' changes at opset {version}"
    for name, formal in old.attributes.items():
        if name in node.attributes:
            continue
        later = new.attributes.get(name)
        if later is None:
            return f"{op} attribute '{name}' is gone at opset {version}"
        if formal.default_value.SerializeToString() != later.default_value.SerializeToString():
            return f"{op} default of '{name}' changes at opset {version}"
    for name, formal in new.attributes.items():
        if formal.required and name not in node.attributes:
            return f"{op} needs attribute '{name}' at opset {version}"
    return None


def _node_upgrade_problem(node: ir.Node, old: int, new: int) -> str | None:
    schema = _schema(node.op_type, old)
    if schema is None:
        return f"{node.op_type} is unknown at opset {old}"
    for version in range(old + 1, new + 1):
        later = _schema(node.op_type, version)
        if later is None:
            return f"{node.op_type} is unknown at opset {version}"
        if later.since_version != schema.since_version:
            problem = _step_problem(node, schema, later)
            if problem:
                return problem
            schema = later
    return None


def _default_opset(model: ir.Model) -> int:
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))


def upgrade_blockers(model: ir.Model, version: int) -> list[str]:
    """Why raising the model's default-domain opset to ``version`` could change it ([] if safe).

    Safe means: every default-domain node of the main graph and its subgraphs keeps its
    signature (inputs, outputs, attribute names, types and defaults, accepted types) at
    each schema version up to ``version``, and no op changes meaning there with the same
    signature (Softmax at 13, GroupNormalization at 21, ...). Models with local functions
    that import the default domain are not raised (their imports would disagree).
    """
    old = _default_opset(model)
    if version <= old:
        return []
    problems: list[str] = []
    for function in model.functions.values():
        if any(d in function.opset_imports for d in _ONNX_DOMAINS):
            problems.append(f"function '{function.name}' imports the default domain")
    checked: set[tuple[Any, ...]] = set()
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.domain not in _ONNX_DOMAINS:
            continue
        # Nodes that look alike to the check get the same answer: check one of each.
        mode = node.attributes.get("coordinate_transformation_mode")
        key = (
            node.op_type,
            len(node.inputs),
            len(node.outputs),
            tuple(sorted((k, int(a.type)) for k, a in node.attributes.items())),
            mode.value if isinstance(mode, ir.Attr) else None,
        )
        if key in checked:
            continue
        checked.add(key)
        problem = _node_upgrade_problem(node, old, version)
        if problem and problem not in problems:
            problems.append(problem)
    return problems


def _raise_opset(model: ir.Model, version: int) -> None:
    key = "ai.onnx" if "" not in model.opset_imports and "ai.onnx" in model.opset_imports else ""
    model.opset_imports[key] = version
    model.ir_version = max(model.ir_version or 0, _IR_FOR_OPSET[version])


# ---------------------------------------------------------------- model walk


@dataclasses.dataclass
class _Weight:
    """A constant tensor read by the model: an initializer or a Constant node's value."""

    value: ir.Value
    graph: ir.Graph
    where: str
    node: ir.Node | None
    tensor: ir.TensorProtocol

    @property
    def name(self) -> str:
        return self.value.name or "<unnamed>"


def _dims(tensor: ir.TensorProtocol) -> tuple[int, ...]:
    return tuple(int(d) for d in tensor.shape.numpy())


def _constant_tensor(node: ir.Node) -> ir.TensorProtocol | None:
    if node.op_type != "Constant" or node.domain not in _ONNX_DOMAINS or len(node.attributes) != 1:
        return None
    attr = node.attributes.get("value")
    if not isinstance(attr, ir.Attr) or attr.is_ref() or attr.type != ir.AttributeType.TENSOR:
        return None
    return attr.as_tensor()


def _graphs(graph: ir.Graph, where: str) -> Iterator[tuple[ir.Graph, str]]:
    """The graph and its nested subgraphs, with a label for each."""
    yield graph, where
    for node in graph:
        for attr in node.attributes.values():
            if not isinstance(attr, ir.Attr):
                continue
            label = f"{node.name or node.op_type}/{attr.name}"
            if attr.type == ir.AttributeType.GRAPH:
                yield from _graphs(attr.as_graph(), label)
            elif attr.type == ir.AttributeType.GRAPHS:
                for i, sub in enumerate(attr.as_graphs()):
                    yield from _graphs(sub, f"{label}[{i}]")


def _collect(model: ir.Model) -> tuple[list[_Weight], set[int], set[str]]:
    """Every weight of the main graph and subgraphs, ids of graph outputs, names in use."""
    weights: list[_Weight] = []
    outputs: set[int] = set()
    names: set[str] = set()
    for graph, where in _graphs(model.graph, "main"):
        outputs.update(id(v) for v in graph.outputs)
        for value in [*graph.inputs, *graph.initializers.values()]:
            if value.name:
                names.add(value.name)
        for value in graph.initializers.values():
            if value.const_value is not None:
                weights.append(_Weight(value, graph, where, None, value.const_value))
        for node in graph:
            names.update(v.name for v in node.outputs if v.name)
            tensor = _constant_tensor(node)
            if tensor is not None:
                weights.append(_Weight(node.outputs[0], graph, where, node, tensor))
    return weights, outputs, names


def _is_codebook_gather(node: ir.Node) -> bool:
    """Gather(1-D constant codebook, indices computed from 8-bit constants), as written here."""
    if node.op_type != "Gather" or len(node.inputs) < 2:
        return False
    data, indices = node.inputs[0], node.inputs[1]
    if data is None or data.const_value is None or len(data.const_value.shape) != 1:
        return False
    if indices is None or indices.const_value is not None:
        return False
    roots = _index_roots(indices)
    return roots is not None and True in roots


def _index_roots(value: ir.Value, depth: int = 0) -> set[bool] | None:
    """The kinds of constants an index value is computed from, through index ops.

    Returns:
        A set holding True for 8-bit constants and False for small helper constants
        (shapes, divisors); None when anything else (a graph input, another op) feeds it.
    """
    tensor = value.const_value
    if tensor is not None:
        if tensor.dtype in _BYTE_DTYPES:
            return {True}
        return {False} if tensor.size <= 8 else None
    node = value.producer()
    if node is None or depth > 8 or node.op_type not in _INDEX_OPS:
        return None
    roots: set[bool] = set()
    for source in node.inputs:
        if source is None:
            continue
        found = _index_roots(source, depth + 1)
        if found is None:
            return None
        roots |= found
    return roots


def _feeds_codebook(value: ir.Value, depth: int = 0) -> bool:
    """Whether a value flows through index-unpacking ops into a codebook Gather's indices."""
    if depth > 8:
        return False
    for use in value.uses():
        node = use.node
        if use.idx == 1 and _is_codebook_gather(node):
            return True
        if node.op_type in _INDEX_OPS and any(
            _feeds_codebook(out, depth + 1) for out in node.outputs
        ):
            return True
    return False


def _decodes_weight(value: ir.Value | None, depth: int = 0) -> bool:
    """Whether a value is decoded from an encoded weight.

    That is a codebook Gather's or a DequantizeLinear's output, or one scaled or shifted
    per channel (Mul, Add, Sub).
    """
    node = value.producer() if value is not None else None
    if node is None or depth > 4:
        return False
    if node.op_type in ("Mul", "Add", "Sub"):
        return any(_decodes_weight(v, depth + 1) for v in node.inputs if v is not value)
    return node.op_type == "DequantizeLinear" or _is_codebook_gather(node)


def _already_clustered(value: ir.Value, integer: bool) -> bool:
    """A weight this pass (or a quantizer) wrote.

    That is: any input of DequantizeLinear or QuantizeLinear; an integer feeding a
    codebook Gather's indices; a codebook itself; a per-channel scale, offset or zero
    point applied (Mul, Add, Sub) to a decoded weight.
    """
    for use in value.uses():
        node = use.node
        if node.op_type in ("DequantizeLinear", "QuantizeLinear"):
            return True
        if integer:
            continue
        if use.idx == 0 and _is_codebook_gather(node):
            return True
        if node.op_type in ("Mul", "Add", "Sub") and any(
            _decodes_weight(v) for v in node.inputs if v is not value
        ):
            return True
    return integer and _feeds_codebook(value)


# ---------------------------------------------------------------- encodings


class _Emitter:
    """Adds new initializers and decode nodes for one weight to its graph."""

    def __init__(self, graph: ir.Graph, base: str, names: set[str]) -> None:
        self.graph = graph
        self.base = base
        self.names = names
        self.nodes: list[ir.Node] = []

    def fresh(self, suffix: str) -> str:
        name = f"{self.base}_{suffix}"
        i = 1
        while name in self.names:
            name = f"{self.base}_{suffix}_{i}"
            i += 1
        self.names.add(name)
        return name

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


# ---------------------------------------------------------------- the pass


@dataclasses.dataclass(frozen=True)
class ClusterWeightsOptions:
    """Options of cluster-weights.

    Attributes:
        bits: each group (tensor, channel or block) keeps at most 2**bits distinct values.
        method: kmeans (Lloyd, linear init) or uniform (an evenly spaced grid with zero).
        min_elements: float weights with fewer elements are left alone.
        granularity: one set of values per tensor, per output channel (per slice of
            axis 0 when the readers do not tell the channel axis), or per block of
            ``block_size`` along the reduction axis (dequantize encoding, opset 21).
        encoding: dequantize (integers + DequantizeLinear, kept as integers by ONNX
            Runtime), codebook (Gather from a codebook: smaller file, expanded at load),
            or auto: codebook for kmeans, dequantize for uniform.
        block_size: block length for granularity=block.
    """

    bits: int = dataclasses.field(default=8, metadata={"range": (1, 8, True, True)})
    method: str = dataclasses.field(default="kmeans", metadata={"choices": ("kmeans", "uniform")})
    min_elements: int = dataclasses.field(default=4096, metadata={"range": (1, None, True, True)})
    granularity: str = dataclasses.field(
        default="channel", metadata={"choices": ("tensor", "channel", "block")}
    )
    encoding: str = dataclasses.field(
        default="auto", metadata={"choices": ("auto", "dequantize", "codebook")}
    )
    block_size: int = dataclasses.field(default=32, metadata={"range": (2, None, True, True)})

    def problem(self) -> str | None:
        """Why these options cannot run together, or None."""
        if not 1 <= self.bits <= 8:
            return f"bits must be 1..8, not {self.bits}"
        if self.min_elements < 1:
            return f"min-elements must be >= 1, not {self.min_elements}"
        if self.granularity == "block" and self.block_size < 2:
            return f"block-size must be >= 2, not {self.block_size}"
        if self.method == "kmeans" and self.encoding == "dequantize":
            return "method=kmeans needs encoding=codebook (k-means centroids are no uniform grid)"
        if self.granularity == "block" and self.resolved_encoding == "codebook":
            return "granularity=block needs encoding=dequantize (and method=uniform)"
        return None

    @property
    def resolved_encoding(self) -> str:
        """The encoding after ``auto`` is resolved by the method."""
        if self.encoding != "auto":
            return self.encoding
        return "codebook" if self.method == "kmeans" else "dequantize"


@dataclasses.dataclass
class _Plan:
    weight: _Weight
    layout: _Layout
    notes: list[str]
    int4: bool = False
    emulate: bool = False
    changed: bool = False  # the opset settlement changed the plan after its first encoding
    fallbacks: list[str] = dataclasses.field(default_factory=list)  # stats counted if applied

    def needs_opset(self, encoding: str) -> int:
        if encoding != "dequantize":
            return _MIN_OPSET
        if self.int4 or self.layout.granularity == "block":
            return _OPSET_INT4
        if self.layout.granularity == "channel":
            return _OPSET_PER_AXIS
        return _MIN_OPSET


@register_pass
class ClusterWeightsPass(Pass):
    """Cluster large float weights into 2^N shared values (DequantizeLinear or codebook)."""

    name = "cluster-weights"
    lossy = True
    Options = ClusterWeightsOptions

    def requires(self, model: ir.Model) -> None:
        """Check the options (text options are checked here, when the pass is about to run).

        Raises:
            BadInputError: an option value is invalid, or two options do not go together.
        """
        problem = self.options.problem()
        if problem is not None:
            raise BadInputError(f"pass 'cluster-weights': {problem}")

    def back_off(self) -> Pass | None:
        """One more bit, up to 8; then nothing weaker is left."""
        if self.options.bits >= 8:
            return None
        return ClusterWeightsPass(dataclasses.replace(self.options, bits=self.options.bits + 1))

    def _skip(self, stats: collections.Counter[str], weight: _Weight, key: str, why: str) -> None:
        stats[key] += 1
        logger.debug("cluster-weights: left '%s' (%s) alone: %s", weight.name, weight.where, why)

    def _plan(
        self, weights: list[_Weight], outputs: set[int], stats: collections.Counter[str]
    ) -> list[_Plan]:
        """The weights to cluster and how, counting every skip."""
        o = self.options
        plans = []
        for weight in weights:
            tensor, value = weight.tensor, weight.value
            if tensor.dtype in _INTEGER_DTYPES:
                if tensor.size >= o.min_elements:
                    if _already_clustered(value, integer=True):
                        self._skip(stats, weight, "skipped-already-clustered", "encoded weight")
                    else:
                        self._skip(stats, weight, "skipped-integer-weights", "integer dtype")
                continue
            if not tensor.dtype.is_floating_point():
                continue
            if tensor.size < o.min_elements:
                stats["skipped-below-min-elements"] += 1
                continue
            if weight.node is None and value.is_graph_input():
                self._skip(stats, weight, "skipped-graph-input-initializers", "graph input")
                continue
            if id(value) in outputs:
                self._skip(stats, weight, "skipped-graph-output-weights", "graph output")
                continue
            if not value.uses():
                self._skip(stats, weight, "skipped-unused-weights", "no readers")
                continue
            if _already_clustered(value, integer=False):
                self._skip(stats, weight, "skipped-already-clustered", "scale or codebook")
                continue
            if len(tensor.shape) < 2:
                # Biases and norm scales: few bytes, and an error there shifts whole outputs
                # (rapidocr-rec's 6625-class bias alone cost 0.02 of output cosine at 8 bits).
                self._skip(stats, weight, "skipped-vectors", "vectors (biases, scales) stay float")
                continue
            if tensor.dtype not in _FLOAT_DTYPES:
                self._skip(stats, weight, "skipped-unsupported-dtype", str(tensor.dtype))
                continue
            rank = len(tensor.shape)
            notes: list[str] = []
            fallbacks: list[str] = []
            layout = _Layout("tensor")
            if o.granularity != "tensor":
                axes, why = _weight_axes(value, rank)
                if axes is None and rank < 2:
                    notes.append("per tensor: a vector has no channels")
                elif axes is None:
                    # Any grouping is valid (the weight's values only get closer); rows of
                    # axis 0 are never coarser than the whole tensor.
                    notes.append(f"groups along axis 0: {why}")
                    fallbacks.append("channel-axis-unknown")
                    layout = _Layout("channel", 0)
                elif o.granularity == "channel":
                    layout = _Layout("channel", axes[0])
                else:
                    layout = _Layout("block", axes[1], o.block_size)
            int4 = o.resolved_encoding == "dequantize" and o.bits <= 4
            plans.append(_Plan(weight, layout, notes, int4=int4, fallbacks=fallbacks))
        return plans

    def _settle_opset(
        self, model: ir.Model, plans: list[_Plan], stats: collections.Counter[str]
    ) -> dict[str, Any] | None:
        """Raise the opset where the plans need it and it is safe; degrade plans elsewhere."""
        encoding = self.options.resolved_encoding
        current = _default_opset(model)
        needed = max((p.needs_opset(encoding) for p in plans), default=current)
        if needed <= current:
            return None
        blockers: dict[int, list[str]] = {}

        def allowed(version: int) -> bool:
            if version <= current:
                return True
            if version not in blockers:
                blockers[version] = upgrade_blockers(model, version)
            return not blockers[version]

        for plan in plans:
            if plan.needs_opset(encoding) == _OPSET_INT4 and not allowed(_OPSET_INT4):
                why = f"opset {current} kept ({blockers[_OPSET_INT4][0]})"
                if plan.int4:
                    plan.int4 = False
                    plan.notes.append(f"int4 stored as int8: {why}")
                    plan.changed = True
                    plan.fallbacks.append("int4-stored-as-int8")
                if plan.layout.granularity == "block":
                    axes, _ = _weight_axes(plan.weight.value, len(plan.weight.tensor.shape))
                    plan.layout = _Layout("channel", axes[0] if axes else 0)
                    plan.notes.append(f"per channel instead of blocks: {why}")
                    plan.changed = True
                    plan.fallbacks.append("block-as-channel")
            if plan.layout.granularity == "channel" and not allowed(_OPSET_PER_AXIS):
                plan.emulate = plan.changed = True
                plan.fallbacks.append("channel-emulated")
        target = max((p.needs_opset(encoding) for p in plans if not p.emulate), default=current)
        if target <= current:
            reason = next(iter(blockers.values()))[0] if blockers else ""
            return {"opset": f"kept {current}", "wanted": needed, "reason": reason}
        _raise_opset(model, target)
        stats["opset-raised"] = 1
        logger.info("cluster-weights: raised the default opset from %d to %d", current, target)
        decision: dict[str, Any] = {"opset": f"raised {current} -> {target}"}
        if target < needed:
            decision["wanted"] = needed
            decision["reason"] = blockers[needed][0]
        return decision

    def _encode(self, plan: _Plan, array: np.ndarray) -> _Encoded:
        o = self.options
        dtype = plan.weight.tensor.dtype
        if o.resolved_encoding == "codebook":
            return _encode_codebook(array, dtype, o.bits, o.method, plan.layout)
        storage = ir.DataType.INT4 if plan.int4 else ir.DataType.INT8
        return _encode_dequantize(array, dtype, o.bits, plan.layout, storage, plan.emulate)

    def _apply(self, plan: _Plan, encoded: _Encoded, names: set[str]) -> None:
        """Replace the weight by decode nodes at the graph start (or where its Constant was)."""
        weight = plan.weight
        graph = weight.graph
        emit = _Emitter(graph, weight.name, names)
        values = {role: emit.const(role, tensor) for role, tensor in encoded.tensors.items()}
        output = encoded.build(emit, values)
        output.type = ir.TensorType(weight.tensor.dtype)
        output.shape = ir.Shape(_dims(weight.tensor))
        anchor = weight.node if weight.node is not None else (graph[0] if len(graph) else None)
        if anchor is None:
            graph.extend(emit.nodes)
        else:
            graph.insert_before(anchor, emit.nodes)
        name = weight.value.name
        weight.value.replace_all_uses_with(output)
        if weight.node is None:
            assert name is not None
            graph.initializers.pop(name)
        else:
            graph.remove(weight.node, safe=True)
        names.discard(output.name or "")
        output.name = name

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Cluster every large float weight of the main graph and its subgraphs.

        Weights inside functions are counted and left alone (a function cannot read
        initializers). Each weight is loaded whole while it is encoded.
        """
        o = self.options
        stats: collections.Counter[str] = collections.Counter(dict.fromkeys(_STATS, 0))
        stats["skipped-function-constants"] = sum(
            1
            for function in model.functions.values()
            for node in ir.traversal.RecursiveGraphIterator(function)
            if _constant_tensor(node) is not None
        )
        decisions: list[dict[str, Any]] = []
        if _default_opset(model) < _MIN_OPSET or (model.ir_version or 0) < 4:
            logger.debug(
                "cluster-weights skipped: opset below %d or IR version below 4", _MIN_OPSET
            )
            stats["skipped-old-model"] = 1
            return PassResult(dict(stats))
        weights, outputs, names = _collect(model)
        plans = self._plan(weights, outputs, stats)
        encoded_plans: list[tuple[_Plan, _Encoded, np.ndarray]] = []
        for plan in plans:
            array = np.asarray(plan.weight.tensor.numpy()).reshape(_dims(plan.weight.tensor))
            if not np.isfinite(array).all():
                self._skip(stats, plan.weight, "skipped-non-finite-weights", "NaN or infinity")
                continue
            if plan.layout.granularity != "tensor" and plan.layout.rows(array).shape[1] < 2:
                plan.notes.append("per tensor: one element per group")
                plan.layout = _Layout("tensor")
            encoded_plans.append((plan, self._encode(plan, array), array))
        # Opset first (it can change storage), then re-encode the plans it changed.
        wanted = [p for p, e, _ in encoded_plans if e.disk_after < p.weight.tensor.nbytes]
        opset_decision = self._settle_opset(model, wanted, stats) if wanted else None
        if opset_decision:
            decisions.append(opset_decision)
        for plan, encoded, array in encoded_plans:
            before = plan.weight.tensor.nbytes
            if plan.changed:
                encoded = self._encode(plan, array)
            if encoded.disk_after >= before:
                self._skip(
                    stats,
                    plan.weight,
                    "skipped-no-saving",
                    f"encoded {encoded.disk_after} bytes >= {before}",
                )
                continue
            self._apply(plan, encoded, names)
            sqnr = _sqnr_db(array, encoded.decoded)
            decision: dict[str, Any] = {
                "weight": plan.weight.name,
                "graph": plan.weight.where,
                "shape": list(array.shape),
                "encoding": encoded.encoding,
                "storage": encoded.storage,
                "method": o.method,
                "bits": o.bits,
                "granularity": plan.layout.describe(),
                "bytes_disk_before": before,
                "bytes_disk_after": encoded.disk_after,
                "bytes_memory_before": before,
                "bytes_memory_after": encoded.memory_after,
                "sqnr_db": round(sqnr, 2) if math.isfinite(sqnr) else str(sqnr),
            }
            if encoded.iterations is not None:
                decision["kmeans_iterations"] = encoded.iterations
            notes = plan.notes + encoded.notes
            if notes:
                decision["notes"] = "; ".join(notes)
            decisions.append(decision)
            stats["weights-clustered"] += 1
            for key in plan.fallbacks:
                stats[key] += 1
            stats["bytes-saved-disk"] += before - encoded.disk_after
            stats["bytes-saved-memory"] += before - encoded.memory_after
            logger.info(
                "cluster-weights: '%s' (%s) -> %s %s, %s, %d -> %d bytes on disk, SQNR %.1f dB",
                plan.weight.name,
                plan.weight.where,
                encoded.encoding,
                encoded.storage,
                plan.layout.describe(),
                before,
                encoded.disk_after,
                sqnr,
            )
        return PassResult(dict(stats), decisions)

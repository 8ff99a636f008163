"""Training-free recovery after pruning: least-squares refit of the layers that lost inputs."""

# One module (~510 lines): finding the sinks, sampling the teacher, and the per-op normal
# equations (Conv through im2col, ConvTranspose, Gemm, MatMul) form one least-squares refit.

from __future__ import annotations

__all__ = ["Sink", "find_sinks", "reconstruct_sinks"]

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from nnopt_graph.analysis.channels import set_node_const_input
from nnopt_graph.core.constants import const_array
from nnopt_graph.runtime.data import Dataset, input_specs

if TYPE_CHECKING:
    from nnopt_graph.runtime.services import RuntimeServices

logger = logging.getLogger(__name__)

# Rows of the least-squares system per layer: enough for the features, bounded in time.
_MIN_ROWS = 2048
_MAX_ROWS = 32768
_ROWS_PER_FEATURE = 4
_MAX_FEATURES = 8192
# Batches always used (for diversity) before stopping once every layer has its rows.
_MIN_BATCHES = 8


@dataclasses.dataclass(eq=False)
class Sink:
    """A layer whose input channels were pruned and whose weights are refit.

    Attributes:
        node: the Conv, Gemm or MatMul.
        kind: ``conv``, ``convt`` (ConvTranspose), ``gemm`` or ``matmul``.
        x: its data input (pruned channels removed).
        out: the output whose original values are the target.
        out_keep: per pruned axis of ``out``, the original indices it still produces.
        add: for a MatMul, the Add node right after it with a constant bias, or None.
    """

    node: ir.Node
    kind: str
    x: ir.Value
    out: ir.Value
    out_keep: dict[int, np.ndarray]
    add: ir.Node | None = None


def bias_add(node: ir.Node) -> tuple[ir.Node, int, np.ndarray] | None:
    """The Add right after a MatMul holding a constant per-output bias: (add, index, bias)."""
    out = node.outputs[0]
    uses = list(out.uses())
    if len(uses) != 1 or out.is_graph_output():
        return None
    add = uses[0].node
    if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or add.graph is not node.graph:
        return None
    other = 1 - uses[0].idx
    bias = const_array(add.inputs[other])
    if bias is None or bias.ndim == 0 or any(d != 1 for d in bias.shape[:-1]):
        return None
    return add, other, bias


def find_sinks(
    model: ir.Model,
    nodes: Sequence[ir.Node],
    out_keep: Mapping[tuple[str, int], np.ndarray],
) -> tuple[list[Sink], dict[str, int]]:
    """The refittable layers among ``nodes`` (main graph), and counts of those skipped.

    ``out_keep`` holds the kept indices of every pruned (value name, axis).
    """
    sinks: list[Sink] = []
    skipped = {"skipped-reconstruct-unsupported": 0, "skipped-reconstruct-subgraph": 0}
    for node in nodes:
        if node.graph is not model.graph:
            skipped["skipped-reconstruct-subgraph"] += 1
            continue
        w = node.inputs[1] if len(node.inputs) > 1 else None
        warr = const_array(w)
        x, out = node.inputs[0], node.outputs[0]
        if warr is None or x is None or not np.issubdtype(warr.dtype, np.floating):
            skipped["skipped-reconstruct-unsupported"] += 1
            continue
        op = node.op_type
        if op == "Conv" and warr.ndim in (3, 4) and node.attributes.get_int("group", 1) == 1:
            kind = "conv"
        elif (
            op == "ConvTranspose"
            and warr.ndim in (3, 4)
            and node.attributes.get_int("group", 1) == 1
            and node.attributes.get_string("auto_pad", "NOTSET") in ("NOTSET", "VALID")
        ):
            kind = "convt"
        elif op == "Gemm" and not node.attributes.get_int("transA", 0):
            kind = "gemm"
        elif op == "MatMul" and warr.ndim == 2:
            kind = "matmul"
        else:
            skipped["skipped-reconstruct-unsupported"] += 1
            continue
        keep = {axis: idx for (name, axis), idx in out_keep.items() if name == out.name}
        add = None
        if kind == "matmul":
            found = bias_add(node)
            add = found[0] if found else None
        sinks.append(Sink(node, kind, x, out, keep, add))
    return sinks, skipped


def _waves(model: ir.Model, sinks: Sequence[Sink]) -> list[list[Sink]]:
    """Sinks grouped so each wave only depends on sinks of earlier waves."""
    by_node = {id(s.node): s for s in sinks}
    level: dict[int, int] = {}
    for node in model.graph:
        depth = 0
        for value in node.inputs:
            producer = value.producer() if value is not None else None
            if producer is not None and id(producer) in level:
                depth = max(depth, level[id(producer)])
        for attr in node.attributes.values():
            if isinstance(attr, ir.Attr) and attr.type in (
                ir.AttributeType.GRAPH,
                ir.AttributeType.GRAPHS,
            ):
                graphs = (
                    [attr.as_graph()] if attr.type == ir.AttributeType.GRAPH else attr.as_graphs()
                )
                for graph in graphs:
                    for inner in ir.traversal.RecursiveGraphIterator(graph):
                        for value in inner.inputs:
                            producer = value.producer() if value is not None else None
                            if producer is not None and id(producer) in level:
                                depth = max(depth, level[id(producer)])
        sink = by_node.get(id(node))
        level[id(node)] = depth + (1 if sink is not None else 0)
    waves: dict[int, list[Sink]] = {}
    for sink in sinks:
        waves.setdefault(level[id(sink.node)], []).append(sink)
    return [waves[k] for k in sorted(waves)]


def _conv_geometry(
    node: ir.Node, x_shape: Sequence[int], w_shape: Sequence[int], y_shape: Sequence[int]
) -> tuple[list[int], list[int], list[int], list[int]]:
    """(kernel, strides, dilations, begin pads) of a 2-D view of a 1-D or 2-D Conv."""
    spatial = len(w_shape) - 2
    kernel = list(w_shape[2:])
    strides = list(node.attributes.get_ints("strides", [1] * spatial))
    dilations = list(node.attributes.get_ints("dilations", [1] * spatial))
    auto_pad = node.attributes.get_string("auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begins = []
        for i in range(spatial):
            total = max(
                (y_shape[2 + i] - 1) * strides[i]
                + (kernel[i] - 1) * dilations[i]
                + 1
                - x_shape[2 + i],
                0,
            )
            begins.append(total // 2 if auto_pad == "SAME_UPPER" else total - total // 2)
    elif auto_pad == "VALID":
        begins = [0] * spatial
    else:
        pads = list(node.attributes.get_ints("pads", [0] * (2 * spatial)))
        begins = pads[:spatial]
    if spatial == 1:
        return [1, *kernel], [1, *strides], [1, *dilations], [0, *begins]
    return kernel, strides, dilations, begins


def _convt_geometry(
    node: ir.Node, w_shape: Sequence[int]
) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    """A ConvTranspose as a stride-1 Conv over its zero-inserted input.

    Returns (kernel, strides=1, dilations, begin pads, insertion strides), 2-D.
    """
    spatial = len(w_shape) - 2
    kernel = list(w_shape[2:])
    strides = list(node.attributes.get_ints("strides", [1] * spatial))
    dilations = list(node.attributes.get_ints("dilations", [1] * spatial))
    pads = list(node.attributes.get_ints("pads", [0] * (2 * spatial)))
    begins = [dilations[i] * (kernel[i] - 1) - pads[i] for i in range(spatial)]
    if spatial == 1:
        return [1, *kernel], [1, 1], [1, *dilations], [0, *begins], [1, *strides]
    return kernel, [1] * spatial, dilations, begins, strides


def _zero_insert(x: np.ndarray, strides: Sequence[int]) -> np.ndarray:
    """[N, C, H, W] -> [N, C, (H-1)*s+1, (W-1)*s+1] with x at every s-th position."""
    if x.ndim == 3:
        x = x[:, :, None, :]
    n, c, h, w = x.shape
    out = np.zeros((n, c, (h - 1) * strides[0] + 1, (w - 1) * strides[1] + 1), dtype=x.dtype)
    out[:, :, :: strides[0], :: strides[1]] = x
    return out


def _rows_of(y: np.ndarray, kind: str) -> int:
    """Number of least-squares rows an output offers (positions x batch, or tokens)."""
    if kind in ("conv", "convt"):
        return int(y.shape[0] * math.prod(y.shape[2:]))
    return int(math.prod(y.shape[:-1]))


def _targets(y: np.ndarray, kind: str, pick: np.ndarray) -> np.ndarray:
    """Output rows at flat positions ``pick``: [rows, channels]."""
    if kind in ("conv", "convt"):
        flat = np.moveaxis(y, 1, -1).reshape(-1, y.shape[1])
    else:
        flat = y.reshape(-1, y.shape[-1])
    return flat[pick]


def _conv_rows(
    node: ir.Node,
    x: np.ndarray,
    w_shape: Sequence[int],
    y_shape: Sequence[int],
    pick: np.ndarray,
    geometry: tuple[list[int], list[int], list[int], list[int]] | None = None,
) -> np.ndarray:
    """im2col rows of the output positions ``pick`` (flat over batch x spatial)."""
    kernel, strides, dilations, begins = geometry or _conv_geometry(node, x.shape, w_shape, y_shape)
    if x.ndim == 3:
        x = x[:, :, None, :]
        y_shape = [y_shape[0], y_shape[1], 1, y_shape[2]]
    _, c, h, w = x.shape
    ho, wo = y_shape[2], y_shape[3]
    bn, rem = np.divmod(pick, ho * wo)
    oi, oj = np.divmod(rem, wo)
    ii = oi[:, None] * strides[0] - begins[0] + np.arange(kernel[0])[None, :] * dilations[0]
    jj = oj[:, None] * strides[1] - begins[1] + np.arange(kernel[1])[None, :] * dilations[1]
    pad_h = max(0, -int(ii.min()), int(ii.max()) - h + 1)
    pad_w = max(0, -int(jj.min()), int(jj.max()) - w + 1)
    if pad_h or pad_w:
        x = np.pad(x, ((0, 0), (0, 0), (pad_h, pad_h), (pad_w, pad_w)))
        ii, jj = ii + pad_h, jj + pad_w
    patches = x[
        bn[:, None, None, None],
        np.arange(c)[None, :, None, None],
        ii[:, None, :, None],
        jj[:, None, None, :],
    ]
    return patches.reshape(len(pick), -1)


def _convt_as_conv(w: np.ndarray) -> np.ndarray:
    """ConvTranspose weight [C, O, k...] as the equivalent Conv weight [O, C, k...] (flipped)."""
    flipped = w[(slice(None), slice(None), *[slice(None, None, -1)] * (w.ndim - 2))]
    return np.swapaxes(flipped, 0, 1)


class _System:
    """Streaming normal equations of one sink: X^T X and X^T Y with a bias column.

    The teacher's outputs are sampled once (positions and target rows per batch); the
    student's inputs are then read at the same positions, wave after wave.
    """

    def __init__(
        self, sink: Sink, weight: np.ndarray, bias: np.ndarray | None, budget: int
    ) -> None:
        self.sink = sink
        self.weight = weight
        self.bias = bias
        self.budget = budget
        self.y_shape: list[int] = []
        self.picks: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []
        self.batches = 0  # batches sampled, set at the first teacher batch
        self.per_batch = 0
        features = self.flat_weight().shape[0] + (1 if bias is not None else 0)
        outputs = self.flat_weight().shape[1]
        self.gram = np.zeros((features, features))
        self.cross = np.zeros((features, outputs))
        self.rows = 0

    def flat_weight(self) -> np.ndarray:
        """Current weights as [features, outputs]."""
        w = self.weight
        if self.sink.kind == "conv":
            return w.reshape(w.shape[0], -1).T
        if self.sink.kind == "convt":
            return _convt_as_conv(w).reshape(w.shape[1], -1).T
        if self.sink.kind == "gemm":
            trans_b = self.sink.node.attributes.get_int("transB", 0)
            alpha = self.sink.node.attributes.get_float("alpha", 1.0)
            return (w.T if trans_b else w) * alpha
        return w

    def sample(
        self, index: int, y: np.ndarray, total_batches: int, rng: np.random.Generator
    ) -> None:
        """Record target rows of the teacher's output for batch ``index``."""
        for axis, idx in self.sink.out_keep.items():
            y = np.take(y, idx, axis=axis)
        available = _rows_of(y, self.sink.kind)
        if index == 0:
            self.y_shape = list(y.shape)
            needed = math.ceil(self.budget / max(1, available))
            self.batches = min(total_batches, max(_MIN_BATCHES, needed))
            self.per_batch = max(1, min(available, math.ceil(self.budget / self.batches)))
        if index >= self.batches:
            return
        count = min(self.per_batch, available)
        pick = np.sort(rng.choice(available, size=count, replace=False))
        self.picks.append(pick)
        self.targets.append(_targets(y, self.sink.kind, pick).astype(np.float32))

    def add(self, index: int, x: np.ndarray) -> None:
        """Add the student's input rows of batch ``index`` at the sampled positions."""
        if index >= len(self.picks):
            return
        pick = self.picks[index]
        if self.sink.kind == "conv":
            rows = _conv_rows(self.sink.node, x, self.weight.shape, self.y_shape, pick)
        elif self.sink.kind == "convt":
            kernel, strides, dilations, begins, insert = _convt_geometry(
                self.sink.node, self.weight.shape
            )
            rows = _conv_rows(
                self.sink.node,
                _zero_insert(x, insert),
                self.weight.shape,
                self.y_shape,
                pick,
                (kernel, strides, dilations, begins),
            )
        else:
            rows = x.reshape(-1, x.shape[-1])[pick]
        rows = rows.astype(np.float32)
        if self.bias is not None:
            rows = np.concatenate([rows, np.ones((len(rows), 1), np.float32)], axis=1)
        # Per-batch products in float32 (a few thousand rows), accumulated in float64.
        self.gram += (rows.T @ rows).astype(np.float64)
        self.cross += (rows.T @ self.targets[index]).astype(np.float64)
        self.rows += len(rows)

    def solve(self, ridge: float) -> tuple[np.ndarray, np.ndarray | None]:
        """Ridge solution pulled toward the current weights: (weight, bias) as [F, O], [O]."""
        theta0 = self.flat_weight().astype(np.float64)
        if self.bias is not None:
            theta0 = np.concatenate([theta0, self.bias.reshape(1, -1).astype(np.float64)], axis=0)
        diag = np.diag(self.gram)
        lam = ridge * max(float(diag.mean()), 1e-12)
        lhs = self.gram + lam * np.eye(len(diag))
        rhs = self.cross + lam * theta0
        try:
            theta = np.linalg.solve(lhs, rhs)
        except np.linalg.LinAlgError:
            theta = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
        if self.bias is not None:
            return theta[:-1], theta[-1]
        return theta, None


def _current_bias(sink: Sink, outputs: int) -> np.ndarray | None:
    """The bias the fit may change (zeros when the layer has none yet), or None."""
    node = sink.node
    if sink.kind in ("conv", "convt"):
        b = (
            const_array(node.inputs[2])
            if len(node.inputs) > 2 and node.inputs[2] is not None
            else None
        )
        return b if b is not None else np.zeros(outputs, np.float32)
    if sink.kind == "gemm":
        c = node.inputs[2] if len(node.inputs) > 2 else None
        if c is None:
            return np.zeros(outputs, np.float32)
        arr = const_array(c)
        if arr is None or arr.size != outputs:
            return None
        return arr.reshape(-1) * node.attributes.get_float("beta", 1.0)
    return np.zeros(outputs, np.float32) if sink.add is not None else None


def _write_back(sink: Sink, system: _System, weight: np.ndarray, bias: np.ndarray | None) -> None:
    node = sink.node
    dtype = system.weight.dtype
    if sink.kind == "conv":
        w = weight.T.reshape(system.weight.shape)
        set_node_const_input(node, 1, w.astype(dtype), suffix="refit")
        if bias is not None:
            set_node_const_input(node, 2, bias.astype(dtype), suffix="refit")
    elif sink.kind == "convt":
        shape = system.weight.shape
        conv = weight.T.reshape(shape[1], shape[0], *shape[2:])
        set_node_const_input(node, 1, _convt_as_conv(conv).astype(dtype), suffix="refit")
        if bias is not None:
            set_node_const_input(node, 2, bias.astype(dtype), suffix="refit")
    elif sink.kind == "gemm":
        alpha = node.attributes.get_float("alpha", 1.0)
        w = weight / alpha
        if node.attributes.get_int("transB", 0):
            w = w.T
        set_node_const_input(node, 1, w.astype(dtype), suffix="refit")
        if bias is not None:
            beta = node.attributes.get_float("beta", 1.0)
            c = node.inputs[2] if len(node.inputs) > 2 else None
            old = const_array(c) if c is not None else None
            shape = old.shape if old is not None else bias.shape
            set_node_const_input(
                node, 2, (bias / beta).reshape(shape).astype(dtype), suffix="refit"
            )
    else:
        set_node_const_input(node, 1, weight.astype(dtype), suffix="refit")
        if bias is not None and sink.add is not None:
            found = bias_add(node)
            if found is not None:
                add, index, old = found
                new = old + bias.reshape(old.shape).astype(old.dtype)
                set_node_const_input(add, index, new, suffix="refit")


def reconstruct_sinks(
    runtime: RuntimeServices,
    model: ir.Model,
    teacher: ir.Model,
    sinks: Sequence[Sink],
    dataset: Dataset,
    *,
    ridge: float = 1e-3,
    seed: int = 0,
    threads: int | None = None,
) -> dict[str, int]:
    """Refit each sink so it reproduces the teacher's output on the calibration data.

    Sinks are processed in waves along the graph: a sink's inputs are computed by the
    pruned model in which every upstream sink has already been refit, so errors do not
    compound (He et al. 2017, ThiNet). The teacher runs once: for each sink, output
    positions (Conv: batch x spatial; Gemm/MatMul: rows) are sampled up to a row
    budget and their targets kept. Each wave then runs the pruned model and adds its
    inputs at those positions (Conv through im2col) to X^T X and X^T Y, with a bias
    column so the removed channels' mean contribution moves into the bias. The ridge
    term pulls toward the sliced weights, so the fit on the sampled rows is never
    worse than the sliced weights'.

    Returns:
        Statistics: ``layers-reconstructed`` and ``skipped-reconstruct-*`` counts.
    """
    stats = {"layers-reconstructed": 0, "skipped-reconstruct-too-large": 0}
    if not sinks:
        return stats
    dataset = dataset.fit(input_specs(teacher))
    batch_size = 8  # where the model's batch axis is dynamic; fixed ones are kept
    total_batches = max(1, dataset.feed_count(batch_size))
    rng = np.random.default_rng(seed)
    systems: list[_System] = []
    for sink in sinks:
        weight = const_array(sink.node.inputs[1])
        assert weight is not None
        probe = _System(sink, weight, None, 1)
        outputs, features = probe.flat_weight().shape[1], probe.flat_weight().shape[0]
        if features > _MAX_FEATURES:
            stats["skipped-reconstruct-too-large"] += 1
            logger.debug("refit: %s skipped: %d features", sink.node.name, features)
            continue
        budget = min(_MAX_ROWS, max(_MIN_ROWS, _ROWS_PER_FEATURE * features))
        systems.append(_System(sink, weight, _current_bias(sink, outputs), budget))
    if not systems:
        return stats
    by_sink = {id(s.sink): s for s in systems}
    y_names = sorted({s.sink.out.name or "" for s in systems})
    with runtime.tapped(teacher, y_names, threads=threads) as reference:
        for index, feed in enumerate(dataset.batches(batch_size)):
            if index and index >= max(s.batches for s in systems):
                break
            ys = reference.run(feed)
            for system in systems:
                system.sample(index, ys[system.sink.out.name or ""], total_batches, rng)
    for wave in _waves(model, [s.sink for s in systems]):
        group = [by_sink[id(s)] for s in wave]
        x_names = sorted({s.sink.x.name or "" for s in group})
        with runtime.tapped(model, x_names, threads=threads) as student:
            needed = max(len(s.picks) for s in group)
            for index, feed in enumerate(dataset.batches(batch_size)):
                if index >= needed:
                    break
                xs = student.run(feed)
                for system in group:
                    system.add(index, xs[system.sink.x.name or ""])
        for system in group:
            weight, bias = system.solve(ridge)
            _write_back(system.sink, system, weight, bias)
            stats["layers-reconstructed"] += 1
            logger.info(
                "refit: %s '%s' on %d rows, %d features",
                system.sink.kind,
                system.sink.node.name,
                system.rows,
                system.gram.shape[0],
            )
    return stats

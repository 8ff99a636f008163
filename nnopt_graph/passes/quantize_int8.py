"""Target-aware int8 QDQ quantization, checked to fuse on the target and to run faster."""

from __future__ import annotations

__all__ = ["QuantizeInt8Options", "QuantizeInt8Pass", "cpu_int8_features"]

import collections
import dataclasses
import logging
import math
import platform
from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from nnopt_graph.analysis.walk import STANDARD_DOMAINS
from nnopt_graph.passes.cleanup import DEFAULT_PIPELINE
from nnopt_graph.passes.quantize_calib import (
    CALIBRATORS,
    HistogramStats,
    TensorStats,
    collect_histograms,
    collect_stats,
    entropy_range,
    mse_range,
    percentile_range,
)
from nnopt_graph.passes.quantize_common import (
    NameScope,
    add_initializer,
    annotate_types,
    calibration_data,
    commit,
    const_array,
    drop_if_unused,
    ensure_opset,
    name_of,
    node_order,
    ranked_back_off,
    split_names,
    subgraph_nodes,
)
from nnopt_graph.passes.quantize_cost import (
    DROP_BELOW,
    KEEP_BELOW,
    CostModel,
    largest_activation,
    node_macs,
)
from nnopt_graph.pipeline.base import Pass, PassContext, PassResult
from nnopt_graph.pipeline.registry import PRESETS, register_pass
from nnopt_graph.runtime.data import Dataset

logger = logging.getLogger(__name__)

# Ops whose weights are quantized (the integer kernels' anchors).
TARGET_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
_CONV_OPS = frozenset({"Conv", "ConvTranspose"})
# Ops ONNX Runtime's CPU EP runs as QLinear* kernels when all their inputs and the output
# are quantized (QLinearAdd, QLinearMul, QLinearConcat, QLinearSigmoid, ...).
_QLINEAR_OPS = frozenset(
    {"Add", "Mul", "Concat", "Sigmoid", "LeakyRelu", "GlobalAveragePool", "AveragePool"}
)
# Ops that move int8 data unchanged when input and output share scale and zero point.
_PASSTHROUGH_OPS = frozenset(
    {
        "MaxPool",
        "Reshape",
        "Transpose",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
        "Resize",
        "Split",
        "Slice",
    }
)
_FLOAT = ir.DataType.FLOAT
# int8 is kept only when its median latency ratio is below this: timing noise on a shared
# machine must not let a slower model through.
_SPEED_MARGIN = 0.97
_INT32_LIMIT = 2**31 - 1


def cpu_int8_features() -> dict[str, Any]:
    """The host CPU's architecture and whether it has VNNI (no u8 x s8 saturation)."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags.update(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    machine = platform.machine().lower()
    x86 = machine in {"x86_64", "amd64", "i386", "i686"}
    vnni = sorted(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    return {"arch": machine, "x86": x86, "vnni": vnni}


@dataclasses.dataclass(frozen=True)
class QuantizeInt8Options:
    """Options of quantize-int8."""

    calibrator: str = dataclasses.field(
        default="auto", metadata={"choices": ("auto", *CALIBRATORS)}
    )
    percentile: float = dataclasses.field(
        default=99.99, metadata={"range": (0.0, 100.0, False, True)}
    )
    per_channel: bool = True
    activations: str = dataclasses.field(
        default="auto", metadata={"choices": ("auto", "uint8", "int8")}
    )
    reduce_range: str = dataclasses.field(
        default="auto", metadata={"choices": ("auto", "true", "false")}
    )
    fallback: bool = True
    speed_check: bool = True
    bias_correction: bool = True
    smooth_quant: float = dataclasses.field(default=0.0, metadata={"range": (0.0, 1.0, True, True)})
    exclude: str = ""
    samples: int = dataclasses.field(default=0, metadata={"range": (0, None, True, True)})
    bins: int = dataclasses.field(default=2048, metadata={"range": (2, None, True, True)})
    matmul_activations: bool = False
    share_concat: bool = True
    sensitivity: str = dataclasses.field(
        default="context", metadata={"choices": ("context", "local")}
    )
    sensitivity_samples: int = dataclasses.field(
        default=8, metadata={"range": (1, None, True, True)}
    )
    speed_runs: int = dataclasses.field(default=20, metadata={"range": (1, None, True, True)})
    speed_batch: int = dataclasses.field(default=1, metadata={"range": (1, None, True, True)})


@dataclasses.dataclass(frozen=True)
class _Format:
    """How values are stored: activation type and symmetry, weight range, output Q."""

    activation: type[np.integer]
    symmetric: bool
    weight_max: int
    quantize_outputs: bool
    quantize_bias: bool
    decision: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class _QParams:
    scale: np.float32
    zero_point: int
    dtype: type[np.integer]


@dataclasses.dataclass
class _Target:
    node: ir.Node
    weight: np.ndarray | None  # None: a MatMul of two activations
    axis: int
    bias_index: int | None
    bias: np.ndarray | None


@dataclasses.dataclass
class _QWeight:
    q: np.ndarray
    scale: np.ndarray
    bias: np.ndarray | None  # float (corrected) bias
    bias_q: np.ndarray | None  # int32 bias, when the format quantizes biases
    bias_scale: np.ndarray | None


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, key: str) -> str:
        self.parent.setdefault(key, key)
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def union(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        for other in keys[1:]:
            self.parent[self.find(other)] = self.find(keys[0])


@dataclasses.dataclass
class _Plan:
    targets: list[_Target]
    joined: list[ir.Node]
    tensors: dict[str, ir.Value]
    groups: _UnionFind
    folded: dict[str, ir.Node]  # region node name -> Relu/Clip folded into its output
    skipped: collections.Counter[str]

    def region(self) -> list[ir.Node]:
        return [t.node for t in self.targets] + self.joined


@dataclasses.dataclass
class _Cache:
    """What back-off attempts reuse: calibration statistics and the sensitivity ranking."""

    stats: dict[str, TensorStats] = dataclasses.field(default_factory=dict)
    histograms: dict[str, HistogramStats] = dataclasses.field(default_factory=dict)
    calibrator: str | None = None
    calibrator_scores: dict[str, float] = dataclasses.field(default_factory=dict)
    smoothing: dict[str, tuple[np.ndarray, list[str]]] | None = None
    ranking: list[str] | None = None
    sqnr: dict[str, float] = dataclasses.field(default_factory=dict)
    kinds_off: list[str] | None = None
    sensitivity_decision: dict[str, Any] = dataclasses.field(default_factory=dict)
    kind_names: dict[str, list[str]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _ActRecord:
    value: ir.Value
    q: ir.Node
    dqs: list[tuple[ir.Node, ir.Node, int]]
    params: tuple[ir.Value, ir.Value]


@dataclasses.dataclass
class _WeightRecord:
    node: ir.Node
    weight_index: int
    original: ir.Value
    dq: ir.Node
    float_bytes: int
    bias_index: int | None = None
    bias_original: ir.Value | None = None
    bias_added: bool = False
    bias_dq: ir.Node | None = None
    add_restore: tuple[ir.Node, int, ir.Value] | None = None
    corrected: bool = False


def _produced_by_dq(value: ir.Value | None) -> bool:
    producer = value.producer() if value is not None else None
    return producer is not None and producer.op_type == "DequantizeLinear"


def _consumed_by_q(value: ir.Value) -> bool:
    return any(use.node.op_type == "QuantizeLinear" for use in value.uses())


def _is_float_activation(value: ir.Value | None) -> bool:
    return (
        value is not None
        and value.dtype == _FLOAT
        and const_array(value) is None
        and not value.is_initializer()
    )


def _attr_int(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return default if attr is None else attr.as_int()


def _attr_float(node: ir.Node, name: str, default: float) -> float:
    attr = node.attributes.get(name)
    return default if attr is None else attr.as_float()


def _check_target(node: ir.Node, options: QuantizeInt8Options) -> _Target | str:
    """A quantizable weighted node, or the reason it is skipped."""
    inputs = list(node.inputs)
    if any(_produced_by_dq(v) for v in inputs):
        return "already-quantized"
    if len(inputs) < 2 or not _is_float_activation(inputs[0]):
        return "non-float-or-constant-input"
    weight = const_array(inputs[1])
    if weight is None:
        if (
            node.op_type == "MatMul"
            and options.matmul_activations
            and _is_float_activation(inputs[1])
        ):
            return _Target(node, None, 0, None, None)
        return "weight-not-constant"
    if weight.dtype != np.float32:
        return "non-float-weight"
    op = node.op_type
    if op == "Conv":
        axis = 0
        if weight.ndim < 3:
            return "unsupported-weight-rank"
    elif op == "ConvTranspose":
        if _attr_int(node, "group", 1) != 1 or weight.ndim < 3:
            return "unsupported-attributes"
        axis = 1
    elif op == "Gemm":
        if _attr_int(node, "transA", 0) != 0 or weight.ndim != 2:
            return "unsupported-attributes"
        axis = 0 if _attr_int(node, "transB", 0) else 1
    else:  # MatMul
        if weight.ndim != 2:
            return "unsupported-weight-rank"
        axis = 1
    bias_index = bias = None
    if len(inputs) > 2 and inputs[2] is not None:
        b = const_array(inputs[2])
        channels = weight.shape[axis]
        scaled = op == "Gemm" and (
            _attr_float(node, "alpha", 1.0) != 1.0 or _attr_float(node, "beta", 1.0) != 1.0
        )
        if b is not None and b.dtype == np.float32 and b.shape == (channels,) and not scaled:
            bias_index, bias = 2, b
        elif op != "Gemm":
            return "unsupported-bias"
    return _Target(node, weight, axis, bias_index, bias)


def _folded_output(node: ir.Node) -> tuple[ir.Value, ir.Node | None]:
    """The value to quantize after ``node``, and the activation folded into its Q.

    That is the output of a lone Relu (or Clip with a non-negative lower bound) that
    reads the node's output, which ONNX Runtime folds into the QuantizeLinear.
    """
    out = node.outputs[0]
    uses = list(out.uses())
    if out.is_graph_output() or len(uses) != 1:
        return out, None
    consumer = uses[0].node
    if consumer.domain not in STANDARD_DOMAINS or consumer.graph is not node.graph:
        return out, None
    if consumer.op_type == "Relu":
        return consumer.outputs[0], consumer
    if consumer.op_type == "Clip":
        low = const_array(consumer.inputs[1]) if len(consumer.inputs) > 1 else None
        if low is None and "min" in consumer.attributes:
            low = np.array(consumer.attributes["min"].as_float())
        if low is not None and low.size == 1 and float(low) >= 0.0:
            return consumer.outputs[0], consumer
    return out, None


def _plan(graph: ir.Graph, target: str, options: QuantizeInt8Options, exclude: set[str]) -> _Plan:
    """Which nodes and values to quantize for the target (main graph)."""
    skipped: collections.Counter[str] = collections.Counter()
    targets: list[_Target] = []
    for node in graph:
        if node.op_type not in TARGET_OPS or node.domain not in STANDARD_DOMAINS:
            continue
        if name_of(node) in exclude:
            skipped["skipped-excluded"] += 1
            continue
        checked = _check_target(node, options)
        if isinstance(checked, str):
            skipped[f"skipped-{checked}"] += 1
            logger.debug("%s '%s' not quantized: %s", node.op_type, name_of(node), checked)
        else:
            targets.append(checked)
    tensors: dict[str, ir.Value] = {}
    groups = _UnionFind()
    folded: dict[str, ir.Node] = {}

    def add(value: ir.Value | None) -> bool:
        if value is None or not _is_float_activation(value) or value.is_graph_output():
            return False
        if _consumed_by_q(value) or _produced_by_dq(value):
            return False
        if name_of(value) not in tensors:
            tensors[name_of(value)] = value
            groups.find(name_of(value))
        return True

    kept = []
    seeds: list[tuple[ir.Value, ir.Node | None, str]] = []
    for t in targets:
        inputs = [t.node.inputs[0]] + ([t.node.inputs[1]] if t.weight is None else [])
        if not all(add(v) for v in inputs):
            skipped["skipped-input-not-quantizable"] += 1
            continue
        kept.append(t)
        if target == "cpu" and t.node.op_type in _CONV_OPS:
            out, relu = _folded_output(t.node)
            if add(out):
                seeds.append((out, relu, name_of(t.node)))
                if relu is not None:
                    folded[name_of(t.node)] = relu
    targets = kept
    region = {id(t.node) for t in targets} | {id(n) for n in folded.values()}
    joined: list[ir.Node] = []
    if target == "cpu":
        # Grow the int8 region through the ops the CPU EP runs in int8 ...
        values: dict[int, tuple[list[ir.Value], list[str], ir.Node | None]] = {}
        changed = True
        while changed:
            changed = False
            for node in graph:
                if id(node) in region or node.domain not in STANDARD_DOMAINS:
                    continue
                if name_of(node) in exclude or any(_produced_by_dq(v) for v in node.inputs):
                    continue
                if any(o.is_graph_output() or o.dtype != _FLOAT for o in node.outputs):
                    continue
                if node.op_type in _QLINEAR_OPS:
                    data = [v for v in node.inputs if v is not None]
                    if not data or not all(name_of(v) in tensors for v in data):
                        continue
                    out, relu = _folded_output(node)
                    if not add(out):
                        continue
                    if relu is not None:
                        region.add(id(relu))
                    share = node.op_type == "Concat" and options.share_concat
                    union = [name_of(out), *(name_of(v) for v in data)] if share else []
                    values[id(node)] = ([*data, out], union, relu)
                elif node.op_type in _PASSTHROUGH_OPS:
                    data_in = node.inputs[0] if node.inputs else None
                    if data_in is None or not _is_float_activation(data_in):
                        continue
                    if data_in.name not in tensors and not any(
                        name_of(o) in tensors for o in node.outputs
                    ):
                        continue
                    if not add(data_in) or not all(add(o) for o in node.outputs):
                        continue
                    union = [name_of(data_in), *(name_of(o) for o in node.outputs)]
                    values[id(node)] = ([data_in, *node.outputs], union, None)
                else:
                    continue
                region.add(id(node))
                joined.append(node)
                changed = True
        # ... but keep only the ops between weighted nodes: those whose results reach the
        # input of a quantized weighted node (a tail before the model outputs stays float).
        reach = {name_of(v) for t in targets for v in t.node.inputs[:1]}
        reach |= {name_of(t.node.inputs[1]) for t in targets if t.weight is None}
        keep: set[int] = set()
        changed = True
        while changed:
            changed = False
            for node in joined:
                if id(node) in keep:
                    continue
                members, _, relu = values[id(node)]
                outs = [relu.outputs[0]] if relu is not None else list(node.outputs)
                if any(name_of(o) in reach for o in outs):
                    keep.add(id(node))
                    reach.update(name_of(v) for v in node.inputs if v is not None)
                    changed = True
        dropped = [n for n in joined if id(n) not in keep]
        if dropped:
            logger.debug(
                "int8 region: %d ops after the last weighted node stay float", len(dropped)
            )
        joined = [n for n in joined if id(n) in keep]
        tensors = {}
        groups = _UnionFind()
        for t in targets:
            for v in [t.node.inputs[0]] + ([t.node.inputs[1]] if t.weight is None else []):
                add(v)
        for out, _, _ in seeds:
            add(out)
        for node in joined:
            members, union, relu = values[id(node)]
            for v in members:
                add(v)
            if union:
                groups.union(union)
            if relu is not None:
                folded[name_of(node)] = relu
    elif target == "tensorrt":
        produced_by_target = {id(t.node.outputs[0]) for t in targets}
        for node in graph:
            if node.domain not in STANDARD_DOMAINS or name_of(node) in exclude:
                continue
            if node.op_type == "Add" and len(node.inputs) == 2:
                a, b = node.inputs
                # TensorRT fuses a residual Add into the Conv when its other input is int8.
                if (
                    a is not None
                    and b is not None
                    and _is_float_activation(a)
                    and _is_float_activation(b)
                ):
                    if id(a) in produced_by_target and id(b) not in produced_by_target:
                        add(b)
                    elif id(b) in produced_by_target and id(a) not in produced_by_target:
                        add(a)
            elif node.op_type == "Concat" and node.outputs[0].name in tensors:
                # Concat runs as a copy in int8 only when its inputs share the output's scale.
                members = [v for v in node.inputs if v is not None and name_of(v) in tensors]
                if members:
                    groups.union([node.outputs[0].name, *(name_of(v) for v in members)])
    return _Plan(targets, joined, tensors, groups, folded, skipped)


def _format(target: str, options: QuantizeInt8Options) -> _Format:
    """Activation type, symmetry and weight range for the target (and the host CPU)."""
    if target == "tensorrt":
        return _Format(
            np.int8,
            True,
            127,
            False,
            False,
            {
                "format": "symmetric int8 activations and per-channel int8 weights (TensorRT "
                "explicit quantization); QDQ on inputs of Conv/Gemm/MatMul and residual Add inputs",
                "fusion-check": "not possible here: the TensorRT EP is not available on this "
                "machine, so no QDQ pair was verified to fuse",
            },
        )
    features = cpu_int8_features()
    activation = options.activations
    if activation == "auto":
        activation = "uint8" if features["x86"] or not features["arch"] else "int8"
    reduce = options.reduce_range
    if reduce == "auto":
        # u8 x s8 products saturate in VPMADDUBSW's int16 sums without VNNI: 7-bit weights avoid it.
        reduce = (
            "true"
            if features["x86"] and activation == "uint8" and not features["vnni"]
            else "false"
        )
    reason = f"{features['arch']} CPU, VNNI: {', '.join(features['vnni']) or 'none'}; " + (
        "7-bit weights (reduce-range) avoid u8 x s8 saturation without VNNI"
        if reduce == "true"
        else "full-range weights"
    )
    return _Format(
        np.uint8 if activation == "uint8" else np.int8,
        False,
        63 if reduce == "true" else 127,
        True,
        True,
        {
            "format": f"{activation} asymmetric activations, int8 symmetric "
            f"{'per-channel' if options.per_channel else 'per-tensor'} weights",
            "reduce-range": reduce == "true",
            "cpu": reason,
        },
    )


def _act_params(low: float, high: float, fmt: _Format) -> _QParams:
    low, high = min(low, 0.0), max(high, 0.0)
    if not (math.isfinite(low) and math.isfinite(high)):
        low, high = 0.0, 1.0
    if fmt.symmetric:
        scale = max(-low, high) / 127.0
        return _QParams(np.float32(scale if scale > 0 else 1.0), 0, fmt.activation)
    qmin, qmax = (0, 255) if fmt.activation == np.uint8 else (-128, 127)
    scale = (high - low) / (qmax - qmin)
    if not scale > 0:
        return _QParams(np.float32(1.0), qmin if low >= 0 else 0, fmt.activation)
    scale32 = np.float32(scale)
    zero = int(np.clip(round(qmin - low / float(scale32)), qmin, qmax))
    return _QParams(scale32, zero, fmt.activation)


def _quantize_weight(
    weight: np.ndarray, axis: int, per_channel: bool, qmax: int
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 weights and their float32 scales (per channel along ``axis``)."""
    if per_channel:
        others = tuple(i for i in range(weight.ndim) if i != axis)
        absmax = np.abs(weight).max(axis=others)
        shape = [1] * weight.ndim
        shape[axis] = -1
    else:
        absmax = np.array(np.abs(weight).max())
        shape = [1] * weight.ndim
    scale = np.where(absmax > 0, absmax / qmax, 1.0).astype(np.float32)
    q = np.clip(np.rint(weight / scale.reshape(shape)), -qmax, qmax).astype(np.int8)
    return q, scale


def _requantize(weight: np.ndarray, scale: np.ndarray, axis: int | None, qmax: int) -> np.ndarray:
    """Symmetric int8 codes of ``weight`` for given scales (per channel along ``axis``)."""
    shape = [1] * weight.ndim
    if axis is not None:
        shape[axis] = -1
    return np.clip(np.rint(weight / scale.reshape(shape)), -qmax, qmax).astype(np.int8)


def _bias_shift(t: _Target, delta: np.ndarray, mean: np.ndarray) -> np.ndarray | None:
    """E[x] times the weight error: the output shift per channel that bias correction removes."""
    op = t.node.op_type
    if op == "Conv":
        group = _attr_int(t.node, "group", 1)
        summed = delta.reshape(delta.shape[0], delta.shape[1], -1).sum(axis=2)  # [M, C/g]
        per_group = summed.shape[0] // group
        cin = summed.shape[1]
        if mean.shape[0] != cin * group:
            return None
        out = np.empty(summed.shape[0])
        for j in range(group):
            rows = slice(j * per_group, (j + 1) * per_group)
            out[rows] = summed[rows] @ mean[j * cin : (j + 1) * cin]
        return out
    if op in ("Gemm", "MatMul"):
        if t.axis == 0:  # Gemm transB: [N, K]
            return delta @ mean if mean.shape[0] == delta.shape[1] else None
        return mean @ delta if mean.shape[0] == delta.shape[0] else None
    return None


def _bias_add_of(node: ir.Node, channels: int) -> tuple[ir.Node, int, np.ndarray] | None:
    """The Add of a constant [N] bias that alone reads a MatMul's output."""
    uses = list(node.outputs[0].uses())
    if len(uses) != 1 or node.outputs[0].is_graph_output():
        return None
    add = uses[0].node
    if add.op_type != "Add" or add.graph is not node.graph or len(add.inputs) != 2:
        return None
    index = 1 - uses[0].idx
    bias = const_array(add.inputs[index])
    if bias is None or bias.dtype != np.float32 or bias.shape != (channels,):
        return None
    bias_value = add.inputs[index]
    if bias_value is None or len(list(bias_value.uses())) != 1:
        return None
    return add, index, bias


class _Editor:
    """Inserts QDQ into a graph and takes it out again, pair by pair."""

    def __init__(self, graph: ir.Graph) -> None:
        self.graph = graph
        self.names = NameScope(graph)
        self.acts: list[_ActRecord] = []
        self.weights: list[_WeightRecord] = []
        self.removed_edges = 0

    def _const(self, base: str, array: np.ndarray) -> ir.Value:
        return add_initializer(self.graph, self.names, base, array)

    def _qdq_params(self, base: str, qp: _QParams) -> tuple[ir.Value, ir.Value]:
        return (
            self._const(f"{base}_scale", np.array(qp.scale, dtype=np.float32)),
            self._const(f"{base}_zero_point", np.array(qp.zero_point, dtype=qp.dtype)),
        )

    def quantize_value(
        self, value: ir.Value, qp: _QParams, order: dict[int, int]
    ) -> _ActRecord | None:
        """Q after the value and one DQ in front of each main-graph consumer."""
        uses = [u for u in value.uses() if u.node.graph is self.graph]
        if not uses:
            return None
        base = name_of(value) or "value"
        scale, zero = self._qdq_params(base, qp)
        q_out = ir.Value(
            name=self.names(f"{base}_quantized"),
            type=ir.TensorType(ir.DataType.from_numpy(np.dtype(qp.dtype))),
            shape=value.shape,
        )
        q = ir.node(
            "QuantizeLinear",
            [value, scale, zero],
            outputs=[q_out],
            name=self.names(f"{base}_QuantizeLinear"),
        )
        first = min(uses, key=lambda u: order.get(id(u.node), 1 << 30)).node
        self.graph.insert_before(first, q)
        dqs = []
        for use in uses:
            dq_out = ir.Value(
                name=self.names(f"{base}_dequantized"), type=value.type, shape=value.shape
            )
            dq = ir.node(
                "DequantizeLinear",
                [q_out, scale, zero],
                outputs=[dq_out],
                name=self.names(f"{base}_DequantizeLinear"),
            )
            self.graph.insert_before(use.node, dq)
            use.node.replace_input_with(use.idx, dq_out)
            dqs.append((dq, use.node, use.idx))
        record = _ActRecord(value, q, dqs, (scale, zero))
        self.acts.append(record)
        return record

    def quantize_weight(
        self,
        node: ir.Node,
        q: np.ndarray,
        scale: np.ndarray,
        axis: int,
        per_channel: bool,
    ) -> _WeightRecord:
        """DQ of int8 weights in place of the node's float weight input."""
        original = node.inputs[1]
        assert original is not None
        base = f"{name_of(node)}_weight"
        q_value = self._const(f"{base}_quantized", q)
        s_value = self._const(f"{base}_scale", scale if per_channel else scale.reshape(()))
        z_value = self._const(
            f"{base}_zero_point", np.zeros(scale.shape if per_channel else (), dtype=np.int8)
        )
        attrs = {"axis": axis} if per_channel else {}
        out = ir.Value(
            name=self.names(f"{base}_dequantized"), type=original.type, shape=ir.Shape(q.shape)
        )
        dq = ir.node(
            "DequantizeLinear",
            [q_value, s_value, z_value],
            attributes=attrs,
            outputs=[out],
            name=self.names(f"{base}_DequantizeLinear"),
        )
        self.graph.insert_before(node, dq)
        node.replace_input_with(1, out)
        float_bytes = int(np.prod(q.shape)) * 4
        record = _WeightRecord(node, 1, original, dq, float_bytes)
        self.weights.append(record)
        return record

    def set_bias(
        self,
        record: _WeightRecord,
        bias: np.ndarray,
        index: int,
        quantized: tuple[np.ndarray, np.ndarray] | None,
        per_channel: bool,
    ) -> None:
        """Give the node a (corrected) bias: int32 through a DQ, or float."""
        node = record.node
        base = f"{name_of(node)}_bias"
        record.bias_index = index
        if index < len(node.inputs) and node.inputs[index] is not None:
            record.bias_original = node.inputs[index]
        else:
            record.bias_added = True
            node.resize_inputs(index + 1)
        if quantized is None:
            node.replace_input_with(
                index, self._const(f"{base}_corrected", bias.astype(np.float32))
            )
            return
        q, scale = quantized
        q_value = self._const(f"{base}_quantized", q)
        s_value = self._const(f"{base}_scale", scale if per_channel else scale.reshape(()))
        attrs = {"axis": 0} if per_channel else {}
        out = ir.Value(
            name=self.names(f"{base}_dequantized"),
            type=ir.TensorType(_FLOAT),
            shape=ir.Shape(q.shape),
        )
        dq = ir.node(
            "DequantizeLinear",
            [q_value, s_value],
            attributes=attrs,
            outputs=[out],
            name=self.names(f"{base}_DequantizeLinear"),
        )
        self.graph.insert_before(node, dq)
        node.replace_input_with(index, out)
        record.bias_dq = dq

    def correct_add(
        self, record: _WeightRecord, add: ir.Node, index: int, bias: np.ndarray
    ) -> None:
        """Replace the bias of the Add after a MatMul by a corrected copy."""
        original = add.inputs[index]
        assert original is not None
        add.replace_input_with(
            index, self._const(f"{name_of(original)}_corrected", bias.astype(np.float32))
        )
        record.add_restore = (add, index, original)

    def _remove(self, node: ir.Node) -> None:
        inputs = list(node.inputs)
        self.graph.remove(node, safe=True)
        for value in inputs:
            drop_if_unused(self.graph, value)

    def undo_weight(self, record: _WeightRecord) -> None:
        """Float weights (and the original bias) back in place."""
        node = record.node
        node.replace_input_with(record.weight_index, record.original)
        self._remove(record.dq)
        if record.bias_index is not None:
            current = node.inputs[record.bias_index]
            if record.bias_added:
                node.replace_input_with(record.bias_index, None)
                node.resize_inputs(record.bias_index)
            else:
                node.replace_input_with(record.bias_index, record.bias_original)
            if record.bias_dq is not None:
                self._remove(record.bias_dq)
            else:
                drop_if_unused(self.graph, current)
        if record.add_restore is not None:
            add, index, original = record.add_restore
            current = add.inputs[index]
            add.replace_input_with(index, original)
            drop_if_unused(self.graph, current)
        self.weights.remove(record)

    def undo_edge(self, record: _ActRecord, dq: ir.Node) -> None:
        """One consumer reads the float value again."""
        for entry in list(record.dqs):
            if entry[0] is dq:
                _, consumer, index = entry
                consumer.replace_input_with(index, record.value)
                self.graph.remove(dq, safe=True)
                record.dqs.remove(entry)
                self.removed_edges += 1
        if not record.dqs:
            self.graph.remove(record.q, safe=True)
            for value in record.params:
                drop_if_unused(self.graph, value)
            self.acts.remove(record)


def _optimized_node_names(
    model: ir.Model, runtime: Any, standalone: list[str] | None = None
) -> set[str]:
    """Node names in the graph ONNX Runtime's CPU EP runs after all its optimizations.

    ``standalone`` receives the float-side value of every Quantize/Dequantize node left
    in the main graph (what the cost model charges for).
    """
    proto = runtime.optimized_graph(model)
    names: set[str] = set()
    stack = [proto.graph]
    main = True
    while stack:
        graph = stack.pop()
        for node in graph.node:
            names.add(name_of(node))
            if main and standalone is not None and node.domain in ("", "ai.onnx"):
                if node.op_type == "QuantizeLinear":
                    standalone.append(node.input[0])
                elif node.op_type == "DequantizeLinear":
                    standalone.append(node.output[0])
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    stack.append(attr.g)
                stack.extend(attr.graphs)
        main = False
    return names


def _fusion_check(model: ir.Model, editor: _Editor, runtime: Any) -> dict[str, Any]:
    """Remove the QDQ that ONNX Runtime's CPU EP left standalone, until all that stays fuses.

    A weight DQ still in the optimized graph means its node runs in float: its weights
    go back to float. A Q still there (its producer did not absorb it) keeps only the
    DQs that a fused consumer absorbed; the others' consumers read the float value.
    """
    unfused: list[str] = []
    rounds = 0
    standalone: list[str] = []
    for rounds in range(1, 9):  # noqa: B007  (reported after the loop)
        standalone = []
        names = _optimized_node_names(model, runtime, standalone)
        changed = False
        for record in list(editor.weights):
            if record.dq.name in names:
                unfused.append(name_of(record.node))
                logger.info(
                    "%s '%s' did not fuse on the CPU EP: float again",
                    record.node.op_type,
                    name_of(record.node),
                )
                editor.undo_weight(record)
                changed = True
        for act in list(editor.acts):
            if act.q.name not in names:
                continue
            for dq, _, _ in list(act.dqs):
                if name_of(dq) in names:
                    editor.undo_edge(act, dq)
                    changed = True
        if not changed:
            break
    return {
        "fusion-check": "ONNX Runtime CPU EP, ORT_ENABLE_ALL optimized graph",
        "rounds": rounds,
        "unfused-weighted-nodes": unfused[:20],
        "unfused-count": len(unfused),
        "standalone-qdq": standalone,
    }


def _smooth(
    graph: ir.Graph,
    targets: list[_Target],
    stats: dict[str, TensorStats],
    alpha: float,
    cache: _Cache,
    names: NameScope,
) -> int:
    """SmoothQuant: divide MatMul activations per channel by s, multiply weight rows by s.

    s_k = max|X_k|^alpha / max|W_k,:|^(1 - alpha), shared by the MatMuls reading one X; a
    Mul by 1/s is inserted before them. Returns the number of MatMuls smoothed.
    """
    if cache.smoothing is None:
        by_input: dict[str, list[_Target]] = collections.defaultdict(list)
        for t in targets:
            if t.node.op_type == "MatMul" and t.weight is not None:
                by_input[name_of(t.node.inputs[0])].append(t)
        cache.smoothing = {}
        for x_name, group in by_input.items():
            st = stats.get(x_name)
            a = st.channel_absmax if st is not None else None
            mats = [t.weight for t in group if t.weight is not None]
            if a is None or any(m.shape[0] != a.shape[0] for m in mats):
                continue
            w = np.max([np.abs(m).max(axis=1) for m in mats], axis=0)
            s = np.where(
                (a > 0) & (w > 0),
                np.power(a, alpha) / np.power(np.maximum(w, 1e-12), 1 - alpha),
                1.0,
            )
            s = np.clip(s, 1e-5, 1e5).astype(np.float32)
            cache.smoothing[x_name] = (s, [name_of(t.node) for t in group])
    done = 0
    by_name = {name_of(t.node): t for t in targets}
    for x_name, (s, node_names) in cache.smoothing.items():
        group = [by_name[n] for n in node_names if n in by_name]
        if not group:
            continue
        x = group[0].node.inputs[0]
        assert x is not None
        inv = add_initializer(
            graph, names, f"{x_name}_smooth_inverse", (1.0 / s).astype(np.float32)
        )
        out = ir.Value(name=names(f"{x_name}_smoothed"), type=x.type, shape=x.shape)
        mul = ir.node("Mul", [x, inv], outputs=[out], name=names(f"{x_name}_SmoothQuant"))
        graph.insert_before(group[0].node, mul)
        for t in group:
            t.node.replace_input_with(0, out)
            assert t.weight is not None
            t.weight = (t.weight * s[:, None]).astype(np.float32)
            old = t.node.inputs[1]
            t.node.replace_input_with(
                1, add_initializer(graph, names, f"{name_of(old)}_smoothed", t.weight)
            )
            drop_if_unused(graph, old)
            done += 1
        st = stats.get(x_name)
        if st is not None and st.channel_low is not None and st.channel_high is not None:
            derived = TensorStats(
                low=float(np.min(st.channel_low / s)),
                high=float(np.max(st.channel_high / s)),
                channel_axis=-1,
                channel_sum=None if st.channel_sum is None else st.channel_sum / s,
                channel_low=st.channel_low / s,
                channel_high=st.channel_high / s,
                channel_count=st.channel_count,
            )
            stats[name_of(out)] = derived
    return done


def _sens_bias(
    graph: ir.Graph,
    names: NameScope,
    base: str,
    w: _QWeight,
    per_channel: bool,
    new_nodes: list[ir.Node],
) -> ir.Value:
    """The bias a quantized node would read: int32 through a DQ, or the corrected float."""
    if w.bias_q is None or w.bias_scale is None:
        assert w.bias is not None
        return add_initializer(graph, names, f"{base}_sens_b", w.bias)
    qv = add_initializer(graph, names, f"{base}_sens_bq", w.bias_q)
    sv = add_initializer(
        graph, names, f"{base}_sens_bs", w.bias_scale if per_channel else w.bias_scale.reshape(())
    )
    dq = ir.node(
        "DequantizeLinear",
        [qv, sv],
        attributes={"axis": 0} if per_channel else {},
        name=names(f"{base}_sens_bdq"),
    )
    dq.outputs[0].name = names(f"{base}_sens_bdq_out")
    new_nodes.append(dq)
    return dq.outputs[0]


def _sensitivity(
    work: ir.Model,
    plan: _Plan,
    params: dict[str, _QParams],
    weights: dict[str, _QWeight],
    per_channel: bool,
    data: Dataset,
    runtime: Any,
) -> dict[str, float]:
    """Local SQNR (dB) of each region node's output with only that node quantized.

    One sweep over ``data``: a copy of every region node reads fake-quantized inputs
    (and int8 weights), its output is fake-quantized where the plan quantizes it, and
    its output is compared with the float node's. This approximates each node's effect
    on the model output (errors that later layers amplify or damp are not seen).
    """
    sens = work.clone()
    graph = sens.graph
    names = NameScope(graph)
    by_name = {name_of(n): n for n in graph}
    values = {name_of(v): v for v in graph.inputs}
    for node in graph:
        values.update((name_of(o), o) for o in node.outputs)
    new_nodes: list[ir.Node] = []
    fq_cache: dict[str, ir.Value] = {}

    def fake_quant(value: ir.Value, qp: _QParams, key: str | None) -> ir.Value:
        if key is not None and key in fq_cache:
            return fq_cache[key]
        base = name_of(value) or "v"
        scale = add_initializer(graph, names, f"{base}_sens_scale", np.array(qp.scale, np.float32))
        zero = add_initializer(graph, names, f"{base}_sens_zp", np.array(qp.zero_point, qp.dtype))
        q = ir.node("QuantizeLinear", [value, scale, zero], name=names(f"{base}_sens_q"))
        q.outputs[0].name = names(f"{base}_sens_q_out")
        dq = ir.node("DequantizeLinear", [q.outputs[0], scale, zero], name=names(f"{base}_sens_dq"))
        dq.outputs[0].name = names(f"{base}_sens_dq_out")
        new_nodes.extend([q, dq])
        if key is not None:
            fq_cache[key] = dq.outputs[0]
        return dq.outputs[0]

    pairs: dict[str, list[tuple[str, str]]] = {}
    for original in plan.region():
        found = by_name.get(name_of(original))
        if found is None:
            continue
        node = found
        inputs: list[ir.Value | None] = []
        w = weights.get(name_of(node))
        for i, v in enumerate(node.inputs):
            if v is None:
                inputs.append(None)
            elif name_of(v) in params:
                inputs.append(fake_quant(v, params[name_of(v)], name_of(v)))
            elif w is not None and i == 1:
                q, scale = w.q, w.scale
                axis = next(t.axis for t in plan.targets if name_of(t.node) == name_of(node))
                qv = add_initializer(graph, names, f"{name_of(node)}_sens_w", q)
                sv = add_initializer(
                    graph,
                    names,
                    f"{name_of(node)}_sens_ws",
                    scale if per_channel else scale.reshape(()),
                )
                dq = ir.node(
                    "DequantizeLinear",
                    [qv, sv],
                    attributes={"axis": axis} if per_channel else {},
                    name=names(f"{name_of(node)}_sens_wdq"),
                )
                dq.outputs[0].name = names(f"{name_of(node)}_sens_wdq_out")
                new_nodes.append(dq)
                inputs.append(dq.outputs[0])
            elif w is not None and i == 2 and w.bias is not None:
                inputs.append(_sens_bias(graph, names, name_of(node), w, per_channel, new_nodes))
            else:
                inputs.append(v)
        if w is not None and w.bias is not None and len(inputs) < 3:
            inputs.append(_sens_bias(graph, names, name_of(node), w, per_channel, new_nodes))
        attrs = [ir.Attr(a.name, a.type, a.value) for a in node.attributes.values()]
        copy = ir.Node(
            node.domain,
            node.op_type,
            inputs,
            attrs,
            num_outputs=len(node.outputs),
            name=names(f"{name_of(node)}_sens"),
        )
        for out in copy.outputs:
            out.name = names(f"{name_of(node)}_sens_out")
        new_nodes.append(copy)
        outs = list(copy.outputs)
        refs = list(node.outputs)
        relu = plan.folded.get(name_of(node))
        if relu is not None:
            rest = list(relu.inputs[1:])
            act = ir.Node(
                relu.domain,
                relu.op_type,
                [outs[0], *rest],
                [ir.Attr(a.name, a.type, a.value) for a in relu.attributes.values()],
                name=names(f"{name_of(relu)}_sens"),
            )
            act.outputs[0].name = names(f"{name_of(relu)}_sens_out")
            new_nodes.append(act)
            outs = [act.outputs[0]]
            refs = [values[name_of(relu.outputs[0])]]
        node_pairs = []
        for ref, out in zip(refs, outs, strict=False):
            if ref.dtype != _FLOAT:
                continue
            if name_of(ref) in params:
                out = fake_quant(out, params[name_of(ref)], None)
            node_pairs.append((name_of(ref), name_of(out)))
        pairs[name_of(original)] = node_pairs
    graph.extend(new_nodes)
    sums: dict[str, list[float]] = {name: [0.0, 0.0] for name in pairs}

    def on_batch(batch: dict[str, np.ndarray]) -> None:
        for name, node_pairs in pairs.items():
            for ref_name, out_name in node_pairs:
                ref = batch[ref_name].astype(np.float64).ravel()
                err = ref - batch[out_name].astype(np.float64).ravel()
                sums[name][0] += float(ref @ ref)
                sums[name][1] += float(err @ err)

    taps = sorted({n for node_pairs in pairs.values() for pair in node_pairs for n in pair})
    runtime.capture(sens, taps, data, on_batch, threads=2)
    result = {}
    for name, (signal, noise) in sums.items():
        if noise == 0.0:
            result[name] = math.inf
        elif signal == 0.0:
            result[name] = -math.inf
        else:
            result[name] = 10.0 * math.log10(signal / noise)
    return result


def _output_sqnr(reference: ir.Model, candidate: ir.Model, data: Dataset, runtime: Any) -> float:
    """SQNR (dB) of the candidate's outputs against the reference's, over ``data``."""
    signal = noise = 0.0
    for ref_out, cand_out in runtime.outputs([reference, candidate], data):
        for name, ref in ref_out.items():
            cand = cand_out.get(name)
            ref = np.asarray(ref, dtype=np.float64)
            if cand is None or ref.shape != np.shape(cand):
                continue
            cand = np.asarray(cand, dtype=np.float64)
            ref = np.nan_to_num(ref)
            signal += float(np.sum(ref * ref))
            noise += float(np.sum((ref - np.nan_to_num(cand)) ** 2))
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


def _context_sensitivity(
    base: ir.Model, quantized: ir.Model, plan: _Plan, data: Dataset, runtime: Any
) -> dict[str, float]:
    """Noise each region node adds, measured inside the fully quantized model.

    One sweep runs the float and the quantized model side by side with every region
    node's inputs and output tapped; a node's score is the noise-to-signal ratio of its
    output minus the largest of its inputs' (errors it introduces rather than inherits).
    """
    tracked: dict[str, tuple[list[str], str]] = {}
    for node in plan.region():
        relu = plan.folded.get(name_of(node))
        out = relu.outputs[0] if relu is not None else node.outputs[0]
        ins = [name_of(v) for v in node.inputs if v is not None and v.dtype == _FLOAT]
        ins = [n for n in ins if n in plan.tensors or n not in base.graph.initializers]
        tracked[name_of(node)] = (ins, name_of(out))
    names = sorted({n for ins, out in tracked.values() for n in [*ins, out]})
    clones = []
    for model in (base, quantized):
        clone = model.clone()
        values = {name_of(v): v for v in clone.graph.inputs}
        for n in clone.graph:
            values.update((name_of(o), o) for o in n.outputs)
        for name in names:
            value = values.get(name)
            if value is not None and not value.is_graph_output():
                clone.graph.outputs.append(value)
        clones.append(clone)
    outputs = [set(runtime.output_names(c)) for c in clones]
    available = [n for n in names if n in outputs[0] and n in outputs[1]]
    sums = {n: [0.0, 0.0] for n in available}
    for ref, got in runtime.outputs(clones, data, available):
        for name in available:
            r = np.nan_to_num(np.asarray(ref[name], dtype=np.float64))
            q = np.nan_to_num(np.asarray(got[name], dtype=np.float64))
            sums[name][0] += float(np.sum(r * r))
            sums[name][1] += float(np.sum((r - q) ** 2))

    def nsr(name: str) -> float:
        signal, noise = sums.get(name, (1.0, 0.0))
        return noise / signal if signal > 0 else 0.0

    return {
        node: max(0.0, nsr(out) - max((nsr(n) for n in ins), default=0.0))
        for node, (ins, out) in tracked.items()
    }


def _kind(node: ir.Node) -> str:
    """The speed search's unit: a family of nodes that is kept in int8 or not as a whole."""
    op = node.op_type
    if op == "Conv":
        return "conv-grouped" if _attr_int(node, "group", 1) > 1 else "conv"
    if op in TARGET_OPS:
        return op.lower()
    if op in {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Split", "Slice"}:
        return "layout"
    return op.lower()


@dataclasses.dataclass
class _Build:
    """One quantized candidate: the model, its statistics and what the fusion check did."""

    work: ir.Model
    stats: collections.Counter[str]
    fusion: dict[str, Any] | None
    quantized: bool
    int8_nodes: set[str] = dataclasses.field(default_factory=set)


def _latency_ratios(
    models: list[ir.Model], data: Dataset, runs: int, runtime: Any, batch: int = 1
) -> list[dict[str, float]]:
    """Median/min/max latency ratios of each model to the first.

    CPU EP, 2 threads, interleaved, pool spinning off so that alternating sessions do
    not slow each other down; on the first calibration feed (``batch`` samples when the
    data is sliced along a batch axis).
    """
    result = runtime.latency(
        models,
        next(data.batches(batch)),
        runs=runs,
        warmup=3,
        threads=2,
        min_seconds=1.0,
        max_runs=5000,
    )
    return [
        {**r, "p50-ms": ms, "runs": result.runs}
        for r, ms in zip(result.ratio, result.p50_ms, strict=True)
    ]


@register_pass
class QuantizeInt8Pass(Pass):
    """Insert int8 QDQ the target fuses (cpu/tensorrt), calibrated, guarded, never slower."""

    name = "quantize-int8"
    lossy = True
    Options = QuantizeInt8Options

    def __init__(self, options: Any = None, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        self._cache = _Cache()
        self._runtime: Any = None  # the job's RuntimeServices, set by run()

    def back_off(self) -> Pass | None:
        """The same pass with more of the most sensitive nodes in float (about x1.5 a step)."""
        return ranked_back_off(self, self._cache.ranking)

    def _calibrate(
        self, work: ir.Model, plan: _Plan, data: Dataset, calibrator: str
    ) -> dict[str, tuple[float, float]]:
        """Ranges of the plan's values by one calibrator (sweeps cached across attempts)."""
        cache = self._cache
        axes = {}
        for t in plan.targets:
            axes[name_of(t.node.inputs[0])] = 1 if t.node.op_type in _CONV_OPS else -1
        wanted = list(plan.tensors) + [n for n in axes if n not in plan.tensors]
        missing = [n for n in wanted if n not in cache.stats]
        if missing:
            cache.stats.update(
                collect_stats(work, missing, data, channel_axes=axes, capture=self._runtime.capture)
            )
        if calibrator == "minmax":
            return {n: (cache.stats[n].low, cache.stats[n].high) for n in plan.tensors}
        missing = [n for n in plan.tensors if n not in cache.histograms]
        if missing:
            ranges = {n: (cache.stats[n].low, cache.stats[n].high) for n in missing}
            cache.histograms.update(
                collect_histograms(
                    work, ranges, data, bins=self.options.bins, capture=self._runtime.capture
                )
            )
        out = {}
        for name in plan.tensors:
            hist = cache.histograms[name]
            if calibrator.startswith("percentile"):
                _, _, value = calibrator.partition("-")
                out[name] = percentile_range(
                    hist, float(value) if value else self.options.percentile
                )
            elif calibrator == "mse":
                out[name] = mse_range(hist)
            else:
                out[name] = entropy_range(hist)
        return out

    def _choose_calibrator(
        self,
        model: ir.Model,
        base: ir.Model,
        plan: _Plan,
        data: Dataset,
        target: str,
        fmt: _Format,
        exclude: set[str],
    ) -> tuple[str, dict[str, float]]:
        """For ``auto``: the calibrator whose quantized model has the best output SQNR.

        Candidates: min-max, percentiles 99.99 and 99.9, entropy; measured on the
        calibration samples the sensitivity analysis uses.
        """
        sample = data.take(max(1, self.options.sensitivity_samples))
        scores: dict[str, float] = {}
        for name in ("minmax", "percentile-99.99", "percentile-99.9", "entropy"):
            ranges = self._calibrate(base, plan, data, name)
            candidate = self._build(base, target, fmt, exclude, ranges, False)
            if not candidate.quantized:
                continue
            scores[name] = _output_sqnr(model, candidate.work, sample, self._runtime)
        best = max(scores, key=lambda n: scores[n]) if scores else "minmax"
        return best, scores

    def _quantities(
        self, plan: _Plan, ranges: dict[str, tuple[float, float]], fmt: _Format
    ) -> tuple[dict[str, _QParams], dict[str, _QWeight], dict[str, tuple[str, int, np.ndarray]]]:
        """Scales of the plan's values, int8 weights, and (bias-corrected) biases."""
        options = self.options
        members: dict[str, list[str]] = collections.defaultdict(list)
        for name in plan.tensors:
            members[plan.groups.find(name)].append(name)
        params: dict[str, _QParams] = {}
        for group in members.values():
            qp = _act_params(
                min(ranges[n][0] for n in group), max(ranges[n][1] for n in group), fmt
            )
            params.update((n, qp) for n in group)
        weights: dict[str, _QWeight] = {}
        bias_adds: dict[str, tuple[str, int, np.ndarray]] = {}
        for t in plan.targets:
            if t.weight is None:
                continue
            q, scale = _quantize_weight(t.weight, t.axis, options.per_channel, fmt.weight_max)
            bias = t.bias
            if options.bias_correction:
                shape = [1] * t.weight.ndim
                if options.per_channel:
                    shape[t.axis] = -1
                delta = q.astype(np.float64) * scale.reshape(shape) - t.weight
                st = self._cache.stats.get(name_of(t.node.inputs[0]))
                mean = st.channel_mean if st is not None else None
                shift = _bias_shift(t, delta, mean) if mean is not None else None
                if shift is not None and np.any(shift):
                    if t.node.op_type == "MatMul" and bias is None:
                        found = _bias_add_of(t.node, t.weight.shape[t.axis])
                        if found is not None:
                            add, index, old = found
                            bias_adds[name_of(t.node)] = (
                                name_of(add),
                                index,
                                (old - shift).astype(np.float32),
                            )
                    elif t.node.op_type != "ConvTranspose":
                        bias = ((bias if bias is not None else 0.0) - shift).astype(np.float32)
            bias_q = b_scale = None
            if bias is not None and fmt.quantize_bias:
                x_scale = np.float32(params[name_of(t.node.inputs[0])].scale)
                # int32 holds the bias only if x_scale * w_scale >= |bias| / (2**31 - 1):
                # widen the weight scale of channels with tiny weights and a large bias
                # (else their bias would saturate), with 2x headroom for float32 rounding.
                need = (
                    np.abs(bias).astype(np.float64) / (float(x_scale) * _INT32_LIMIT / 2)
                ).astype(np.float32)
                if options.per_channel and np.any(scale < need):
                    scale = np.maximum(scale, need)
                    q = _requantize(t.weight, scale, t.axis, fmt.weight_max)
                elif not options.per_channel and scale < need.max():
                    scale = np.maximum(scale, need.max()).astype(np.float32)
                    q = _requantize(t.weight, scale, None, fmt.weight_max)
                b_scale = (x_scale * scale).astype(np.float32)
                # A zero product scale (an all-zero weight channel) holds no bias: 0 there.
                safe = np.where(b_scale > 0, b_scale, np.float32(1.0)).astype(np.float64)
                codes = np.nan_to_num(np.rint(bias.astype(np.float64) / safe), nan=0.0)
                limit = _INT32_LIMIT
                bias_q = np.where(b_scale > 0, np.clip(codes, -limit, limit), 0).astype(np.int32)
            weights[name_of(t.node)] = _QWeight(q, scale, bias, bias_q, b_scale)
        return params, weights, bias_adds

    def _build(
        self,
        base: ir.Model,
        target: str,
        fmt: _Format,
        exclude: set[str],
        ranges: dict[str, tuple[float, float]],
        fusion_check: bool,
    ) -> _Build:
        """A copy of ``base`` with QDQ inserted for the plan minus ``exclude``, fusion-checked."""
        options = self.options
        work = base.clone()
        graph = work.graph
        plan = _plan(graph, target, options, exclude)
        params, weights, bias_adds = self._quantities(plan, ranges, fmt)
        stats: collections.Counter[str] = collections.Counter(plan.skipped)
        editor = _Editor(graph)
        order = node_order(graph)
        for name, value in plan.tensors.items():
            editor.quantize_value(value, params[name], order)
        nodes = {name_of(n): n for n in graph}
        for t in plan.targets:
            if t.weight is None:
                continue
            w = weights[name_of(t.node)]
            record = editor.quantize_weight(t.node, w.q, w.scale, t.axis, options.per_channel)
            record.corrected = w.bias is not None and (
                t.bias is None or not np.array_equal(w.bias, t.bias)
            )
            quantized = None
            if w.bias_q is not None and w.bias_scale is not None:
                quantized = (w.bias_q, w.bias_scale)
            if w.bias is not None and (quantized is not None or record.corrected):
                editor.set_bias(record, w.bias, 2, quantized, options.per_channel)
            if name_of(t.node) in bias_adds:
                add_name, index, corrected_bias = bias_adds[name_of(t.node)]
                editor.correct_add(record, nodes[add_name], index, corrected_bias)
                record.corrected = True
        fusion = _fusion_check(work, editor, self._runtime) if fusion_check else None
        freed = 0
        for record in editor.weights:
            freed += drop_if_unused(graph, record.original)
            freed += drop_if_unused(graph, record.bias_original)
            freed -= record.float_bytes // 4
        stats["nodes-quantized"] = len(editor.weights)
        stats["values-quantized"] = len(editor.acts)
        stats["biases-corrected"] = sum(1 for r in editor.weights if r.corrected)
        stats["skipped-unfused-qdq-removed"] = editor.removed_edges
        stats["bytes-saved"] = max(freed, 0)
        # Worth keeping only when a weighted node (or a MatMul of two activations) runs in
        # int8: QLinear ops alone just add Quantize/Dequantize.
        act_matmuls = any(t.weight is None for t in plan.targets) and bool(editor.acts)
        int8_nodes = {name_of(r.node) for r in editor.weights}
        return _Build(work, stats, fusion, bool(editor.weights) or act_matmuls, int8_nodes)

    def _modelled_ratio(self, candidate: _Build, costs: CostModel) -> dict[str, Any]:
        """The cost model's int8/float ratio for a built, fusion-checked candidate."""
        values = {v.name: v for n in candidate.work.graph for v in n.outputs}
        values.update({v.name: v for v in candidate.work.graph.inputs})
        fusion = candidate.fusion or {}
        standalone = [values.get(name) for name in fusion.get("standalone-qdq", [])]
        return costs.cost(
            candidate.work.graph, candidate.int8_nodes, standalone, largest_activation(costs.macs)
        )

    def _speed_search(
        self,
        model: ir.Model,
        base: ir.Model,
        plan: _Plan,
        build: Any,
        data: Dataset,
        measure: bool,
    ) -> tuple[_Build | None, dict[str, Any]]:
        """Keep the node families whose int8 form is faster; None when nothing is.

        By default "faster" is the deterministic cost model (quantize_cost); with
        ``measure`` it is timed, interleaved, and must win by a margin.
        """
        runs = self.options.speed_runs
        cache = self._cache
        feed = next(data.batches(self.options.speed_batch))
        costs = None
        if not measure:
            shapes = {k: list(v.shape) for k, v in feed.items()}
            costs = CostModel(node_macs(base, shapes), bool(cpu_int8_features()["vnni"]))

        def ratios(candidates: list[_Build]) -> list[float]:
            if costs is not None:
                return [self._modelled_ratio(c, costs)["ratio"] for c in candidates]
            timed = _latency_ratios(
                [model, *(c.work for c in candidates)],
                data,
                runs,
                self._runtime,
                self.options.speed_batch,
            )
            return [r["median"] for r in timed[1:]]

        drop_below = DROP_BELOW if costs is not None else 0.97
        if cache.kinds_off is None:
            current = build(set())
            if not current.quantized:
                return None, {"speed-check": "nothing fused: no int8 left to time"}
            kinds: dict[str, list[str]] = collections.defaultdict(list)
            for node in plan.region():
                kinds[_kind(node)].append(name_of(node))
            off: list[str] = []
            trials = []
            if len(kinds) > 1:
                # Largest families first: they move latency the most.
                for kind in sorted(kinds, key=lambda k: (-len(kinds[k]), k)):
                    names = {n for k in [*off, kind] for n in kinds[k]}
                    candidate = build(names)
                    if not candidate.quantized:
                        continue
                    with_kind, without = ratios([current, candidate])
                    trials.append(
                        {
                            "without": kind,
                            "int8-ratio": round(with_kind, 4),
                            "without-ratio": round(without, 4),
                        }
                    )
                    if without < with_kind * drop_below:
                        off.append(kind)
                        current = candidate
            cache.kinds_off = off
            cache.kind_names = {k: kinds[k] for k in off}
            decision: dict[str, Any] = {
                "speed-search": f"node families dropped from int8 when the model "
                f"{'measured' if costs is None else 'is modelled'} >= "
                f"{100 * (1 - drop_below):.0f}% faster without them",
                "families": {k: len(v) for k, v in kinds.items()},
                "dropped": off,
                "trials": trials,
            }
        else:
            names = {n for k in cache.kinds_off for n in cache.kind_names.get(k, [])}
            current = build(names)
            decision = {"speed-search": "reused", "dropped": cache.kinds_off}
            if not current.quantized:
                return None, decision
        if costs is not None:
            modelled = self._modelled_ratio(current, costs)
            decision["speed-check"] = (
                "cost model (deterministic): MACs at the calibration feed's shapes over int8 "
                "speedups per kernel, plus standalone Quantize/Dequantize elements, both "
                "read off ONNX Runtime's optimized graph"
            )
            decision["modelled"] = modelled
            ratio, bound = modelled["ratio"], KEEP_BELOW
        else:
            timed = _latency_ratios(
                [model, current.work], data, runs, self._runtime, self.options.speed_batch
            )[1]
            decision["speed-check"] = (
                f"measured: CPU EP, 2 threads, spinning off, >= {runs} interleaved runs "
                f"(>= 1 s) after 3 warm-up, first calibration feed (batch "
                f"{self.options.speed_batch} when sliced)"
            )
            decision["latency-ratio"] = {k: round(v, 4) for k, v in timed.items()}
            ratio, bound = timed["median"], _SPEED_MARGIN
        if not ratio < bound:
            how = "modelled cost" if costs is not None else "median latency"
            decision["result"] = f"int8 not faster ({how} ratio {ratio:.3f} >= {bound}): float kept"
            return None, decision
        return current, decision

    def _rank(
        self,
        base: ir.Model,
        plan: _Plan,
        ranges: dict[str, tuple[float, float]],
        fmt: _Format,
        data: Dataset,
        target: str,
        exclude: set[str],
    ) -> None:
        """Order the region's nodes for back-off, most sensitive first (cached)."""
        options = self.options
        cache = self._cache
        sample = data.take(max(1, options.sensitivity_samples))
        try:
            if options.sensitivity == "context":
                full = self._build(base, target, fmt, exclude, ranges, False)
                added = _context_sensitivity(base, full.work, plan, sample, self._runtime)
                cache.sqnr = {
                    n: (10 * math.log10(1 / v) if v > 0 else math.inf) for n, v in added.items()
                }
                how = (
                    "in-context: noise-to-signal each node adds (its output's minus its "
                    "inputs') inside the fully quantized model"
                )
            else:
                params, weights, _ = self._quantities(plan, ranges, fmt)
                cache.sqnr = _sensitivity(
                    base, plan, params, weights, options.per_channel, sample, self._runtime
                )
                how = (
                    "local SQNR: each node's own output with only that node's inputs, "
                    "weights and output quantized"
                )
            cache.ranking = sorted(cache.sqnr, key=lambda n: cache.sqnr[n])
        except Exception as exc:  # advisory: back off in plan order
            logger.warning("per-node sensitivity failed (%s): back-off follows plan order", exc)
            cache.ranking = [name_of(n) for n in plan.region()]
            how = f"failed ({type(exc).__name__}); plan order"
        cache.sensitivity_decision = {
            "sensitivity": f"{how} ({sample.num_samples} calibration samples, one sweep); "
            "back-off leaves the most sensitive in float first",
            "most-sensitive-db": [
                [n, round(cache.sqnr.get(n, math.nan), 2)] for n in cache.ranking[:8]
            ],
        }

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Plan, calibrate, insert QDQ, keep what fuses and is faster; see the README."""
        target = context.target or "cpu"
        options = self.options
        self._runtime = context.runtime
        result = PassResult()
        skipped_sub = subgraph_nodes(model, TARGET_OPS)
        if target == "cuda":
            result.stats = {"nodes-quantized": 0, "skipped-target-cuda": 1}
            result.decisions.append(
                {
                    "target": "cuda",
                    "action": "no int8 QDQ inserted",
                    "reason": "ONNX Runtime's CUDA EP has no int8 Conv/MatMul kernels: "
                    "QDQ would run as float with extra Quantize/Dequantize; use quantize-fp16 and "
                    "quantize-int4 (MatMulNBits) for CUDA, or --target tensorrt for int8",
                }
            )
            return result
        fmt = _format(target, options)
        exclude = set(split_names(options.exclude))
        base, upgraded = ensure_opset(model.clone(), 13)
        annotate_types(base)
        plan = _plan(base.graph, target, options, exclude)
        decisions: list[dict[str, Any]] = [{"target": target, **fmt.decision}]
        unchanged = {
            "nodes-quantized": 0,
            **plan.skipped,
            "skipped-nodes-in-subgraphs": skipped_sub,
        }
        if not plan.targets:
            result.stats = unchanged
            result.decisions = decisions
            return result
        data = calibration_data(base, context, options.samples)
        smoothed = 0
        if options.smooth_quant > 0:
            self._calibrate(base, plan, data, "minmax")
            smoothed = _smooth(
                base.graph,
                plan.targets,
                self._cache.stats,
                options.smooth_quant,
                self._cache,
                NameScope(base.graph),
            )
            plan = _plan(base.graph, target, options, exclude)
        calibrator = options.calibrator
        if calibrator == "auto":
            if self._cache.calibrator is None:
                self._cache.calibrator, self._cache.calibrator_scores = self._choose_calibrator(
                    model, base, plan, data, target, fmt, exclude
                )
            calibrator = self._cache.calibrator
        elif calibrator == "percentile":
            calibrator = f"percentile-{options.percentile:g}"
        ranges = self._calibrate(base, plan, data, calibrator)
        decisions.append(
            {
                "calibrator": calibrator,
                "auto-scores-sqnr-db": {
                    k: round(v, 2) for k, v in self._cache.calibrator_scores.items()
                },
                "samples": data.num_samples,
                "values": len(plan.tensors),
            }
        )
        if options.fallback and self._cache.ranking is None:
            self._rank(base, plan, ranges, fmt, data, target, exclude)
        if self._cache.ranking:
            decisions.append(self._cache.sensitivity_decision)
        check = target == "cpu"

        def build(extra: set[str]) -> _Build:
            return self._build(base, target, fmt, exclude | extra, ranges, check)

        if target == "cpu" and options.speed_check:
            measure = context.speed_check == "measure"
            chosen, speed = self._speed_search(model, base, plan, build, data, measure)
            decisions.append(speed)
        else:
            chosen = build(set())
            if not chosen.quantized:
                chosen = None
            if target == "cpu":
                decisions.append({"speed-check": "off (speed-check=false)"})
            else:
                decisions.append({"speed-check": "not possible here: no TensorRT EP"})
        if chosen is not None and chosen.fusion is not None:
            fusion = dict(chosen.fusion)
            fusion["standalone-qdq"] = len(fusion.get("standalone-qdq", []))
            decisions.append(fusion)
        if target == "tensorrt":
            result.notes.append(
                "TensorRT fusion could not be checked: no TensorRT execution provider here; "
                "QDQ placed by TensorRT's rules, unverified on the target"
            )
        if chosen is None:
            result.stats = {**unchanged, "skipped-not-faster-or-unfused": 1}
            result.decisions = decisions
            why = next((d["result"] for d in decisions if "result" in d), None)
            result.notes.append(
                f"int8 kept float: {why}" if why else "int8 kept float: nothing fused on the target"
            )
            return result
        stats = chosen.stats
        stats["skipped-nodes-in-subgraphs"] = skipped_sub
        stats["matmuls-smoothed"] = smoothed
        if upgraded:
            stats["opset-upgraded"] = 1
        commit(model, chosen.work)
        logger.info(
            "quantize-int8: %d weighted nodes, %d values in int8",
            stats["nodes-quantized"],
            stats["values-quantized"],
        )
        result.stats = dict(stats)
        result.decisions = decisions
        return result


# --target cpu / tensorrt alone: lossless cleanup, then int8 for that target (the pass reads
# the target from the job, so one preset text serves both).
PRESETS["target-cpu"] = f"{DEFAULT_PIPELINE},quantize-int8"
PRESETS["target-tensorrt"] = f"{DEFAULT_PIPELINE},quantize-int8"

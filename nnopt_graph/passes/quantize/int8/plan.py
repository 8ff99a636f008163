"""int8 placement: which nodes and values the target fuses in int8, and in which format."""

from __future__ import annotations

import collections
import dataclasses
import logging
import platform
from typing import Any

import numpy as np
import onnx_ir as ir

from nnopt_graph.analysis.walk import STANDARD_DOMAINS
from nnopt_graph.core.constants import const_array
from nnopt_graph.core.unionfind import UnionFind
from nnopt_graph.passes.quantize.calib import (
    CALIBRATORS,
    HistogramStats,
    TensorStats,
)
from nnopt_graph.passes.quantize.common import (
    name_of,
)

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
        default="output", metadata={"choices": ("output", "context", "local")}
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


@dataclasses.dataclass
class _Plan:
    targets: list[_Target]
    joined: list[ir.Node]
    tensors: dict[str, ir.Value]
    groups: UnionFind[str]
    folded: dict[str, ir.Node]  # region node name -> Relu/Clip folded into its output
    skipped: collections.Counter[str]

    def region(self) -> list[ir.Node]:
        return [t.node for t in self.targets] + self.joined


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
        if node.attributes.get_int("group", 1) != 1 or weight.ndim < 3:
            return "unsupported-attributes"
        axis = 1
    elif op == "Gemm":
        if node.attributes.get_int("transA", 0) != 0 or weight.ndim != 2:
            return "unsupported-attributes"
        axis = 0 if node.attributes.get_int("transB", 0) else 1
    else:  # MatMul
        if weight.ndim != 2:
            return "unsupported-weight-rank"
        axis = 1
    bias_index = bias = None
    if len(inputs) > 2 and inputs[2] is not None:
        b = const_array(inputs[2])
        channels = weight.shape[axis]
        scaled = op == "Gemm" and (
            node.attributes.get_float("alpha", 1.0) != 1.0
            or node.attributes.get_float("beta", 1.0) != 1.0
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
    groups: UnionFind[str] = UnionFind()
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
        groups = UnionFind()
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
                groups.union_all(union)
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
                    groups.union_all([node.outputs[0].name, *(name_of(v) for v in members)])
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
    # sensitivity=output ranks only when the guard first fails: the arguments of _rank
    pending_rank: tuple[Any, ...] | None = None
    # per nesting level, If name -> the branch every calibration sample takes (int8/branches.py)
    branches: list[dict[str, str]] | None = None

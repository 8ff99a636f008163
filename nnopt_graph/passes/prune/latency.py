"""Latency-aware pruned widths: time candidate channel counts on the target execution provider."""

from __future__ import annotations

__all__ = ["WidthChoice", "choose_width"]

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from nnopt_graph.analysis.channels import ROLE_IN, ROLE_OUT, ChannelGroup

if TYPE_CHECKING:
    from nnopt_graph.runtime.services import RuntimeServices

logger = logging.getLogger(__name__)

_LAYERS = ("Conv", "Gemm", "MatMul")


@dataclasses.dataclass
class WidthChoice:
    """The width picked for a group and the latencies (median ms) it was picked from."""

    width: int
    latency_ms: dict[int, float]
    reason: str


def _static(dims: Sequence[Any] | None) -> list[int] | None:
    """Static dims, with a dynamic batch (axis 0) timed at 1; None if others are dynamic."""
    if dims is None:
        return None
    dims = [1 if i == 0 and not isinstance(d, int) else d for i, d in enumerate(dims)]
    if not all(isinstance(d, int) and d > 0 for d in dims):
        return None
    return [int(d) for d in dims]


def _layer_nodes(group: ChannelGroup) -> tuple[list[Any], list[Any]] | None:
    """(sources, sinks) as (node, data input, channel axis) when all are plain layers."""
    sources: list[Any] = []
    sinks: list[Any] = []
    for space in group.spaces:
        for role in space.roles:
            if role.role not in (ROLE_OUT, ROLE_IN):
                continue
            node = role.node
            if node.op_type not in _LAYERS or (
                node.op_type == "Conv"
                and "group" in node.attributes
                and node.attributes["group"].as_int() != 1
            ):
                return None
            if node.op_type == "Gemm" and any(
                node.attributes.get(a) is not None and node.attributes[a].as_int()
                for a in ("transA",)
            ):
                return None
            entry = (node, role.data)
            (sources if role.role == ROLE_OUT else sinks).append(entry)
    if len(sources) != 1:
        return None
    return sources, sinks


def _micro_model(
    group: ChannelGroup, width: int, shapes: Mapping[str, Sequence[Any]], rng: np.random.Generator
) -> onnx.ModelProto | None:
    """The group's producer and consumers at ``width`` channels, with random weights.

    The layers are independent parts of one model, so one timing covers them all.
    """
    layers = _layer_nodes(group)
    if layers is None:
        return None
    sources, sinks = layers
    nodes, inputs, outputs, inits = [], [], [], []
    for k, (node, _data) in enumerate(sources + sinks):
        is_source = k < len(sources)
        x = node.inputs[0]
        w = node.inputs[1]
        xs = _static(shapes.get(x.name or ""))
        ws = _static(shapes.get(w.name or ""))
        if xs is None or ws is None:
            return None
        op = node.op_type
        if op == "Conv":
            ws = list(ws)
            if is_source:
                ws[0] = width
            else:
                ws[1] = width
                xs[1] = width
        elif op == "Gemm":
            trans_b = (
                node.attributes.get("transB") is not None and node.attributes["transB"].as_int()
            )
            n_axis, k_axis = (0, 1) if trans_b else (1, 0)
            if is_source:
                ws[n_axis] = width
            else:
                ws[k_axis] = width
                xs[1] = width
        else:
            if len(ws) != 2:
                return None
            if is_source:
                ws[1] = width
            else:
                ws[0] = width
                xs[-1] = width
        xname, wname, yname = f"x{k}", f"w{k}", f"y{k}"
        inputs.append(helper.make_tensor_value_info(xname, TensorProto.FLOAT, xs))
        outputs.append(helper.make_tensor_value_info(yname, TensorProto.FLOAT, None))
        inits.append(
            numpy_helper.from_array(rng.standard_normal(ws).astype(np.float32) * 0.1, wname)
        )
        attrs = {
            a.name: a.value
            for a in node.attributes.values()
            if a.name
            in ("strides", "pads", "dilations", "kernel_shape", "auto_pad", "transB", "alpha")
        }
        if op == "Conv" and "kernel_shape" in attrs:
            attrs["kernel_shape"] = list(ws[2:])
        nodes.append(helper.make_node(op, [xname, wname], [yname], **attrs))
    graph = helper.make_graph(nodes, "width", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def choose_width(
    group: ChannelGroup,
    target: int,
    low: int,
    step: int,
    shapes: Mapping[str, Sequence[Any]],
    runtime: RuntimeServices,
    ep: str = "cpu",
    runs: int = 20,
    tolerance: float = 0.03,
) -> WidthChoice | None:
    """Time the group's layers at widths around ``target`` and pick one that runs fast.

    Candidates are ``target`` and the multiples of ``step`` within one step of it (never
    below ``low`` nor above the group's width). Each is built as a small model of the
    group's producer and consumers with the model's shapes and timed interleaved (through
    the PassContext's runtime, 2 threads on CPU). A wider candidate is taken when its median
    latency is within ``tolerance`` of the planned width's (channels at no cost); otherwise
    a narrower one only when its latency falls by more than its channel count does (the
    planned width hits a slow kernel). None when the group's layers are not plain
    Conv/Gemm/MatMul with static shapes (the width is then left as planned).
    """
    high = group.num_units
    candidates = {target}
    base = (target // step) * step
    for w in (base - step, base, base + step, base + 2 * step):
        if low <= w <= high and abs(w - target) <= step and w > 0:
            candidates.add(w)
    widths = sorted(candidates)
    if len(widths) < 2:
        return None
    rng = np.random.default_rng(0)
    protos = []
    for w in widths:
        proto = _micro_model(group, w, shapes, rng)
        if proto is None:
            return None
        protos.append(proto)
    try:
        results = runtime.benchmark(protos, ep, runs=runs, warmup=3, threads=2)
    except Exception:  # noqa: BLE001  (a width that cannot be timed is not chosen)
        logger.debug("latency: timing '%s' failed", group.name, exc_info=True)
        return None
    latency = {w: r.latency_ms["p50"] for w, r in zip(widths, results, strict=True) if r.available}
    if len(latency) != len(widths) or target not in latency:
        return None
    planned = latency[target]
    width, reason = target, "as planned"
    wider = [w for w in widths if w > target and latency[w] <= planned * (1 + tolerance)]
    if wider:
        width, reason = max(wider), "wider at no cost"
    else:
        # Narrower only when latency falls by more than the channel count does.
        faster = [
            w
            for w in widths
            if w < target and (planned - latency[w]) / planned > (target - w) / target + tolerance
        ]
        if faster:
            width, reason = max(faster), "narrower is disproportionately faster"
    logger.info("latency: '%s' %d -> %d channels (%s)", group.name, target, width, reason)
    return WidthChoice(width, latency, reason)

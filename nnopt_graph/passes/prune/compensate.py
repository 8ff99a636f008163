"""Bias compensation for removed channels (FLAP), where the least-squares refit is not applied.

A sink layer ``y = x W + b`` that loses input channels R loses ``x_R W_R``. Its mean over
the calibration data, ``mean(x_R) W_R``, is a constant per output and moves into the
bias: ``b' = b + mean(x_R) W_R`` (An et al. 2024, FLAP). For a Conv the removed
channels' mean times the kernel's sum does the same (exact away from the padded border).
The deltas are computed from the original weights before removal and written after it,
only to the sinks the refit does not solve (the refit already fits a bias column).
"""

from __future__ import annotations

__all__ = ["BiasDelta", "apply_bias_deltas", "bias_deltas"]

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from nnopt_graph.analysis.channels import ROLE_IN, ChannelGroup, set_node_const_input
from nnopt_graph.core.constants import const_array
from nnopt_graph.passes.prune.importance import ChannelStats, Tap
from nnopt_graph.passes.prune.reconstruct import bias_add


@dataclasses.dataclass(eq=False)
class BiasDelta:
    """What one sink's bias gains: ``delta`` per output channel."""

    node: ir.Node
    delta: np.ndarray


def _attr(node: ir.Node, name: str, default: float | int) -> float | int:
    attr = node.attributes.get(name)
    return attr.value if attr is not None else default


def bias_deltas(
    group: ChannelGroup, keep: np.ndarray, stats: Mapping[Tap, ChannelStats]
) -> list[BiasDelta]:
    """Per sink of ``group`` with measured input means, the bias its removed inputs carried."""
    removed = np.ones(group.num_units, dtype=bool)
    removed[keep] = False
    deltas: list[BiasDelta] = []
    for space in group.spaces:
        if not space.is_constant:
            continue
        weight = const_array(space.value)
        if weight is None or not np.issubdtype(weight.dtype, np.floating):
            continue
        idx = np.nonzero(removed[space.unit_of])[0]
        if not len(idx):
            continue
        for role in space.roles:
            if role.role != ROLE_IN or role.data is None:
                continue
            node = role.node
            stat = stats.get((role.data[0].name or "", role.data[1]))
            if stat is None or stat.mean.shape[0] != space.size:
                continue
            if node.op_type not in ("MatMul", "Gemm", "Conv") or weight.ndim < 2:
                continue
            if node.op_type == "Conv" and int(_attr(node, "group", 1)) != 1:
                continue
            part = np.tensordot(
                stat.mean[idx],
                np.take(weight.astype(np.float64), idx, axis=space.axis),
                (0, space.axis),
            )
            if node.op_type == "Conv":
                part = part.reshape(part.shape[0], -1).sum(axis=1)  # [O, k...] -> [O]
            elif node.op_type == "Gemm":
                part = part * float(_attr(node, "alpha", 1.0))
            deltas.append(BiasDelta(node, part.reshape(-1)))
    return deltas


def apply_bias_deltas(
    deltas: Sequence[BiasDelta],
    kept: Mapping[tuple[str, int], np.ndarray],
    skip: Sequence[ir.Node] = (),
) -> dict[str, int]:
    """Add each delta into its sink's bias, except for the nodes in ``skip`` (refit).

    ``deltas`` come from the unpruned model; ``kept`` (the kept indices of every pruned
    (value name, axis)) slices them where a sink's own outputs were pruned as well.

    Returns:
        ``layers-bias-compensated`` and ``skipped-compensate-no-bias`` counts.
    """
    stats = {"layers-bias-compensated": 0, "skipped-compensate-no-bias": 0}
    skipped = {id(n) for n in skip}
    total: dict[int, tuple[ir.Node, np.ndarray]] = {}
    for d in deltas:
        if id(d.node) in skipped:
            continue
        node, acc = total.get(id(d.node), (d.node, np.zeros_like(d.delta)))
        if acc.shape != d.delta.shape:
            continue
        total[id(d.node)] = (node, acc + d.delta)
    for node, delta in total.values():
        out = node.outputs[0].name or ""
        out_keep = [idx for (name, _), idx in kept.items() if name == out]
        if len(out_keep) == 1:
            delta = delta[out_keep[0]]
        if node.op_type == "MatMul":
            found = bias_add(node)
            if found is None or found[2].shape[-1] != delta.shape[0]:
                stats["skipped-compensate-no-bias"] += 1
                continue
            add, index, bias = found
            set_node_const_input(
                add, index, (bias + delta.reshape(bias.shape)).astype(bias.dtype), "compensated"
            )
        elif node.op_type == "Conv":
            weight = const_array(node.inputs[1])
            assert weight is not None
            old = const_array(node.inputs[2]) if len(node.inputs) > 2 else None
            base = old if old is not None else np.zeros(delta.shape[0], weight.dtype)
            set_node_const_input(node, 2, (base + delta).astype(base.dtype), "compensated")
        else:  # Gemm
            c = node.inputs[2] if len(node.inputs) > 2 else None
            old = const_array(c)
            beta = float(_attr(node, "beta", 1.0))
            if c is not None and (old is None or old.size != delta.shape[0] or beta == 0):
                stats["skipped-compensate-no-bias"] += 1
                continue
            if old is None:
                weight = const_array(node.inputs[1])
                assert weight is not None
                new = delta.astype(weight.dtype)
                node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
            else:
                new = (old.reshape(-1) + delta / beta).reshape(old.shape).astype(old.dtype)
            set_node_const_input(node, 2, new, "compensated")
        stats["layers-bias-compensated"] += 1
    return stats

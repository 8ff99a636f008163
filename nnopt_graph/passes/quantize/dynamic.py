"""Dynamic int8 for MatMul and LSTM: int8 weights, activations quantized at run time (CPU)."""

# ONNX Runtime fuses DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul into one
# int8 GEMM kernel (DynamicQuantizeMatMul / MatMulIntegerToFloat): no calibration, and no
# static activation range to get wrong. It pays where MatMul MACs dominate and the
# output width N is large enough for the int8 GEMM to outrun the per-run quantization of
# its input (a transformer encoder); on a Conv model, or a tiny-hidden encoder, it does
# not, and the deterministic cost model below keeps the float MatMuls there. LSTMs (in any
# graph, If bodies included) become com.microsoft DynamicQuantizeLSTM (see lstm.py) under
# the same cost model: their recurrent GEMMs run in int8, X and each step's hidden state
# are quantized at run time.

from __future__ import annotations

__all__ = ["QuantizeDynamicInt8Options", "QuantizeDynamicInt8Pass"]

import dataclasses
import logging
from typing import Any

import numpy as np
import onnx_ir as ir

from nnopt_graph.analysis.walk import STANDARD_DOMAINS
from nnopt_graph.core.annotations import annotations_not_added
from nnopt_graph.core.constants import const_array
from nnopt_graph.core.names import NameScope
from nnopt_graph.core.rewrite import replace_output
from nnopt_graph.passes.quantize.common import (
    add_initializer,
    calibration_data,
    drop_if_unused,
    name_of,
    split_names,
    subgraph_nodes,
)
from nnopt_graph.passes.quantize.cost import KEEP_BELOW, QDQ_COST, first_feed_shapes, node_macs
from nnopt_graph.passes.quantize.int8.plan import cpu_int8_features
from nnopt_graph.passes.quantize.lstm import (
    LstmTarget,
    lstm_cost,
    lstm_targets,
    model_macs,
    rewrite_lstm,
)
from nnopt_graph.pipeline.base import Pass, PassContext, PassResult, register_pass

logger = logging.getLogger(__name__)

# A DynamicQuantizeLinear element costs two standalone (de)quantizations: one pass for
# the range, one to quantize.
_DQL_COST = 2 * QDQ_COST


@dataclasses.dataclass(frozen=True)
class QuantizeDynamicInt8Options:
    """Options of quantize-dynamic-int8."""

    exclude: str = ""
    per_channel: bool = True
    speed_check: bool = True
    lstm: bool = True


def _targets(graph: ir.Graph, exclude: set[str]) -> tuple[list[ir.Node], dict[str, int]]:
    """MatMuls of a float activation by a constant 2-D float32 weight; skip counts."""
    skipped: dict[str, int] = {}
    out = []
    for node in graph:
        if node.op_type != "MatMul" or node.domain not in STANDARD_DOMAINS:
            continue
        a, b = node.inputs[0], node.inputs[1]
        weight = const_array(b)
        if name_of(node) in exclude:
            reason = "excluded"
        elif weight is None:
            reason = "weight-not-constant"
        elif a is None or const_array(a) is not None:
            reason = "constant-input"
        elif weight.dtype != np.float32:
            reason = "non-float32-weight"
        elif weight.ndim != 2 or 0 in weight.shape:
            reason = "unsupported-weight-rank"
        else:
            out.append(node)
            continue
        skipped[f"skipped-{reason}"] = skipped.get(f"skipped-{reason}", 0) + 1
        logger.debug("MatMul '%s' not quantized: %s", name_of(node), reason)
    return out, skipped


def _measured_macs(
    model: ir.Model, nodes: list[ir.Node], data: Any, context: PassContext
) -> dict[str, int]:
    """MACs of MatMuls whose shapes inference left symbolic, from one calibration feed.

    Exported transformers compute their Reshape shapes in the graph; shape inference
    (even with data propagation) then loses the batch and sequence dims.
    """
    wanted = {name_of(n.inputs[0]): n for n in nodes if n.name and name_of(n.inputs[0])}
    if not wanted:
        return {}
    seen = first_feed_shapes(model, sorted(wanted), data, context.runtime.capture, "MatMul input")
    if seen is None:  # advisory: the nodes then count as unknown
        return {}
    out = {}
    for value, node in wanted.items():
        weight = const_array(node.inputs[1])
        shape = seen.get(value)
        if shape and weight is not None and node.name:
            out[node.name] = int(np.prod(shape)) * int(weight.shape[1])
    return out


def _speedup(vnni: bool) -> float:
    return 3.0 if vnni else 2.0


def _choose(
    nodes: list[ir.Node], macs: dict[str, int], vnni: bool
) -> tuple[list[ir.Node], dict[str, Any]]:
    """The MatMuls whose modelled int8 cost is below float's, and the whole model's ratio.

    A MatMul of M x K by K x N costs M*K*N MACs in float; in int8 M*K*N / speedup plus the
    run-time quantization of its M*K input elements (once per input value shared by
    several MatMuls). Other MACs of the model (Conv, Gemm, float MatMuls) stay as they are.
    """
    speedup = _speedup(vnni)
    chosen = []
    quantized_inputs: set[int] = set()
    saved = 0.0
    for node in nodes:
        node_cost = macs.get(node.name or "")
        weight = const_array(node.inputs[1])
        if not node_cost or weight is None:
            continue
        elements = node_cost / weight.shape[1]
        extra = 0.0 if id(node.inputs[0]) in quantized_inputs else _DQL_COST * elements
        gain = node_cost - node_cost / speedup - extra
        if gain > 0:
            chosen.append(node)
            quantized_inputs.add(id(node.inputs[0]))
            saved += gain
    total = float(sum(macs.values()))
    ratio = (total - saved) / total if total else 1.0
    return chosen, {
        "ratio": round(ratio, 4),
        "matmuls": len(chosen),
        "vnni": vnni,
        "saved-macs": saved,
        "macs": total,
    }


def _lstm_shapes(
    model: ir.Model, targets: list[LstmTarget], data: Any, context: PassContext
) -> dict[tuple[int, int], int]:
    """MACs of main-graph LSTMs whose X shape inference left symbolic, from one feed."""
    wanted = {name_of(t.node.inputs[0]): t for t in targets if t.key[0] == 0}
    if not wanted:
        return {}
    seen = first_feed_shapes(model, sorted(wanted), data, context.runtime.capture, "LSTM input")
    if seen is None:  # advisory: the LSTMs then count one step
        return {}
    out = {}
    for value, t in wanted.items():
        shape = seen.get(value)
        if shape and len(shape) == 3:
            dirs, gates, inp = t.w.shape
            out[t.key] = dirs * shape[0] * shape[1] * gates * (inp + t.r.shape[2])
    return out


def _choose_lstms(
    targets: list[LstmTarget], macs: dict[tuple[int, int], int], vnni: bool
) -> tuple[list[LstmTarget], float, float, int]:
    """The LSTMs the cost model says gain in int8; MACs saved, LSTM MACs, steps guessed.

    An LSTM whose X shape is unknown (inside an If body fed by a computed shape) counts
    one step of batch one: the smallest run, where int8 gains least.
    """
    chosen, saved, total, guessed = [], 0.0, 0.0, 0
    for t in targets:
        dirs, gates, inp = t.w.shape
        count = macs.get(t.key)
        if not count:
            count = dirs * gates * (inp + t.r.shape[2])
            guessed += 1
        total += count
        gain = lstm_cost(t, count, _speedup(vnni), _DQL_COST)
        if gain > 0:
            chosen.append(t)
            saved += gain
    return chosen, saved, total, guessed


def _quantize_weight(weight: np.ndarray, per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 codes of a [K, N] weight and its scale (per column N, or one)."""
    peak = np.abs(weight).max(axis=0) if per_channel else np.array(np.abs(weight).max())
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    codes = np.clip(np.rint(weight / scale), -127, 127).astype(np.int8)
    return codes, scale


def _rewrite(
    graph: ir.Graph,
    node: ir.Node,
    names: NameScope,
    per_channel: bool,
    shared: dict[int, tuple[ir.Value, ir.Value, ir.Value]],
) -> int:
    """Replace one MatMul with the dynamic int8 pattern; the weight bytes freed."""
    a, b = node.inputs[0], node.inputs[1]
    assert a is not None and b is not None
    weight = const_array(b)
    assert weight is not None
    base = name_of(node) or "matmul"
    new: list[ir.Node] = []
    if id(a) not in shared:
        dql = ir.node(
            "DynamicQuantizeLinear",
            [a],
            num_outputs=3,
            name=names(f"{base}_dql"),
        )
        for value, suffix in zip(dql.outputs, ("_q", "_scale", "_zp"), strict=True):
            value.name = names(f"{name_of(a) or base}{suffix}")
        new.append(dql)
        shared[id(a)] = (dql.outputs[0], dql.outputs[1], dql.outputs[2])
    a_q, a_scale, a_zp = shared[id(a)]
    codes, scale = _quantize_weight(weight, per_channel)
    w_q = add_initializer(graph, names, f"{name_of(b)}_int8", codes)
    w_zp = add_initializer(graph, names, f"{name_of(b)}_zp", np.zeros(scale.shape, np.int8))
    w_scale = add_initializer(graph, names, f"{name_of(b)}_scale", scale)
    integer = ir.node("MatMulInteger", [a_q, w_q, a_zp, w_zp], name=names(f"{base}_int"))
    integer.outputs[0].name = names(f"{base}_int32")
    cast = ir.node(
        "Cast", [integer.outputs[0]], {"to": ir.DataType.FLOAT}, name=names(f"{base}_cast")
    )
    cast.outputs[0].name = names(f"{base}_float")
    both = ir.node("Mul", [a_scale, w_scale], name=names(f"{base}_scales"))
    both.outputs[0].name = names(f"{base}_scale_product")
    out = ir.node("Mul", [cast.outputs[0], both.outputs[0]], name=names(f"{base}_rescale"))
    new += [integer, cast, both, out]
    # In the graph's order: a shared DynamicQuantizeLinear goes before its first MatMul.
    replace_output(node, new, out.outputs[0])
    integer.name = name_of(node) or integer.name  # the MatMul's name lives on
    freed = drop_if_unused(graph, b)
    return freed - codes.nbytes


@register_pass
class QuantizeDynamicInt8Pass(Pass):
    """Dynamic int8 MatMul (int8 weights, run-time activation ranges) where it pays on CPU."""

    name = "quantize-dynamic-int8"
    lossy = True
    Options = QuantizeDynamicInt8Options

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Pick the MatMuls and LSTMs the cost model says run faster in int8, rewrite them."""
        with annotations_not_added(model):  # no value_info the input lacked (ORT fuses on it)
            return self._run(model, context)

    def _run(self, model: ir.Model, context: PassContext) -> PassResult:
        options = self.options
        result = PassResult()
        graph = model.graph
        exclude = set(split_names(options.exclude))
        stats: dict[str, int] = {
            "nodes-quantized": 0,
            "lstms-quantized": 0,
            "skipped-nodes-in-subgraphs": subgraph_nodes(model, ["MatMul"]),
        }
        target = context.target or "cpu"
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
        nodes, skipped = _targets(graph, exclude)
        stats.update(skipped)
        lstms: list[LstmTarget] = []
        if options.lstm:
            lstms, skipped = lstm_targets(model, exclude)
            stats.update(skipped)
        if target != "cpu":
            stats["skipped-target-not-cpu"] = len(nodes) + len(lstms)
            nodes, lstms = [], []
        elif (nodes or lstms) and opset < 11:
            stats["skipped-opset-below-11"] = len(nodes) + len(lstms)
            nodes, lstms = [], []
        if (nodes or lstms) and options.speed_check:
            data = calibration_data(model, context, 1)
            shapes = {k: list(v.shape) for k, v in next(data.batches(1)).items()}
            vnni = bool(cpu_int8_features()["vnni"])
            macs = node_macs(model, shapes)
            macs.update(
                _measured_macs(model, [n for n in nodes if n.name not in macs], data, context)
            )
            nodes, modelled = _choose(nodes, macs, vnni)
            if lstms:
                lstm_macs, sub_macs, unknown_macs = model_macs(model, shapes)
                unknown = [t for t in lstms if t.key not in lstm_macs]
                lstm_macs.update(_lstm_shapes(model, unknown, data, context))
                lstms, saved, lstm_total, guessed = _choose_lstms(lstms, lstm_macs, vnni)
                total = modelled["macs"] + sub_macs + lstm_total
                modelled = {
                    **modelled,
                    "ratio": round((total - modelled["saved-macs"] - saved) / total, 4)
                    if total
                    else 1.0,
                    "lstms": len(lstms),
                    "lstm-steps-guessed": guessed,
                    "nodes-of-unknown-macs": unknown_macs,
                    "saved-macs": modelled["saved-macs"] + saved,
                    "macs": total,
                }
            modelled["saved-macs"] = round(modelled["saved-macs"])
            modelled["macs"] = round(modelled["macs"])
            result.decisions.append(
                {
                    "speed-check": "cost model (deterministic): MACs at the calibration "
                    "feed's shapes over the int8 GEMM speedup, plus run-time quantization "
                    "of each MatMul input (and of each LSTM's X and per-step hidden state)",
                    "modelled": modelled,
                }
            )
            if not modelled["ratio"] < KEEP_BELOW:
                stats["skipped-not-faster"] = 1
                result.notes.append(
                    f"dynamic int8 kept float: modelled cost ratio {modelled['ratio']:.3f} "
                    f">= {KEEP_BELOW}"
                )
                nodes, lstms = [], []
        names = NameScope.for_graph(graph)
        shared: dict[int, tuple[ir.Value, ir.Value, ir.Value]] = {}
        freed = 0
        for node in nodes:
            freed += _rewrite(graph, node, names, options.per_channel, shared)
            logger.info("quantize-dynamic-int8: MatMul '%s' in dynamic int8", name_of(node))
        for lstm in lstms:
            freed += rewrite_lstm(model, lstm, options.per_channel)
        stats["nodes-quantized"] = len(nodes) + len(lstms)
        stats["lstms-quantized"] = len(lstms)
        stats["bytes-saved"] = max(freed, 0)
        result.stats = stats
        return result

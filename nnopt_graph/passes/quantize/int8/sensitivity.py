"""Per-node sensitivity (which nodes int8 hurts most) and SmoothQuant scaling."""

from __future__ import annotations

import collections
import logging
import math
from typing import Any

import numpy as np
import onnx_ir as ir

from nnopt_graph.check.metrics import min_cosine
from nnopt_graph.core.names import NameScope
from nnopt_graph.passes.quantize.calib import (
    TensorStats,
)
from nnopt_graph.passes.quantize.common import (
    add_initializer,
    drop_if_unused,
    name_of,
)
from nnopt_graph.passes.quantize.int8.plan import (
    _FLOAT,
    _Cache,
    _Plan,
    _QParams,
    _QWeight,
    _Target,
)
from nnopt_graph.runtime.data import Dataset

logger = logging.getLogger(__name__)


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
    names = NameScope.for_graph(graph)
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


def _worst_cosines(
    reference: list[dict[str, np.ndarray]], candidate: ir.Model, data: Dataset, runtime: Any
) -> float:
    """The worst per-sample cosine (over all float outputs) of a candidate's outputs."""
    refs, cands = [], []
    for ref_out, (cand_out,) in zip(reference, runtime.outputs([candidate], data), strict=True):
        names = [
            name
            for name, ref in ref_out.items()
            if name in cand_out and np.shape(cand_out[name]) == np.shape(ref)
            if ref.dtype.kind == "f"
        ]
        refs.append([ref_out[name] for name in names])
        cands.append([cand_out[name] for name in names])
    return min_cosine(refs, cands)


def _output_sensitivity(
    base: ir.Model, plan: _Plan, build: Any, data: Dataset, runtime: Any
) -> dict[str, float]:
    """Each weighted node's harm to the model output, with only that node in int8.

    ``build(extra)`` quantizes the plan minus ``extra``; for each weighted node the
    candidate keeps only it (its input and output QDQ and its int8 weights) and the
    score is the worst calibration sample's cosine deficit in dB (10 log10 1/(1-cos),
    lower = more harmful). A node's own noise can be small and still wreck the output
    when later layers amplify the channels it quantizes coarsely (PP-OCRv4's detector:
    one early Conv output, channel spreads 0.14 to 10, takes the worst cosine to 0.80
    alone); an in-context noise ratio at the node's output does not see that. Joined
    nodes (QLinear Add/Mul/Concat, layout ops) need a weighted neighbour to be in int8
    at all: they score +inf here and are ranked after, in plan order.
    """
    reference = [ref for (ref,) in runtime.outputs([base], data)]
    weighted = [name_of(t.node) for t in plan.targets]
    everything = {name_of(n) for n in plan.region()}
    scores: dict[str, float] = {}
    for name in weighted:
        candidate = build(everything - {name})
        if not candidate.quantized:
            scores[name] = math.inf
            continue
        deficit = 1.0 - _worst_cosines(reference, candidate.work, data, runtime)
        scores[name] = 10.0 * math.log10(1.0 / deficit) if deficit > 0 else math.inf
    for node in plan.joined:
        scores[name_of(node)] = math.inf
    return scores


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

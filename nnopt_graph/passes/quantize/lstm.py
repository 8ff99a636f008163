"""Dynamic int8 LSTM: ONNX Runtime's com.microsoft DynamicQuantizeLSTM, in any graph.

The kernel takes int8 weights laid out ``[num_directions, input_size, 4*hidden_size]``
(W) and ``[num_directions, hidden_size, 4*hidden_size]`` (R), the transposes of the
ONNX LSTM's ``[num_directions, 4*hidden_size, input_size]``, with one scale and zero
point per direction (per tensor) or per direction and gate row (per channel); it
quantizes X and each step's hidden state at run time. Exported LSTMs often compute W,
R and B from the framework's weights (Slice, Concat, Unsqueeze of constants) in a way
fold-constants leaves alone (no single fold makes its input dead); that cone is
evaluated here, node by node, and dropped once the LSTM no longer reads it.
"""

from __future__ import annotations

__all__ = ["LstmTarget", "lstm_cost", "lstm_targets", "model_macs", "rewrite_lstm"]

import dataclasses
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as ir_passes
from onnx.reference import ReferenceEvaluator

from nnopt_graph.analysis.stats import _node_macs
from nnopt_graph.analysis.walk import STANDARD_DOMAINS, all_graphs, model_graphs
from nnopt_graph.core.constants import const_array
from nnopt_graph.core.names import NameScope
from nnopt_graph.passes.quantize.common import add_initializer, name_of

logger = logging.getLogger(__name__)

MS_DOMAIN = "com.microsoft"

# Ops whose constant inputs give a constant output that is cheap and exact to compute.
_FOLDABLE = frozenset(
    {
        "Identity",
        "Slice",
        "Concat",
        "Unsqueeze",
        "Squeeze",
        "Reshape",
        "Transpose",
        "Gather",
        "Split",
        "Cast",
        "Flatten",
    }
)
_FOLD_DEPTH = 8


@dataclasses.dataclass
class LstmTarget:
    """An LSTM that can run as DynamicQuantizeLSTM, with its constant W, R (and B)."""

    node: ir.Node
    graph: ir.Graph
    key: tuple[int, int]  # (graph index in model_graphs order, node index): stable in clones
    w: np.ndarray  # [dirs, 4H, I]
    r: np.ndarray  # [dirs, 4H, H]
    b: np.ndarray | None  # [dirs, 8H], when computed here (else the node's own input)


def _fold(value: ir.Value | None, opset: int, depth: int = 0) -> np.ndarray | None:
    """The constant array ``value`` holds, evaluating a small cone of foldable ops."""
    if value is None:
        return None
    array = const_array(value)
    if array is not None or depth >= _FOLD_DEPTH:
        return array
    producer = value.producer()
    if (
        producer is None
        or producer.op_type not in _FOLDABLE
        or producer.domain not in STANDARD_DOMAINS
    ):
        return None
    feeds: dict[str, np.ndarray] = {}
    for i, inp in enumerate(producer.inputs):
        if inp is None:
            continue
        got = _fold(inp, opset, depth + 1)
        if got is None:
            return None
        feeds[f"in{i}"] = got
    proto = ir.serde.serialize_node(producer)
    del proto.input[:]
    proto.input.extend(f"in{i}" if v is not None else "" for i, v in enumerate(producer.inputs))
    del proto.output[:]
    proto.output.extend(f"out{i}" for i in range(len(producer.outputs)))
    try:
        evaluator = ReferenceEvaluator(proto, opsets={"": opset})
        results = list(evaluator.run(None, feeds))
    except Exception as exc:  # an op the reference runtime rejects: not constant here
        logger.debug("could not evaluate %s '%s': %s", producer.op_type, name_of(producer), exc)
        return None
    return np.asarray(results[producer.outputs.index(value)])


def _check(node: ir.Node, opset: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | str:
    """W, R and a computed B of a quantizable LSTM, or the reason it is skipped."""
    inputs = list(node.inputs) + [None] * (8 - len(node.inputs))
    x = inputs[0]
    # X has W's type (the schema's T): an unannotated X is float32 when W is.
    if x is None or x.dtype not in (None, ir.DataType.FLOAT):
        return "non-float-input"
    if node.attributes.get_int("layout", 0) != 0:
        return "batch-first-layout"
    w, r = _fold(inputs[1], opset), _fold(inputs[2], opset)
    if w is None or r is None:
        return "weight-not-constant"
    if w.dtype != np.float32 or r.dtype != np.float32:
        return "non-float32-weight"
    if w.ndim != 3 or r.ndim != 3 or w.shape[1] != r.shape[1] or r.shape[1] != 4 * r.shape[2]:
        return "unsupported-weight-shape"
    b = None
    if inputs[3] is not None and const_array(inputs[3]) is None:
        b = _fold(inputs[3], opset)
        if b is None:
            return "bias-not-constant"
    return w, r, b


def lstm_targets(model: ir.Model, exclude: set[str]) -> tuple[list[LstmTarget], dict[str, int]]:
    """LSTMs with constant float32 weights in the main graph and every subgraph; skips."""
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
    skipped: dict[str, int] = {}
    out = []
    for gi, graph in enumerate(model_graphs(model)):
        for ni, node in enumerate(graph):
            if node.op_type != "LSTM" or node.domain not in STANDARD_DOMAINS:
                continue
            checked: tuple[np.ndarray, np.ndarray, np.ndarray | None] | str
            checked = "excluded" if name_of(node) in exclude else _check(node, opset)
            if isinstance(checked, str):
                key = f"skipped-lstm-{checked}"
                skipped[key] = skipped.get(key, 0) + 1
                logger.debug("LSTM '%s' not quantized: %s", name_of(node), checked)
                continue
            assert isinstance(graph, ir.Graph)
            out.append(LstmTarget(node, graph, (gi, ni), *checked))
    functions = sum(
        1
        for graph in all_graphs(model)
        if isinstance(graph, ir.Function)
        for n in graph
        if n.op_type == "LSTM"
    )
    if functions:
        skipped["skipped-lstm-in-functions"] = functions
    return out, skipped


def _lstm_macs(node: ir.Node) -> int | None:
    """MACs of one LSTM run: steps x batch x 4H x (I + H) per direction; None if unknown."""
    x = node.inputs[0]
    w = node.inputs[1] if len(node.inputs) > 1 else None
    r = node.inputs[2] if len(node.inputs) > 2 else None
    dims = []
    for value in (x, w, r):
        shape = value.shape if value is not None else None
        if shape is None or not all(isinstance(d, int) and d >= 0 for d in shape):
            return None
        dims.append([d for d in shape if isinstance(d, int)])
    (steps, batch, inp), (dirs, gates, _), (_, _, hidden) = dims
    return dirs * steps * batch * gates * (inp + hidden)


def model_macs(
    model: ir.Model, shapes: Mapping[str, Sequence[int]]
) -> tuple[dict[tuple[int, int], int], int, int]:
    """MACs at these input shapes: per LSTM (by key), of subgraphs' other nodes; unknowns.

    The other Conv/Gemm/MatMul MACs are those inside subgraphs (node_macs counts the
    main graph's); the last count is of Conv/Gemm/MatMul nodes in any graph whose shapes
    stay unknown (their MACs are not in the ratio). Nodes inside Loop/Scan bodies count
    once, If branches both: an estimate for the cost model, not a profile.
    """
    clone = model.clone()
    for value in clone.graph.inputs:
        if value.name and value.name in shapes:
            value.shape = ir.Shape(list(shapes[value.name]))
    for graph in model_graphs(clone):
        for node in graph:
            for value in node.outputs:
                value.shape = None
    try:
        ir_passes.ShapeInferencePass(strict_mode=False)(clone)
    except Exception as exc:  # advisory: unknown shapes count as unknown
        logger.debug("shape inference for the LSTM cost failed: %s", exc)
    lstm: dict[tuple[int, int], int] = {}
    other = unknown = 0
    for gi, graph in enumerate(model_graphs(clone)):
        for ni, node in enumerate(graph):
            if node.op_type == "LSTM" and node.domain in STANDARD_DOMAINS:
                macs = _lstm_macs(node)
                if macs:
                    lstm[(gi, ni)] = macs
            else:
                macs = _node_macs(node)
                unknown += macs is None
                other += (macs or 0) if gi > 0 else 0
    return lstm, other, unknown


def lstm_cost(target: LstmTarget, macs: int, speedup: float, dql_cost: float) -> float:
    """Modelled MACs saved by running one LSTM in dynamic int8 (negative: slower).

    int8 GEMMs do the LSTM's MACs ``speedup`` times faster; X is quantized once and
    each step's hidden state again (``dql_cost`` per element).
    """
    dirs, gates, inp = target.w.shape
    hidden = target.r.shape[2]
    steps_batch = macs / (dirs * gates * (inp + hidden))
    quantized = steps_batch * (inp + dirs * hidden)
    return macs - macs / speedup - dql_cost * quantized


def _quantize(weight: np.ndarray, per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 codes of a [dirs, 4H, K] weight, transposed to [dirs, K, 4H]; scales."""
    if per_channel:
        peak = np.abs(weight).max(axis=2)  # [dirs, 4H]
        shape: tuple[int, ...] = (*peak.shape, 1)
    else:
        peak = np.abs(weight).reshape(weight.shape[0], -1).max(axis=1)  # [dirs]
        shape = (peak.shape[0], 1, 1)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    codes = np.clip(np.rint(weight / scale.reshape(shape)), -127, 127).astype(np.int8)
    return np.ascontiguousarray(codes.transpose(0, 2, 1)), scale


def _drop_dead(value: ir.Value | None) -> None:
    """Remove what computed ``value`` once nothing reads it (nodes, then initializers)."""
    if value is None or value.uses() or value.is_graph_output() or value.is_graph_input():
        return
    producer = value.producer()
    if producer is not None:
        if any(o.uses() or o.is_graph_output() for o in producer.outputs):
            return
        inputs = list(producer.inputs)
        assert producer.graph is not None
        producer.graph.remove(producer, safe=True)
        for inp in inputs:
            _drop_dead(inp)
        return
    graph, name = value.graph, value.name
    if value.is_initializer() and graph is not None and name and name in graph.initializers:
        graph.initializers.pop(name)


def rewrite_lstm(model: ir.Model, target: LstmTarget, per_channel: bool) -> int:
    """Replace one LSTM by DynamicQuantizeLSTM (same outputs, same name); bytes saved."""
    node, graph = target.node, target.graph
    names = NameScope.for_graph(graph)
    base = name_of(node) or "lstm"
    w_q, w_scale = _quantize(target.w, per_channel)
    r_q, r_scale = _quantize(target.r, per_channel)
    old_inputs = list(node.inputs) + [None] * (8 - len(node.inputs))
    bias = old_inputs[3]
    if target.b is not None:
        bias = add_initializer(graph, names, f"{base}_B", target.b.astype(np.float32))

    def const(suffix: str, array: np.ndarray) -> ir.Value:
        return add_initializer(graph, names, f"{base}_{suffix}", array)

    inputs = [
        old_inputs[0],
        const("W_int8", w_q),
        const("R_int8", r_q),
        bias,
        *old_inputs[4:8],
        const("W_scale", w_scale),
        const("W_zero_point", np.zeros(w_scale.shape, np.int8)),
        const("R_scale", r_scale),
        const("R_zero_point", np.zeros(r_scale.shape, np.int8)),
    ]
    attrs = [
        ir.Attr(a.name, a.type, a.value) for a in node.attributes.values() if a.name != "layout"
    ]
    new = ir.Node(
        MS_DOMAIN,
        "DynamicQuantizeLSTM",
        inputs,
        attrs,
        num_outputs=len(node.outputs),
        name=name_of(node) or None,
    )
    graph.insert_before(node, new)
    for old, out in zip(node.outputs, new.outputs, strict=True):
        out.type, out.shape = old.type, old.shape
        ir.convenience.replace_all_uses_with(old, out, replace_graph_outputs=True)
        keep = old.name
        old.name = None
        out.name = keep
    graph.remove(node, safe=True)
    for value in old_inputs[1:4]:
        _drop_dead(value)
    if MS_DOMAIN not in model.opset_imports:
        model.opset_imports[MS_DOMAIN] = 1
    logger.info("quantize-dynamic-int8: LSTM '%s' as DynamicQuantizeLSTM", name_of(node))
    # float32 weights (4 bytes) stored as int8 (1 byte), when nothing else reads them
    return int(target.w.nbytes + target.r.nbytes - w_q.nbytes - r_q.nbytes)

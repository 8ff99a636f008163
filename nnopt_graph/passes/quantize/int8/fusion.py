"""The fusion check: QDQ that ONNX Runtime left standalone goes back to float."""

from __future__ import annotations

import logging
from typing import Any

import onnx
import onnx_ir as ir

from nnopt_graph.passes.quantize.common import (
    name_of,
)
from nnopt_graph.passes.quantize.int8.edit import (
    _Editor,
)

logger = logging.getLogger(__name__)


def _int8_values(graph: onnx.GraphProto) -> set[str]:
    """Values on the quantized side: Q outputs, DQ inputs, QLinear*/QGemm inputs and outputs."""
    values: set[str] = set()
    for node in graph.node:
        if node.op_type == "QuantizeLinear":
            values.update(node.output)
        elif node.op_type == "DequantizeLinear":
            values.update(node.input[:1])
        elif node.op_type.startswith(("QLinear", "QGemm")):
            values.update(node.input)
            values.update(node.output)
    return values


def _layout_transposes(graph: onnx.GraphProto) -> int:
    """Transposes of quantized values: ORT's channels-last layout for its int8 kernels."""
    int8 = _int8_values(graph)
    return sum(
        1
        for node in graph.node
        if node.op_type == "Transpose" and (set(node.input) & int8 or set(node.output) & int8)
    )


def _optimized_node_names(
    model: ir.Model,
    runtime: Any,
    standalone: list[str] | None = None,
    layout: list[int] | None = None,
) -> set[str]:
    """Node names in the graph ONNX Runtime's CPU EP runs after all its optimizations.

    ``standalone`` receives the float-side value of every Quantize/Dequantize node left
    in the main graph, ``layout`` the count of Transposes next to int8 ops there (what
    the cost model charges for).
    """
    proto = runtime.optimized_graph(model)
    if layout is not None:
        layout.append(_layout_transposes(proto.graph))
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
    layout: list[int] = []
    for rounds in range(1, 9):  # noqa: B007  (reported after the loop)
        standalone, layout = [], []
        names = _optimized_node_names(model, runtime, standalone, layout)
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
        "layout-transposes": sum(layout),
    }

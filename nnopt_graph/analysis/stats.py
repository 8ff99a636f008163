"""Model statistics for inspect and the report: ops, params, bytes, FLOPs."""

from __future__ import annotations

__all__ = ["ModelSummary", "estimate_macs", "summarize"]

import collections
import dataclasses
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx_ir as ir
import onnx_ir.passes.common as ir_passes

from nnopt_graph.analysis.walk import all_nodes, model_graphs
from nnopt_graph.core.io import external_data_files, load
from nnopt_graph.core.tensor_size import size_and_bytes
from nnopt_graph.runtime.data import input_specs, resolve_shapes

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ModelSummary:
    """What ``inspect`` shows and the report records for a model."""

    path: str | None
    size_bytes: int | None
    ir_version: int
    opsets: dict[str, int]
    producer: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    op_histogram: dict[str, int]
    nodes: int
    subgraphs: int
    functions: int
    initializers: int
    params: int
    weight_bytes: int
    macs: int | None
    flops: int | None
    flops_shapes: dict[str, list[int]]
    flops_unknown_nodes: int = 0

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)


def _dims(value: ir.Value) -> list[int | str | None] | None:
    if value.shape is None:
        return None
    return [d if isinstance(d, int) else d.value for d in value.shape]


def _static(value: ir.Value | None) -> list[int] | None:
    if value is None or value.shape is None:
        return None
    dims = list(value.shape)
    if all(isinstance(d, int) for d in dims):
        return dims  # type: ignore[return-value]
    return None


_MAC_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def _node_macs(node: ir.Node) -> int | None:
    """Multiply-accumulates of one Conv/ConvTranspose/Gemm/MatMul; None if shapes unknown."""
    op = node.op_type
    if node.domain not in ("", "ai.onnx") or op not in _MAC_OPS:
        return 0
    if len(node.inputs) < 2:
        return None
    a, w = _static(node.inputs[0]), _static(node.inputs[1])
    out = _static(node.outputs[0])
    if op == "Conv" and w is not None and out is not None:
        return math.prod(out) * math.prod(w[1:])
    if op == "ConvTranspose" and w is not None and a is not None:
        return math.prod(a) * math.prod(w[1:])
    if op == "Gemm" and a is not None and out is not None and len(a) == 2:
        trans_a = node.attributes.get("transA")
        k = a[0] if trans_a is not None and trans_a.as_int() else a[1]
        return math.prod(out) * k
    if op == "MatMul" and a is not None and out is not None and a:
        return math.prod(out) * a[-1]
    return None


def estimate_macs(model: ir.Model) -> tuple[int, int]:
    """(MACs of Conv/ConvTranspose/Gemm/MatMul with known shapes, nodes with unknown shapes).

    Nodes inside Loop/Scan bodies are counted once, not per iteration.
    """
    total = unknown = 0
    for node in all_nodes(model):
        macs = _node_macs(node)
        if macs is None:
            unknown += 1
        else:
            total += macs
    return total, unknown


def _io(values: Sequence[ir.Value]) -> list[dict[str, Any]]:
    return [
        {"name": v.name, "dtype": str(v.dtype) if v.dtype else None, "shape": _dims(v)}
        for v in values
        if not v.is_initializer()
    ]


def _inferred_macs(model: ir.Model, shapes: Mapping[str, Sequence[int]]) -> tuple[int, int]:
    """MACs after shape inference with concrete input shapes; modifies ``model``."""
    for value in model.graph.inputs:
        if value.name and value.name in shapes:
            value.shape = ir.Shape(shapes[value.name])
    ir_passes.ShapeInferencePass(strict_mode=False)(model)
    return estimate_macs(model)


def _on_disk_bytes(path: Path, model: ir.Model) -> int:
    """The file's size plus the external-data files its tensors read from."""
    return path.stat().st_size + sum(p.stat().st_size for p in external_data_files(model))


def summarize(
    model: ir.Model | str | os.PathLike[str],
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    with_flops: bool = True,
    path: str | os.PathLike[str] | None = None,
    size_bytes: int | None = None,
) -> ModelSummary:
    """Summarize a model; FLOPs need shapes, so dynamic inputs get concrete sizes.

    When given a path the model is loaded here (lazily) and may be modified freely.
    An in-memory model is never modified: its FLOPs are counted on a clone (which
    shares the tensors), and only when it has Conv/ConvTranspose/Gemm/MatMul nodes.

    Args:
        model: the model, or the path of an ONNX file.
        input_shapes: concrete shapes for dynamic inputs, by name (for FLOPs).
        with_flops: count MACs/FLOPs (shape inference with concrete input shapes).
        path: for an in-memory model, the file it was loaded from or written to; its
            size (and its external data's) is the summary's size unless ``size_bytes``
            is given.
        size_bytes: for an in-memory model, the size of its file(s) on disk.
    """
    loaded = not isinstance(model, ir.Model)
    if not isinstance(model, ir.Model):
        path = Path(model)
        model = load(path)
        size_bytes = _on_disk_bytes(path, model)
    elif path is not None:
        path = Path(path)
        if size_bytes is None:
            size_bytes = _on_disk_bytes(path, model)
    nodes = list(all_nodes(model))
    histogram = collections.Counter(
        f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type for n in nodes
    )
    graphs = model_graphs(model)
    params = weight_bytes = initializers = 0
    for graph in graphs:
        for value in graph.initializers.values():
            initializers += 1
            if value.const_value is not None:
                size, nbytes = size_and_bytes(value.const_value)
                params += size
                weight_bytes += nbytes
    for node in nodes:
        # Weights held in Constant nodes (PaddlePaddle, spox exports) count as weights.
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            attr = node.attributes.get("value")
            if attr is not None and attr.type == ir.AttributeType.TENSOR:
                size, nbytes = size_and_bytes(attr.as_tensor())
                params += size
                weight_bytes += nbytes
    summary = ModelSummary(
        path=str(path) if path else None,
        size_bytes=size_bytes,
        ir_version=model.ir_version,
        opsets=dict(model.opset_imports),
        producer=f"{model.producer_name or ''} {model.producer_version or ''}".strip(),
        inputs=_io(model.graph.inputs),
        outputs=_io(model.graph.outputs),
        op_histogram=dict(histogram.most_common()),
        nodes=sum(histogram.values()),
        subgraphs=len(graphs) - 1,
        functions=len(model.functions),
        initializers=initializers,
        params=params,
        weight_bytes=weight_bytes,
        macs=None,
        flops=None,
        flops_shapes={},
    )
    if with_flops:
        shapes = resolve_shapes(input_specs(model), input_shapes, warn=False)
        # Only Conv/ConvTranspose/Gemm/MatMul count: without them, no inference to run.
        if any(n.op_type in _MAC_OPS and n.domain in ("", "ai.onnx") for n in nodes):
            macs, unknown = _inferred_macs(model if loaded else model.clone(), shapes)
        else:
            macs, unknown = 0, 0
        if unknown:
            logger.info(
                "FLOPs: %d matmul/conv nodes have unknown shapes and are not counted", unknown
            )
        summary.flops_unknown_nodes = unknown
        summary.macs = macs
        summary.flops = 2 * macs
        summary.flops_shapes = {k: list(v) for k, v in shapes.items()}
    return summary

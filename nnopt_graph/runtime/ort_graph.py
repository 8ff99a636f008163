"""What ONNX Runtime makes of a model: its optimized CPU graph (fusions, layout, weights)."""

from __future__ import annotations

__all__ = ["OrtGraph", "differences", "ort_optimized_graph"]

import collections
import dataclasses
import hashlib
import logging
import os
import tempfile
from pathlib import Path

import onnx
from onnx import numpy_helper

from nnopt_graph.runtime.session import create_session

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class OrtGraph:
    """ONNX Runtime's optimized main graph of a model, names left out.

    Two models that ONNX Runtime runs alike give the same op counts, attributes per op
    and ``weights``; names differ freely, and so may the order (see ``differences``).

    Attributes:
        ops: ``domain:op_type`` of every node, in ORT's order.
        attributes: per node, its scalar/string/list attributes (sorted by name).
        weights: per initializer, ``(dtype, dims, digest of the bytes)``, sorted.
        value_info: number of value_info entries ORT kept.
    """

    ops: tuple[str, ...]
    attributes: tuple[tuple[tuple[str, object], ...], ...]
    weights: tuple[tuple[int, tuple[int, ...], str], ...]
    value_info: int

    @property
    def op_counts(self) -> dict[str, int]:
        """How many nodes of each ``domain:op_type``."""
        return dict(collections.Counter(self.ops))

    @property
    def fused(self) -> dict[str, int]:
        """Counts of ORT's own (contrib, non-ONNX-domain) ops: its fusions and layouts."""
        return {op: n for op, n in self.op_counts.items() if not op.startswith(":")}


_SCALAR_KINDS = {
    onnx.AttributeProto.FLOAT,
    onnx.AttributeProto.INT,
    onnx.AttributeProto.STRING,
    onnx.AttributeProto.FLOATS,
    onnx.AttributeProto.INTS,
    onnx.AttributeProto.STRINGS,
}


def _attributes(node: onnx.NodeProto) -> tuple[tuple[str, object], ...]:
    items = []
    for attr in node.attribute:
        if attr.type in _SCALAR_KINDS:
            value = onnx.helper.get_attribute_value(attr)
            items.append((attr.name, tuple(value) if isinstance(value, list) else value))
    return tuple(sorted(items, key=lambda kv: kv[0]))


def _weight(tensor: onnx.TensorProto) -> tuple[int, tuple[int, ...], str]:
    data = numpy_helper.to_array(tensor).tobytes()
    return tensor.data_type, tuple(tensor.dims), hashlib.sha256(data).hexdigest()[:16]


def ort_optimized_graph(path: str | os.PathLike[str], threads: int = 2) -> OrtGraph:
    """The model's graph after ONNX Runtime's CPU optimizations (all levels), summarized.

    Args:
        path: the model file.
        threads: intra-op threads of the session (some layouts depend on it).
    """
    with tempfile.TemporaryDirectory(prefix="nnopt-ortgraph-") as tmp:
        dest = Path(tmp, "optimized.onnx")
        create_session(path, "cpu", threads=threads, optimized_model_path=str(dest))
        model = onnx.load(str(dest))
    graph = model.graph
    return OrtGraph(
        ops=tuple(f"{n.domain}:{n.op_type}" for n in graph.node),
        attributes=tuple(_attributes(n) for n in graph.node),
        weights=tuple(sorted(_weight(t) for t in graph.initializer)),
        value_info=len(graph.value_info),
    )


def differences(before: OrtGraph, after: OrtGraph) -> list[str]:
    """Ways ``after`` runs differently from ``before`` under ORT, one line each (none: alike).

    Compared as multisets: op counts, each op's attributes, weight bytes. Node order is
    left out: ORT's saved order varies between two sessions of one model (measured on
    the zoo yolo-block: 2 of 4 sessions differ in order).
    """
    out = []
    if before.op_counts != after.op_counts:
        keys = sorted(set(before.op_counts) | set(after.op_counts))
        changed = [
            f"{k} {before.op_counts.get(k, 0)}->{after.op_counts.get(k, 0)}"
            for k in keys
            if before.op_counts.get(k, 0) != after.op_counts.get(k, 0)
        ]
        out.append("op counts: " + ", ".join(changed))
    else:
        attrs_before = collections.Counter(zip(before.ops, before.attributes, strict=True))
        attrs_after = collections.Counter(zip(after.ops, after.attributes, strict=True))
        if attrs_before != attrs_after:
            differ = (attrs_before - attrs_after) + (attrs_after - attrs_before)
            ops = sorted({op for op, _ in differ})
            out.append("attributes differ on " + ", ".join(ops))
    if before.weights != after.weights:
        gone = collections.Counter(before.weights) - collections.Counter(after.weights)
        new = collections.Counter(after.weights) - collections.Counter(before.weights)
        out.append(f"weights: {sum(gone.values())} only before, {sum(new.values())} only after")
    return out

"""The speed search's pieces: node families, one quantized build, timed latency ratios."""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import onnx_ir as ir

from nnopt_graph.passes.quantize.int8.plan import TARGET_OPS
from nnopt_graph.runtime.data import Dataset

# int8 is kept only when its median latency ratio is below this: timing noise on a shared
# machine must not let a slower model through.
_SPEED_MARGIN = 0.97


def _kind(node: ir.Node) -> str:
    """The speed search's unit: a family of nodes that is kept in int8 or not as a whole."""
    op = node.op_type
    if op == "Conv":
        return "conv-grouped" if node.attributes.get_int("group", 1) > 1 else "conv"
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

"""Calibration for sparsify: each layer's input statistics, in sweeps that fit memory."""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_ir as ir

from nnopt_graph.passes.sparsity.layers import ActivationStats, Layer

if TYPE_CHECKING:
    from nnopt_graph.runtime.services import RuntimeServices


def _tap_name(layer: Layer) -> str:
    value = layer.activation
    assert value is not None and value.name is not None
    return value.name


def _stats_key(layer: Layer) -> tuple[Any, ...]:
    """Layers with the same key see the same columns: one set of statistics serves them."""
    if layer.op == "Conv":
        return (id(layer),)
    return (_tap_name(layer), layer.k, layer.op == "Gemm" and layer.trans_a)


def _calibrate(
    runtime: RuntimeServices,
    model: ir.Model,
    layers: list[Layer],
    dataset: Any,
    hessian: bool,
    reference: ir.Model | None = None,
) -> dict[int, ActivationStats]:
    """Run the model on the calibration data, folding each layer's input into stats.

    With a ``reference`` model (the dense original), both run on every feed and the
    statistics also hold the cross term with the reference's inputs (``match-dense``).
    Layers reading the same input (Q, K and V projections) share one set of statistics.
    """
    shared: dict[tuple[Any, ...], ActivationStats] = {}
    stats: dict[int, ActivationStats] = {}
    for layer in layers:
        key = _stats_key(layer)
        if key not in shared:
            shared[key] = ActivationStats(layer, hessian, cross=reference is not None)
        stats[id(layer)] = shared[key]
    by_tap: dict[str, list[ActivationStats]] = collections.defaultdict(list)
    for stat in shared.values():
        by_tap[_tap_name(stat.layer)].append(stat)

    def on_batch(batch: dict[str, np.ndarray]) -> None:
        for name, array in batch.items():
            for stat in by_tap[name]:
                stat.update(array)

    def on_pair(ref: dict[str, np.ndarray], batch: dict[str, np.ndarray]) -> None:
        for name, array in batch.items():
            for stat in by_tap[name]:
                stat.update(array, ref[name])

    if reference is None:
        runtime.capture(model, list(by_tap), dataset, on_batch, threads=None)
    else:
        runtime.capture_pair(reference, model, list(by_tap), dataset, on_pair)
    return stats


def _sweeps(layers: list[Layer], hessian: bool, budget: int, sequential: bool) -> list[list[Layer]]:
    """Split layers into calibration runs: by memory budget, or one per layer input."""
    if sequential:
        by_tap: dict[str, list[Layer]] = {}
        for layer in layers:
            by_tap.setdefault(_tap_name(layer), []).append(layer)
        return list(by_tap.values())
    sweeps: list[list[Layer]] = [[]]
    used = 0
    for layer in layers:
        size = ActivationStats.nbytes(layer, hessian)
        if sweeps[-1] and used + size > budget:
            sweeps.append([])
            used = 0
        sweeps[-1].append(layer)
        used += size
    return [s for s in sweeps if s]

"""Streaming access to intermediate activations on calibration data."""

from __future__ import annotations

__all__ = ["MinMaxStats", "run_with_taps"]

import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir

from nnopt_graph.core import io
from nnopt_graph.core.progress import track
from nnopt_graph.runtime.data import Dataset, input_specs
from nnopt_graph.runtime.session import create_session

logger = logging.getLogger(__name__)


def run_with_taps(
    model: ir.Model,
    values: Sequence[str],
    dataset: Dataset,
    on_batch: Callable[[dict[str, np.ndarray]], None],
    *,
    batch_size: int = 1,
    threads: int | None = None,
) -> int:
    """Run the model on every feed and hand the named main-graph values to ``on_batch``.

    The model is not modified: a clone with the values added as outputs is written to a
    temporary file (weights stay where they are) and run on the CPU EP. Only one
    batch's activations are in memory at a time, so memory does not grow with the
    number of samples. Feeds hold ``batch_size`` samples where the model's batch axis is
    dynamic, and the declared number where it is fixed (see ``Dataset.fit``). Returns
    the number of feeds run.
    """
    dataset = dataset.fit(input_specs(model))
    clone = model.clone()
    by_name = {v.name: v for v in clone.graph.inputs}
    for node in clone.graph:
        for out in node.outputs:
            by_name[out.name] = out
    by_name.update(clone.graph.initializers)
    taps = []
    for name in values:
        value = by_name.get(name)
        if value is None:
            raise KeyError(f"no main-graph value named '{name}'")
        if value not in clone.graph.outputs:
            clone.graph.outputs.append(value)
        taps.append(name)
    with tempfile.TemporaryDirectory(prefix="nnopt-calib-") as tmp:
        path = Path(tmp, "taps.onnx")
        io.save(clone, path)
        session = create_session(path, "cpu", threads=threads)
        count = 0
        total = dataset.feed_count(batch_size)
        for feed in track(dataset.batches(batch_size), "calibrating", total):
            outputs = session.run(taps, feed)
            on_batch(dict(zip(taps, outputs, strict=True)))
            count += 1
    return count


class MinMaxStats:
    """Running minimum and maximum per value (what min-max calibration needs)."""

    def __init__(self) -> None:
        self.low: dict[str, float] = {}
        self.high: dict[str, float] = {}

    def __call__(self, batch: dict[str, np.ndarray]) -> None:
        """Fold one batch in."""
        for name, array in batch.items():
            if array.size == 0:
                continue
            lo, hi = float(np.min(array)), float(np.max(array))
            self.low[name] = min(self.low.get(name, lo), lo)
            self.high[name] = max(self.high.get(name, hi), hi)

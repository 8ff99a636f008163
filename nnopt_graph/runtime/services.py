"""What a pass may ask of ONNX Runtime, handed to it through the PassContext.

Passes never open a session or write a temporary model themselves: they call these
services, so how a model is run (which EP, threads, temporary files, isolation) is decided
here, once.
"""

from __future__ import annotations

__all__ = ["RuntimeServices", "TappedModel"]

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as ir_passes

from nnopt_graph.runtime.bench import BenchResult, benchmark
from nnopt_graph.runtime.calibrate import run_with_taps
from nnopt_graph.runtime.data import Dataset, input_specs
from nnopt_graph.runtime.quant_bench import LatencyComparison, compare_latency
from nnopt_graph.runtime.scratch import scratch_file
from nnopt_graph.runtime.session import available_eps, create_session


class TappedModel:
    """A resident session computing only some named values of a model, feed by feed."""

    def __init__(self, session: Any, names: Sequence[str]) -> None:
        self._session = session
        self.names = list(names)
        self._inputs = {i.name for i in session.get_inputs()}

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The named values for one feed (entries the model does not take are ignored)."""
        outputs = self._session.run(
            self.names, {k: v for k, v in feed.items() if k in self._inputs}
        )
        return dict(zip(self.names, outputs, strict=True))


class RuntimeServices:
    """ONNX Runtime work on behalf of passes (CPU EP)."""

    def capture(
        self,
        model: ir.Model,
        values: Sequence[str],
        dataset: Dataset,
        on_batch: Callable[[dict[str, np.ndarray]], None],
        *,
        batch_size: int = 1,
        threads: int | None = 2,
    ) -> int:
        """Hand the named main-graph values of every feed to ``on_batch``; returns the feeds run."""
        return run_with_taps(
            model, values, dataset, on_batch, batch_size=batch_size, threads=threads
        )

    def capture_pair(
        self,
        reference: ir.Model,
        model: ir.Model,
        values: Sequence[str],
        dataset: Dataset,
        on_batch: Callable[[dict[str, np.ndarray], dict[str, np.ndarray]], None],
        *,
        threads: int | None = None,
    ) -> int:
        """Per feed, hand the named main-graph values of both models to ``on_batch``.

        ``on_batch(reference_values, model_values)`` sees the two models' values on the
        same feed (one sample a feed, or the declared batch where it is fixed), one feed
        in memory at a time. Returns the feeds run.
        """
        dataset = dataset.fit(input_specs(model))
        count = 0
        with (
            self.tapped(reference, values, threads=threads) as ref,
            self.tapped(model, values, threads=threads) as cand,
        ):
            for feed in dataset.batches(1):
                on_batch(ref.run(feed), cand.run(feed))
                count += 1
        return count

    def ep_for(self, target: str) -> str:
        """The execution provider to measure ``target`` on here: itself when present, else CPU."""
        return target if target in available_eps() else "cpu"

    @contextlib.contextmanager
    def tapped(
        self, model: ir.Model, names: Sequence[str], *, threads: int | None = None
    ) -> Iterator[TappedModel]:
        """A session for a copy of ``model`` whose outputs are the named main-graph values."""
        clone = model.clone()
        by_name = {v.name: v for v in clone.graph.inputs}
        by_name.update({v.name: v for n in clone.graph for v in n.outputs})
        clone.graph.outputs.clear()
        for name in names:
            clone.graph.outputs.append(by_name[name])
        ir_passes.RemoveUnusedNodesPass()(clone)
        with scratch_file(clone, "tapped") as path:
            yield TappedModel(create_session(path, "cpu", threads=threads), names)

    def benchmark(
        self, models: Sequence[onnx.ModelProto], ep: str, **options: Any
    ) -> list[BenchResult]:
        """Interleaved timing of small models on one EP (see ``runtime.bench.benchmark``)."""
        with contextlib.ExitStack() as stack:
            paths = [
                stack.enter_context(scratch_file(ir.from_proto(m), f"bench{i}"))
                for i, m in enumerate(models)
            ]
            return benchmark(paths, [ep], **options)

    def optimized_graph(self, model: ir.Model) -> onnx.ModelProto:
        """The graph ONNX Runtime's CPU EP runs after all its optimizations (fusions)."""
        with scratch_file(model, "check") as source:
            optimized = source.with_name("check.optimized.onnx")
            create_session(source, "cpu", threads=1, optimized_model_path=str(optimized))
            return onnx.load(str(optimized), load_external_data=False)

    def outputs(
        self,
        models: Sequence[ir.Model],
        dataset: Dataset,
        names: Sequence[str] | None = None,
        *,
        threads: int | None = 2,
        batch_size: int = 1,
    ) -> Iterator[list[dict[str, np.ndarray]]]:
        """Per feed, each model's outputs by name (``names``, or each model's graph outputs).

        Feed entries a model does not take are left out of its run.
        """
        with contextlib.ExitStack() as stack:
            sessions: list[Any] = []
            for i, model in enumerate(models):
                path = stack.enter_context(scratch_file(model, f"model{i}"))
                sessions.append(create_session(path, "cpu", threads=threads))
            wanted = [
                list(names) if names is not None else [o.name for o in s.get_outputs()]
                for s in sessions
            ]
            takes = [{i.name for i in s.get_inputs()} for s in sessions]
            for feed in dataset.batches(batch_size):
                yield [
                    dict(
                        zip(
                            w, s.run(w, {k: v for k, v in feed.items() if k in inputs}), strict=True
                        )
                    )
                    for s, w, inputs in zip(sessions, wanted, takes, strict=True)
                ]

    def output_names(self, model: ir.Model) -> list[str]:
        """The output names ONNX Runtime reports for a model."""
        with scratch_file(model) as path:
            return [o.name for o in create_session(path, "cpu", threads=1).get_outputs()]

    def latency(
        self, models: Sequence[ir.Model], feed: Mapping[str, np.ndarray], **options: Any
    ) -> LatencyComparison:
        """Interleaved CPU latency of the models on one feed (see ``compare_latency``)."""
        with contextlib.ExitStack() as stack:
            paths = [
                stack.enter_context(scratch_file(m, f"bench{i}")) for i, m in enumerate(models)
            ]
            return compare_latency(paths, feed, **options)

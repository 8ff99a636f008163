"""Where candidates are evaluated: local processes (default) or Ray tasks on a cluster."""

from __future__ import annotations

__all__ = ["LocalExecutor", "RayExecutor", "make_executor"]

import concurrent.futures
import logging
import multiprocessing
import os
from collections.abc import Sequence
from typing import Any

from nnopt_graph.errors import BadInputError
from nnopt_graph.search.evaluate import evaluate_candidate

logger = logging.getLogger(__name__)


class LocalExecutor:
    """A pool of ``workers`` processes (at most the machine's cores), spawned, not forked."""

    def __init__(self, workers: int) -> None:
        cores = os.cpu_count() or 1
        self.workers = max(1, min(workers, cores))
        self._pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=self.workers, mp_context=multiprocessing.get_context("spawn")
        )

    def map(self, jobs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Evaluate the jobs in parallel; results in job order."""
        return list(self._pool.map(evaluate_candidate, jobs))

    def close(self) -> None:
        """Stop the worker processes."""
        self._pool.shutdown()


class RayExecutor:
    """Each evaluation is a Ray task on an existing cluster (or a local one already started).

    Tasks ask for one CPU; a GPU target's tasks also ask for one GPU. When the cluster
    declares a resource named ``nnopt-target-<target>`` (``ray start --resources``), tasks
    ask for it, so latency is measured on workers of the target kind. Paths in the jobs
    must be readable and writable on the workers (a shared file system). At most
    ``workers`` tasks are in flight: the cluster may be shared.
    """

    def __init__(self, address: str, target: str, workers: int) -> None:
        try:
            import ray
        except ImportError as exc:
            raise BadInputError("--ray needs Ray: pip install 'nnopt-graph[distributed]'") from exc
        if not ray.is_initialized():
            try:
                ray.init(address=address, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise BadInputError(f"--ray {address}: cannot connect: {exc}") from exc
        self._ray = ray
        self.workers = workers
        label = f"nnopt-target-{target}"
        options: dict[str, Any] = {"num_cpus": 1}
        if target != "cpu":
            options["num_gpus"] = 1
        if label in ray.cluster_resources():
            options["resources"] = {label: 1}
        self._task = ray.remote(evaluate_candidate).options(**options)

    def map(self, jobs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run the jobs as Ray tasks, at most ``workers`` at once; results in job order."""
        ray = self._ray
        refs: list[Any] = []
        running: list[Any] = []
        for job in jobs:
            if len(running) >= self.workers:
                _, running = ray.wait(running, num_returns=1)
            ref = self._task.remote(job)
            refs.append(ref)
            running.append(ref)
        return list(ray.get(refs))

    def close(self) -> None:
        """Leave the cluster running (it is not ours to stop)."""


def make_executor(ray: str | None, target: str, workers: int) -> LocalExecutor | RayExecutor:
    """The Ray executor when ``ray`` names a cluster (``auto`` or an address), else local."""
    if ray:
        return RayExecutor(ray, target, workers)
    return LocalExecutor(workers)

"""ONNX Runtime sessions per execution provider, and running a model on a dataset."""

from __future__ import annotations

__all__ = [
    "EP_PROVIDERS",
    "available_eps",
    "create_session",
    "load_problem",
    "ort_error_text",
    "run_dataset",
]

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort

from nnopt_graph.errors import BadInputError
from nnopt_graph.runtime.data import Dataset

logger = logging.getLogger(__name__)

# ONNX Runtime's own log lines (graph-optimizer notes, EP fallbacks) would leak into the
# terminal before our one-line error; the CLI turns them back on under --debug.
ort.set_default_logger_severity(3)

EP_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def available_eps() -> list[str]:
    """Short names of the execution providers this ONNX Runtime build offers."""
    have = set(ort.get_available_providers())
    return [short for short, full in EP_PROVIDERS.items() if full in have]


def create_session(
    model: str | os.PathLike[str] | bytes,
    ep: str = "cpu",
    *,
    threads: int | None = None,
    optimization: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    optimized_model_path: str | None = None,
) -> ort.InferenceSession:
    """A session on exactly the requested EP (never silently the CPU instead).

    Raises:
        BadInputError: the EP is unknown or not available in this ONNX Runtime build.
    """
    if ep not in EP_PROVIDERS:
        raise BadInputError(f"unknown execution provider '{ep}' (known: {', '.join(EP_PROVIDERS)})")
    if ep not in available_eps():
        raise BadInputError(
            f"execution provider '{ep}' is not available in this onnxruntime build "
            f"(available: {', '.join(available_eps())}); install nnopt-graph[gpu] for cuda/tensorrt"
        )
    options = ort.SessionOptions()
    options.graph_optimization_level = optimization
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if optimized_model_path:
        options.optimized_model_filepath = optimized_model_path
    providers = [EP_PROVIDERS[ep]]
    if ep != "cpu":
        providers.append("CPUExecutionProvider")  # for ops the GPU EP does not implement
    source = model if isinstance(model, bytes) else str(Path(model))
    return ort.InferenceSession(source, sess_options=options, providers=providers)


def run_dataset(
    session: ort.InferenceSession, dataset: Dataset, batch_size: int = 1
) -> Iterator[list[np.ndarray]]:
    """Each feed's outputs, in the session's output order."""
    names = [o.name for o in session.get_outputs()]
    for feed in dataset.batches(batch_size):
        yield session.run(names, feed)


def load_problem(model: str | os.PathLike[str]) -> str | None:
    """Why ONNX Runtime (CPU EP, no graph optimization) cannot load a model, or None.

    Run it under ``runtime.isolate.run_isolated``: some models crash ONNX Runtime.
    """
    try:
        create_session(
            model, "cpu", threads=1, optimization=ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        )
    except Exception as exc:
        return ort_error_text(exc)
    return None


def ort_error_text(exc: BaseException, limit: int = 300) -> str:
    """ONNX Runtime's error message on one line, without its C++ source location."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    # "/onnxruntime_src/.../file.h:46 void ns::Function(args...) " says where, not why.
    text = re.sub(r"/\S+\.(?:h|cc|cpp):\d+ [^()]*\([^()]*\)\s*", "", text)
    return text[:limit]

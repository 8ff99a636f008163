"""Verify a written model against the original: ONNX checker, ONNX Runtime, equal outputs."""

from __future__ import annotations

__all__ = ["check_written", "compare_written", "verify_written"]

import logging
import os
from pathlib import Path

import onnx

from nnopt_graph.check.compare import Comparison, compare_models
from nnopt_graph.check.equality import LOSSLESS, Tolerance
from nnopt_graph.core.sparse_format import has_sparse_initializers
from nnopt_graph.errors import CheckFailedError, one_line
from nnopt_graph.runtime.data import Dataset
from nnopt_graph.runtime.execute import ReferenceOutputs

logger = logging.getLogger(__name__)


def check_written(candidate: Path) -> None:
    """The ONNX checker's full check of a written file (sparse initializers densified).

    Raises:
        CheckFailedError: the checker rejects it.
    """
    try:
        proto = onnx.load(str(candidate), load_external_data=False)
        if has_sparse_initializers(proto):
            # The full check types sparse initializers as sparse tensors and rejects them
            # as inputs of ordinary ops; ONNX Runtime densifies them, so check that form.
            from nnopt_graph.core.sparse_format import densify_sparse_initializers

            densify_sparse_initializers(proto)
            onnx.checker.check_model(proto, full_check=True)
        else:
            del proto
            onnx.checker.check_model(str(candidate), full_check=True)
    except Exception as exc:
        raise CheckFailedError(f"ONNX checker rejects the output: {one_line(exc)}") from exc


def verify_written(
    reference: str | os.PathLike[str] | bytes | ReferenceOutputs,
    candidate: Path,
    dataset: Dataset,
    *,
    tolerance: Tolerance | None = LOSSLESS,
) -> Comparison:
    """Full ONNX check of the written file, then a per-sample comparison with the reference.

    With a ``tolerance`` (the lossless default), every output of every sample must be
    equal under it; without one (lossy pipelines, whose budget the guard enforces) only
    shapes and dtypes must match. ``reference`` may be the original's outputs on
    ``dataset`` computed when it was loaded: then only the written model is run (one
    session, not two).

    Raises:
        CheckFailedError: the checker rejects the file, ONNX Runtime cannot run it, an
            output changed shape or dtype, or the outputs are not equal.
    """
    if dataset.num_samples == 0:
        raise CheckFailedError("nothing to verify on: the data has no samples")
    check_written(candidate)
    return compare_written(reference, candidate, dataset, tolerance=tolerance)


def compare_written(
    reference: str | os.PathLike[str] | bytes | ReferenceOutputs,
    candidate: Path,
    dataset: Dataset,
    *,
    tolerance: Tolerance | None = LOSSLESS,
) -> Comparison:
    """``verify_written`` without the ONNX checker: the per-sample comparison alone.

    For callers that run ``check_written`` at the same time, in a process of its own.

    Raises:
        CheckFailedError: ONNX Runtime cannot run the file, an output changed shape or
            dtype, or the outputs are not equal.
    """
    if dataset.num_samples == 0:
        raise CheckFailedError("nothing to verify on: the data has no samples")
    result = compare_models(reference, candidate, dataset, tolerance=tolerance)
    for out in result.outputs:
        if out.problems:
            raise CheckFailedError(f"output '{out.name}': {', '.join(out.problems)}")
    if tolerance is not None and not result.equal:
        more = len(result.problems) - 1
        raise CheckFailedError(
            f"the output model is not equal to the input ({tolerance}): {result.problems[0]}"
            + (f" (+{more} more; {result.unequal_samples} of {result.samples} samples differ)")
        )
    logger.info(
        "verified %s: equal=%s, worst cosine %s over %d samples",
        candidate,
        result.equal,
        result.worst()["cosine"],
        result.samples,
    )
    return result

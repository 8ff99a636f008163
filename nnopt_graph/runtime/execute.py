"""Running a reference and a candidate model on the same feeds, one feed at a time."""

from __future__ import annotations

__all__ = [
    "ONE_SESSION_AT_A_TIME_BYTES",
    "REFERENCE_OUTPUT_LIMIT_BYTES",
    "ReferenceOutputs",
    "paired_outputs",
    "reference_outputs",
    "weights_size",
]

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nnopt_graph.core.progress import track
from nnopt_graph.errors import CheckFailedError, one_line
from nnopt_graph.runtime.data import Dataset
from nnopt_graph.runtime.isolate import retain_in_child
from nnopt_graph.runtime.session import create_session

# Above this, only one model is held in memory at a time (reference outputs are kept).
ONE_SESSION_AT_A_TIME_BYTES = 512 * 2**20

# reference_outputs keeps at most this many bytes of outputs (more: it gives up).
REFERENCE_OUTPUT_LIMIT_BYTES = 256 * 2**20

ModelSource = str | os.PathLike[str] | bytes


@dataclasses.dataclass
class ReferenceOutputs:
    """A reference model's outputs on every feed of a dataset, computed ahead of time."""

    names: list[str]
    outputs: list[list[Any]]


def weights_size(source: ModelSource) -> int:
    """Bytes of a model file and its side files (or of serialized bytes)."""
    if isinstance(source, bytes):
        return len(source)
    path = Path(source)
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())


def _session(source: ModelSource, label: str, threads: int | None) -> Any:
    try:
        session = create_session(source, "cpu", threads=threads)
    except Exception as exc:
        raise CheckFailedError(
            f"ONNX Runtime cannot load the {label} model: {one_line(exc)}"
        ) from exc
    if weights_size(source) <= ONE_SESSION_AT_A_TIME_BYTES:
        # In an isolated child it then lives until the exit instead of being torn down;
        # a large model's session is still dropped before the next one is made.
        retain_in_child(session)
    return session


def _run(
    session: Any, names: list[str], feed: dict[str, Any], label: str, source: str
) -> list[Any]:
    try:
        return list(session.run(names, feed))
    except Exception as exc:
        hint = "; pass --calib DATA or --input-shape" if label == "input" else ""
        raise CheckFailedError(
            f"ONNX Runtime cannot run the {label} model on the {source} inputs: "
            f"{one_line(exc)}{hint}"
        ) from exc


def _check_names(ref_names: list[str], cand_sess: Any) -> None:
    cand_names = [o.name for o in cand_sess.get_outputs()]
    if ref_names != cand_names:
        raise CheckFailedError(f"output names differ: {ref_names} vs {cand_names}")


def _nbytes(value: Any) -> int:
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, list):
        return sum(_nbytes(v) for v in value)
    return int(getattr(value, "nbytes", 0))


def reference_outputs(
    reference: ModelSource,
    dataset: Dataset,
    *,
    batch_size: int = 1,
    threads: int | None = None,
    limit_bytes: int = REFERENCE_OUTPUT_LIMIT_BYTES,
) -> ReferenceOutputs | None:
    """The reference's outputs on every feed (the session ``paired_outputs`` would use).

    Computing them once, when the input is first loaded, spares verification a second
    session of the input. None when they would exceed ``limit_bytes``.

    Raises:
        CheckFailedError: the model cannot be loaded or run (``paired_outputs``'s errors).
    """
    source = "generated" if dataset.source == "random" else "given"
    session = _session(reference, "input", threads)
    names = [o.name for o in session.get_outputs()]
    outputs = []
    total = 0
    for feed in dataset.batches(batch_size):
        outputs.append(_run(session, names, feed, "input", source))
        total += _nbytes(outputs[-1])
        if total > limit_bytes:
            return None
    return ReferenceOutputs(names, outputs)


def paired_outputs(
    reference: ModelSource | ReferenceOutputs,
    candidate: ModelSource,
    dataset: Dataset,
    *,
    batch_size: int = 1,
    threads: int | None = None,
) -> Iterator[tuple[list[str], list[Any], list[Any]]]:
    """(output names, reference outputs, candidate outputs) for each feed, CPU EP.

    Small models run side by side; large ones one after the other, so peak memory is one
    model plus the reference outputs rather than two models. Given ``ReferenceOutputs``
    (from ``reference_outputs`` on the same dataset and settings), only the candidate runs.

    Raises:
        CheckFailedError: either model cannot be loaded or run, or the output names differ.
    """
    source = "generated" if dataset.source == "random" else "given"
    if isinstance(reference, ReferenceOutputs):
        names = reference.names
        cand_sess = _session(candidate, "output", threads)
        _check_names(names, cand_sess)
        stored = reference.outputs
        for feed, ref_out in zip(
            dataset.batches(batch_size), track(stored, "verifying", len(stored)), strict=True
        ):
            yield names, ref_out, _run(cand_sess, names, feed, "output", source)
        return
    ref_sess = _session(reference, "input", threads)
    names = [o.name for o in ref_sess.get_outputs()]
    if weights_size(reference) > ONE_SESSION_AT_A_TIME_BYTES:
        ref_outputs = [
            _run(ref_sess, names, f, "input", source) for f in dataset.batches(batch_size)
        ]
        del ref_sess
        cand_sess = _session(candidate, "output", threads)
        _check_names(names, cand_sess)
        feeds = dataset.batches(batch_size)
        for feed, ref_out in zip(
            feeds, track(ref_outputs, "verifying", len(ref_outputs)), strict=True
        ):
            yield names, ref_out, _run(cand_sess, names, feed, "output", source)
        return
    cand_sess = _session(candidate, "output", threads)
    _check_names(names, cand_sess)
    for feed in track(dataset.batches(batch_size), "verifying", dataset.num_samples):
        ref_out = _run(ref_sess, names, feed, "input", source)
        yield names, ref_out, _run(cand_sess, names, feed, "output", source)

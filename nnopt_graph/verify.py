"""Verify a written model against the original: checker, ONNX Runtime load, outputs."""

from __future__ import annotations

__all__ = ["LOSSLESS_MIN_COSINE", "VerifyResult", "compare_models", "verify_written"]

import dataclasses
import logging
import math
import os
from pathlib import Path
from typing import Any

import onnx

from nnopt_graph.errors import CheckFailedError
from nnopt_graph.io import has_sparse_initializers
from nnopt_graph.progress import track
from nnopt_graph.runtime.data import Dataset
from nnopt_graph.runtime.fidelity import FidelityAccumulator, OutputFidelity
from nnopt_graph.runtime.session import create_session

logger = logging.getLogger(__name__)

# Lossless passes only re-associate float arithmetic; this is what "equal" means for them.
LOSSLESS_MIN_COSINE = 0.99999


@dataclasses.dataclass
class VerifyResult:
    """Per-output fidelity of a candidate model against its reference."""

    outputs: list[OutputFidelity]
    samples: int

    @property
    def cosine_min(self) -> float:
        """The worst output's cosine (1.0 for a model without outputs)."""
        return min((o.cosine for o in self.outputs), default=1.0)

    @property
    def shapes_match(self) -> bool:
        """Whether every output kept its shape."""
        return all(o.shape_match for o in self.outputs)

    def metric(self, name: str) -> float:
        """The worst value of a metric over outputs (max for errors, min for agreement)."""
        values = [getattr(o, name) for o in self.outputs if getattr(o, name) is not None]
        if not values:
            return math.nan
        return max(values) if name in {"max_abs", "rel_l2"} else min(values)

    def to_json(self) -> dict[str, Any]:
        """The report's fidelity entry."""
        return {
            "per_output": {o.name: o.to_json() for o in self.outputs},
            "cosine_min": self.cosine_min,
            "samples": self.samples,
        }


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _session(source: str | os.PathLike[str] | bytes, label: str, threads: int | None) -> Any:
    try:
        return create_session(source, "cpu", threads=threads)
    except Exception as exc:
        raise CheckFailedError(
            f"ONNX Runtime cannot load the {label} model: {_first_line(exc)}"
        ) from exc


def _run(
    session: Any, names: list[str], feed: dict[str, Any], label: str, source: str
) -> list[Any]:
    try:
        return session.run(names, feed)
    except Exception as exc:
        hint = "; pass --calib DATA or --input-shape" if label == "input" else ""
        raise CheckFailedError(
            f"ONNX Runtime cannot run the {label} model on the {source} inputs: "
            f"{_first_line(exc)}{hint}"
        ) from exc


def _weights_size(source: str | os.PathLike[str] | bytes) -> int:
    if isinstance(source, bytes):
        return len(source)
    path = Path(source)
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())


# Above this, only one model is held in memory at a time (reference outputs are kept).
_ONE_SESSION_AT_A_TIME_BYTES = 512 * 2**20


def compare_models(
    reference: str | os.PathLike[str] | bytes,
    candidate: str | os.PathLike[str] | bytes,
    dataset: Dataset,
    *,
    batch_size: int = 1,
    threads: int | None = None,
) -> VerifyResult:
    """Run both models on the same feeds (CPU EP) and measure their agreement.

    Small models run side by side; large ones one after the other, so peak memory is
    one model plus the reference outputs rather than two models.

    Raises:
        CheckFailedError: either model cannot be loaded or run, or their outputs differ
            in names or count.
    """
    source = "generated" if dataset.source == "random" else "given"
    ref_sess = _session(reference, "input", threads)
    ref_names = [o.name for o in ref_sess.get_outputs()]
    acc = FidelityAccumulator(ref_names)
    samples = 0
    if _weights_size(reference) > _ONE_SESSION_AT_A_TIME_BYTES:
        ref_outputs = [
            _run(ref_sess, ref_names, f, "input", source) for f in dataset.batches(batch_size)
        ]
        del ref_sess
        cand_sess = _session(candidate, "output", threads)
        _check_names(ref_names, cand_sess)
        for feed, ref_out in zip(
            dataset.batches(batch_size),
            track(ref_outputs, "verifying", len(ref_outputs)),
            strict=True,
        ):
            acc.add(ref_out, _run(cand_sess, ref_names, feed, "output", source))
            samples += 1
    else:
        cand_sess = _session(candidate, "output", threads)
        _check_names(ref_names, cand_sess)
        for feed in track(dataset.batches(batch_size), "verifying", dataset.num_samples):
            ref_out = _run(ref_sess, ref_names, feed, "input", source)
            acc.add(ref_out, _run(cand_sess, ref_names, feed, "output", source))
            samples += 1
    return VerifyResult(acc.result(), samples)


def _check_names(ref_names: list[str], cand_sess: Any) -> None:
    cand_names = [o.name for o in cand_sess.get_outputs()]
    if ref_names != cand_names:
        raise CheckFailedError(f"output names differ: {ref_names} vs {cand_names}")


def verify_written(
    reference: str | os.PathLike[str] | bytes,
    candidate: Path,
    dataset: Dataset,
    *,
    min_cosine: float | None = LOSSLESS_MIN_COSINE,
) -> VerifyResult:
    """Full ONNX check of the written file, then numeric comparison with the reference.

    Raises:
        CheckFailedError: the checker rejects the file, ONNX Runtime cannot run it, an
            output changed shape, or (when ``min_cosine`` is set) an output's cosine is
            below it.
    """
    try:
        proto = onnx.load(str(candidate), load_external_data=False)
        if has_sparse_initializers(proto):
            # The full check types sparse initializers as sparse tensors and rejects them
            # as inputs of ordinary ops; ONNX Runtime densifies them, so check that form.
            from nnopt_graph.passes.sparse_storage import densify_sparse_initializers

            densify_sparse_initializers(proto)
            onnx.checker.check_model(proto, full_check=True)
        else:
            del proto
            onnx.checker.check_model(str(candidate), full_check=True)
    except Exception as exc:
        raise CheckFailedError(f"ONNX checker rejects the output: {_first_line(exc)}") from exc
    result = compare_models(reference, candidate, dataset)
    for out in result.outputs:
        if not out.shape_match:
            raise CheckFailedError(f"output '{out.name}' changed shape")
        if min_cosine is not None and out.cosine < min_cosine:
            raise CheckFailedError(
                f"output '{out.name}' differs from the input model's: cosine {out.cosine:.6f} "
                f"< {min_cosine} (max_abs {out.max_abs:.3g})"
            )
    logger.info(
        "verified %s: cosine_min %.7f over %d feeds", candidate, result.cosine_min, result.samples
    )
    return result

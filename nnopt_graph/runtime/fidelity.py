"""Fidelity metrics between a reference model's outputs and a candidate's."""

from __future__ import annotations

__all__ = ["FidelityAccumulator", "OutputFidelity", "compare_arrays"]

import dataclasses
import math
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass
class OutputFidelity:
    """Agreement of one output over all compared samples."""

    name: str
    cosine: float
    max_abs: float
    rel_l2: float
    sqnr: float
    top1: float | None
    shape_match: bool
    samples: int

    def to_json(self) -> dict[str, object]:
        """JSON-safe dict (infinities as strings)."""
        return {
            k: (v if not (isinstance(v, float) and math.isinf(v)) else str(v))
            for k, v in dataclasses.asdict(self).items()
        }


class _Running:
    """Streaming sums for one output, so memory does not grow with the sample count."""

    def __init__(self) -> None:
        self.dot = 0.0
        self.ref_sq = 0.0
        self.cand_sq = 0.0
        self.err_sq = 0.0
        self.max_abs = 0.0
        self.top1_hits = 0
        self.top1_total = 0
        self.shape_match = True
        self.samples = 0
        self.nonfinite = False


def compare_arrays(reference: np.ndarray, candidate: np.ndarray) -> OutputFidelity:
    """Metrics for one pair of arrays (see FidelityAccumulator)."""
    acc = FidelityAccumulator(["output"])
    acc.add([reference], [candidate])
    return acc.result()[0]


class FidelityAccumulator:
    """Accumulates per-output fidelity over batches.

    cosine: of the flattened outputs; max_abs: largest absolute difference; rel_l2:
    ||ref - cand|| / ||ref||; sqnr: 10 log10(||ref||² / ||ref - cand||²) in dB;
    top1: fraction of positions whose argmax over the last axis agrees (for outputs
    whose last axis is larger than 1).
    """

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        self.running = [_Running() for _ in names]

    def add(self, reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> None:
        """Add one batch of outputs of both models."""
        for run, ref, cand in zip(self.running, reference, candidate, strict=True):
            ref = np.asarray(ref)
            cand = np.asarray(cand)
            run.samples += 1
            if ref.shape != cand.shape:
                run.shape_match = False
                continue
            if ref.dtype == np.bool_ or not np.issubdtype(ref.dtype, np.number):
                ref = ref.astype(np.float64)
                cand = cand.astype(np.float64)
            r = ref.astype(np.float64).ravel()
            c = cand.astype(np.float64).ravel()
            if not (np.all(np.isfinite(r)) and np.all(np.isfinite(c))):
                same = np.array_equal(r, c, equal_nan=True)
                run.nonfinite = run.nonfinite or not same
                r = np.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0)
                c = np.nan_to_num(c, nan=0.0, posinf=0.0, neginf=0.0)
            diff = r - c
            run.dot += float(r @ c)
            run.ref_sq += float(r @ r)
            run.cand_sq += float(c @ c)
            run.err_sq += float(diff @ diff)
            if diff.size:
                run.max_abs = max(run.max_abs, float(np.max(np.abs(diff))))
            if ref.ndim >= 1 and ref.shape[-1] > 1 and ref.size:
                ra = np.argmax(ref.reshape(-1, ref.shape[-1]), axis=-1)
                ca = np.argmax(cand.reshape(-1, cand.shape[-1]), axis=-1)
                run.top1_hits += int(np.sum(ra == ca))
                run.top1_total += int(ra.size)

    def result(self) -> list[OutputFidelity]:
        """Per-output metrics so far."""
        out = []
        for name, run in zip(self.names, self.running, strict=True):
            if not run.shape_match:
                out.append(
                    OutputFidelity(
                        name, 0.0, math.inf, math.inf, -math.inf, 0.0, False, run.samples
                    )
                )
                continue
            if run.ref_sq == 0.0 and run.cand_sq == 0.0:
                cosine = 1.0
            elif run.ref_sq == 0.0 or run.cand_sq == 0.0:
                cosine = 0.0
            else:
                cosine = run.dot / math.sqrt(run.ref_sq * run.cand_sq)
            if run.nonfinite:
                cosine = 0.0
            rel_l2 = (
                math.sqrt(run.err_sq / run.ref_sq)
                if run.ref_sq
                else (0.0 if run.err_sq == 0 else math.inf)
            )
            if run.err_sq == 0.0:
                sqnr = math.inf
            elif run.ref_sq == 0.0:
                sqnr = -math.inf
            else:
                sqnr = 10.0 * math.log10(run.ref_sq / run.err_sq)
            top1 = run.top1_hits / run.top1_total if run.top1_total else None
            out.append(
                OutputFidelity(
                    name, min(cosine, 1.0), run.max_abs, rel_l2, sqnr, top1, True, run.samples
                )
            )
        return out

"""Equality of two models' outputs: what "lossless" means, and what `compare` gates on.

Per output and per sample: the same shape and dtype; integer and bool outputs bit-exact;
float outputs element-wise within ``atol + rtol * |ref|`` (numpy ``allclose``) *and* a
relative L2 error within ``rel_l2``; NaN and Inf in the same places. Cosine never decides
equality: an output scaled by 2 has cosine 1.
"""

from __future__ import annotations

__all__ = ["LOSSLESS", "Tolerance", "array_problems", "value_problems"]

import dataclasses
import math
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """How close two float outputs must be to count as equal."""

    rtol: float
    atol: float
    rel_l2: float

    def __str__(self) -> str:
        return f"rtol={self.rtol:g} atol={self.atol:g} rel_l2<={self.rel_l2:g}"


# Lossless passes only re-associate float arithmetic (folded constants, fused BatchNorm,
# reordered sums). Measured with the default pipeline on every zoo model, the digits CNN
# and the real models (bench/results/equality_margin.md): the largest per-sample relative
# L2 error was 3.3e-7 (zoo bert-encoder, while the pipeline still ended with infer-shapes,
# which changed ONNX Runtime's fusions; today every output is bit-identical) and no element
# needed more than atol 4.8e-7 beside rtol 1e-4. The bounds below keep a margin of ~30x on
# that rel-L2 and ~20x on that atol, for fusions a future ORT may change; an output
# off by a factor, an offset of 1e-2 of its mean, one changed element of a 10^6-element
# tensor or a NaN still fails (tests/check/test_mutations.py).
LOSSLESS = Tolerance(rtol=1e-4, atol=1e-5, rel_l2=1e-5)


def _float_problems(name: str, r: np.ndarray, c: np.ndarray, tol: Tolerance) -> list[str]:
    r64 = r.astype(np.float64, copy=False)
    c64 = c.astype(np.float64, copy=False)
    problems = []
    for what, test in (("NaN", np.isnan), ("+Inf", np.isposinf), ("-Inf", np.isneginf)):
        rm, cm = test(r64), test(c64)
        if not np.array_equal(rm, cm):
            problems.append(
                f"output '{name}': {what} in {int(np.sum(rm != cm))} other place(s) "
                f"({int(rm.sum())} in the reference, {int(cm.sum())} in the candidate)"
            )
    if problems:
        return problems
    finite = np.isfinite(r64)
    rf, cf = r64[finite], c64[finite]
    diff = np.abs(rf - cf)
    bound = tol.atol + tol.rtol * np.abs(rf)
    bad = diff > bound
    if bad.any():
        worst = int(np.argmax(diff - bound))
        problems.append(
            f"output '{name}': {int(bad.sum())} of {rf.size} element(s) outside "
            f"atol {tol.atol:g} + rtol {tol.rtol:g}*|ref| (largest |diff| {float(diff.max()):.3g}"
            f" where ref is {float(rf[worst]):.6g})"
        )
    ref_norm = math.sqrt(float(rf @ rf))
    err_norm = math.sqrt(float((rf - cf) @ (rf - cf)))
    rel = err_norm / ref_norm if ref_norm else (0.0 if err_norm == 0 else math.inf)
    if rel > tol.rel_l2:
        problems.append(f"output '{name}': relative L2 error {rel:.3g} > {tol.rel_l2:g}")
    return problems


def array_problems(name: str, reference: Any, candidate: Any, tol: Tolerance) -> list[str]:
    """Why two arrays are not equal under ``tol`` (empty list: equal)."""
    r, c = np.asarray(reference), np.asarray(candidate)
    if r.shape != c.shape:
        return [f"output '{name}': shape {list(c.shape)} instead of {list(r.shape)}"]
    if r.dtype != c.dtype:
        return [f"output '{name}': dtype {c.dtype} instead of {r.dtype}"]
    if np.issubdtype(r.dtype, np.floating) or np.issubdtype(r.dtype, np.complexfloating):
        return _float_problems(name, r, c, tol)
    if not np.array_equal(r, c):
        diff = int(np.sum(r != c)) if r.shape else 1
        return [f"output '{name}': {diff} of {max(r.size, 1)} {r.dtype} element(s) differ"]
    return []


def value_problems(name: str, reference: Any, candidate: Any, tol: Tolerance) -> list[str]:
    """Like ``array_problems``, for tensors and for Sequence (list) / Map (dict) outputs."""
    if isinstance(reference, dict) or isinstance(candidate, dict):
        if not (isinstance(reference, dict) and isinstance(candidate, dict)):
            return [f"output '{name}': a map in one model and not in the other"]
        if sorted(map(str, reference)) != sorted(map(str, candidate)):
            return [f"output '{name}': map keys differ"]
        problems: list[str] = []
        for key in reference:
            problems += value_problems(f"{name}[{key!r}]", reference[key], candidate[key], tol)
        return problems
    if isinstance(reference, list) or isinstance(candidate, list):
        if not (isinstance(reference, list) and isinstance(candidate, list)):
            return [f"output '{name}': a sequence in one model and not in the other"]
        if len(reference) != len(candidate):
            return [f"output '{name}': sequence of {len(candidate)} instead of {len(reference)}"]
        problems = []
        for i, (r, c) in enumerate(zip(reference, candidate, strict=True)):
            problems += value_problems(f"{name}[{i}]", r, c, tol)
        return problems
    return array_problems(name, reference, candidate, tol)

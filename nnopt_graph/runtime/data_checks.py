"""Checks of loaded calibration data against a model's inputs: dtype, shape, finite values."""

from __future__ import annotations

__all__ = ["check_dtype", "check_shape", "scan_values"]

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nnopt_graph.errors import BadInputError

if TYPE_CHECKING:
    from nnopt_graph.runtime.data import InputSpec

# Bytes read at a time when data is scanned for NaN/Inf.
_SCAN_BYTES = 64 * 2**20


def check_dtype(path: Path, spec: InputSpec, dtype: np.dtype) -> None:
    """Refuse data the input cannot take: text, objects, complex numbers, lossy casts.

    Numbers convert (with a warning) when the cast keeps their kind or widens it:
    integers or booleans for a float input, float64 for float32; floats for an integer
    input, or anything for a boolean one, would change values and are refused.
    """
    dtype = np.dtype(dtype)
    want = np.dtype(spec.dtype)
    if dtype == want:
        return
    if dtype.kind not in "biuf":
        kinds = {"U": "string", "S": "bytes", "O": "object", "c": "complex", "V": "structured"}
        kind = kinds.get(dtype.kind, str(dtype))
        raise BadInputError(
            f"{path}: array '{spec.name}' holds {kind} values ({dtype}); "
            f"the input takes {want} numbers"
        )
    if want.kind == "f" and dtype.kind in "biuf":
        return
    if want.kind in "iu" and dtype.kind in "biu":
        return  # a narrower integer type: the values are checked to fit when scanned
    raise BadInputError(
        f"{path}: array '{spec.name}' is {dtype}, which does not convert without loss to the "
        f"input's {want}"
    )


def check_shape(path: Path, spec: InputSpec, shape: tuple[int, ...], stacked: bool) -> None:
    """Per-sample dims must match the input's static dims (dynamic dims take any size)."""
    if spec.dims is None:
        return
    # Stacked: each sample (axis 0) is a whole feed. Sliced: axis 0 is the batch axis.
    sample = shape[1:] if stacked else shape
    first = 0 if stacked else 1
    for axis in range(first, len(spec.dims)):
        dim = spec.dims[axis]
        if isinstance(dim, int) and dim > 0 and sample[axis] != dim:
            want = ["?" if not isinstance(d, int) or d <= 0 else d for d in spec.dims]
            got = list(sample) if stacked else ["N", *sample[1:]]
            raise BadInputError(
                f"{path}: array '{spec.name}' has sample shape {got}; the input's shape is "
                f"{want} (axis {axis} must be {dim})"
            )


def scan_values(path: Path, name: str, array: np.ndarray, want: np.dtype) -> None:
    """Refuse NaN/Inf, and values the input's type cannot hold, reading slice by slice.

    The array is never read whole: blocks of about 64 MiB along axis 0.
    """
    dtype, want = np.dtype(array.dtype), np.dtype(want)
    limits: tuple[float, float] | None = None
    if dtype != want and want.kind in "iu" and dtype.kind in "iu":
        info = np.iinfo(want)
        if not (np.iinfo(dtype).min >= info.min and np.iinfo(dtype).max <= info.max):
            limits = (info.min, info.max)
    elif dtype != want and want.kind == "f" and dtype.kind == "f":
        if np.finfo(dtype).max > np.finfo(want).max:
            big = float(np.finfo(want).max)
            limits = (-big, big)
    if (dtype.kind != "f" and limits is None) or len(array) == 0:
        return
    per_sample = max(1, math.prod(array.shape[1:]) * dtype.itemsize)
    step = max(1, _SCAN_BYTES // per_sample)
    for start in range(0, len(array), step):
        block = np.asarray(array[start : start + step])
        flat = block.reshape(len(block), -1)
        if dtype.kind == "f":
            finite = np.isfinite(flat).all(axis=1)
            if not finite.all():
                bad = start + int(np.argmin(finite))
                what = "NaN" if np.isnan(block).any() else "Inf"
                raise BadInputError(
                    f"{path}: array '{name}' has {what} values (first in sample {bad}); "
                    "calibration and held-out data must be finite"
                )
        if limits is not None and flat.size:
            low, high = flat.min(), flat.max()
            if low < limits[0] or high > limits[1]:
                raise BadInputError(
                    f"{path}: array '{name}' has values in [{low}, {high}], outside what the "
                    f"input's {want} holds"
                )

"""Calibration/verification data files for zoo and real models, as stacked .npz."""

from __future__ import annotations

__all__ = ["write_calib_npz"]

from pathlib import Path

import numpy as np

from models import fetch, zoo


def write_calib_npz(name: str, path: str | Path, samples: int = 4, seed: int = 0) -> Path:
    """Write ``samples`` whole feeds for a zoo or real model, stacked on a new axis 0.

    Each array has one more axis than the model's input, which nnopt-graph reads as
    one feed per sample (also right for inputs without a batch axis, like state).
    """
    if name in zoo.ZOO:
        feeds = [zoo.example_inputs(name, seed=seed + i) for i in range(samples)]
    elif name in fetch.REAL_MODELS:
        feeds = [fetch.example_inputs(name, seed=seed + i) for i in range(samples)]
    else:
        raise KeyError(f"unknown model '{name}'")
    arrays = {key: np.stack([f[key] for f in feeds]) for key in feeds[0]}
    path = Path(path)
    np.savez(path, **arrays)
    return path

"""Temporary model files: the one place that writes in-memory models to disk for a session."""

from __future__ import annotations

__all__ = ["scratch_file"]

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx_ir as ir

from nnopt_graph.core import io


@contextlib.contextmanager
def scratch_file(model: ir.Model, name: str = "candidate") -> Iterator[Path]:
    """The model written to a temporary file (weights inline, or in a side file when large)."""
    with tempfile.TemporaryDirectory(prefix="nnopt-scratch-") as tmp:
        path = Path(tmp, f"{name}.onnx")
        io.save(model, path)
        yield path

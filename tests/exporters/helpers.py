"""Shared helpers for the exporter tests: run a model through both pipelines."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx

from nnopt_graph.job import OptimizeResult, optimize


def op_counts(path: Path, domain: str | None = None) -> Counter[str]:
    """Node counts by op type in the main graph (optionally of one domain only)."""
    model = onnx.load(str(path), load_external_data=False)
    return Counter(
        n.op_type for n in model.graph.node if domain is None or (n.domain or "") == domain
    )


def optimize_both(
    model: Path, calib: Path, tmp_path: Path, **kwargs: object
) -> dict[str, OptimizeResult]:
    """The default pipeline and ``--target cpu``, both verified; results by label."""
    results = {}
    for label, target in (("default", None), ("cpu", "cpu")):
        out = tmp_path / f"{model.stem}.{label}.onnx"
        results[label] = optimize(model, out, calib=calib, target=target, **kwargs)
        assert results[label].output == out and out.is_file()
        assert results[label].fidelity is not None
        onnx.checker.check_model(str(out), full_check=True)
    return results

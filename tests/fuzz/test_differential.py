"""Differential fuzz: the default pipeline on generated graphs gives ONNX Runtime's numbers.

Each generated model is optimized (default pipeline, verification on), then the input and
the output run under ONNX Runtime on the same seeded feeds: the outputs must agree within
float re-association (allclose, rtol 1e-4), same shapes and dtypes. A small run is in the
default suite; ``-m slow`` runs a large one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import fuzz_graphs as graphs
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings

import nnopt_graph

SMALL, LARGE = 40, 400
GENERATED = {"small": 0, "large": 0}


def _run(path_or_bytes: str | bytes, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(path_or_bytes, options, providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def _check_one(spec: tuple[list[str], int, int]) -> None:
    blocks, seed, opset = spec
    model = graphs.build(blocks, seed, opset)
    with tempfile.TemporaryDirectory(prefix="nnopt-fuzz-") as tmp:
        src, out = Path(tmp, "in.onnx"), Path(tmp, "out.onnx")
        onnx.save(model, src)
        result = nnopt_graph.optimize(src, out)
        assert result.output == out
        optimized = onnx.load(out)
        onnx.checker.check_model(optimized, full_check=True)
        for feed in graphs.feeds(model, seed):
            want = _run(str(src), feed)
            got = _run(str(out), feed)
            assert len(want) == len(got)
            for a, b in zip(want, got, strict=True):
                assert a.shape == b.shape and a.dtype == b.dtype, (blocks, a.shape, b.shape)
                scale = max(1.0, float(np.max(np.abs(a))))
                np.testing.assert_allclose(
                    b, a, rtol=1e-4, atol=1e-5 * scale, err_msg=f"{blocks} seed={seed}"
                )


_SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


@settings(max_examples=SMALL, **_SETTINGS)
@given(graphs.graph_specs)
def test_default_pipeline_matches_onnx_runtime(spec) -> None:
    GENERATED["small"] += 1
    _check_one(spec)


@pytest.mark.slow
@settings(max_examples=LARGE, **_SETTINGS)
@given(graphs.graph_specs)
def test_default_pipeline_matches_onnx_runtime_large(spec) -> None:
    GENERATED["large"] += 1
    _check_one(spec)


@pytest.mark.parametrize("kind", graphs.BLOCKS)
def test_every_block_alone(kind: str) -> None:
    """Each block once on its own, so a small run still covers every op and pattern."""
    _check_one(([kind, "relu", kind], 7, 17))


def test_the_generator_makes_what_the_pipeline_rewrites() -> None:
    # Negative control: the pipeline really changes these graphs (the fuzz is not vacuous).
    model = graphs.build(["conv-bn", "identity", "mul-const-dup", "cse-pair", "dead-branch"], 1)
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp, "in.onnx"), Path(tmp, "out.onnx")
        onnx.save(model, src)
        nnopt_graph.optimize(src, out)
        before = [n.op_type for n in model.graph.node]
        after = [n.op_type for n in onnx.load(out).graph.node]
    assert "BatchNormalization" in before and "BatchNormalization" not in after
    assert "Exp" in before and "Exp" not in after
    assert len(after) < len(before)


@pytest.fixture(autouse=True, scope="module")
def _report_counts():
    """With NNOPT_FUZZ_REPORT=1 (and -s), print how many cases ran."""
    yield
    if os.environ.get("NNOPT_FUZZ_REPORT"):
        print(f"\n{__name__}: {dict(GENERATED)}")

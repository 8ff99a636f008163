"""The input's ONNX Runtime load check: run when verifying or small, skipped when large and unverified."""

from __future__ import annotations

import onnx
import pytest

from nnopt_graph import job
from nnopt_graph.errors import BadInputError

_TEXT = '<ir_version: 8, opset_import: ["" : 17, "my.domain" : 1]>\ng (float[2] x) => (float[2] y) { y = my.domain.Unknown(x) }'


@pytest.fixture
def unloadable(tmp_path):
    path = tmp_path / "custom.onnx"
    onnx.save(onnx.parser.parse_model(_TEXT), path)
    return path


def test_small_unverified_input_is_still_loaded_and_refused(unloadable):
    with pytest.raises(BadInputError, match="ONNX Runtime cannot load the input"):
        job._check_input_runs(unloadable, None)


def test_large_unverified_input_is_not_given_to_onnx_runtime(unloadable, monkeypatch):
    monkeypatch.setattr(job, "ONE_SESSION_AT_A_TIME_BYTES", 0)

    def fail(*args, **kwargs):
        raise AssertionError("ONNX Runtime was asked to load the model")

    monkeypatch.setattr(job, "run_isolated", fail)
    assert job._check_input_runs(unloadable, None) is None

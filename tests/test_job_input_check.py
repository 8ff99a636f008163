"""The input's ONNX Runtime load check: run when verifying or small, skipped when large and unverified."""

from __future__ import annotations

import onnx
import pytest

from nnopt_graph import job
from nnopt_graph.errors import BadInputError

_TEXT = '<ir_version: 8, opset_import: ["" : 17, "my.domain" : 1]>\ng (float[2] x) => (float[2] y) { y = my.domain.Unknown(x) }'

_RELU = '<ir_version: 8, opset_import: ["" : 17]>\ng (float[2] x) => (float[2] y) { y = Relu(x) }'


def _relu(folder):
    """A one-Relu model ONNX Runtime loads, written to ``folder``."""
    path = folder / "relu.onnx"
    onnx.save(onnx.parser.parse_model(_RELU), path)
    return path


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


def _failing_run(self, model):
    from nnopt_graph.errors import PassFailedError

    raise PassFailedError("dedup", [], "RuntimeError: boom")


def test_bad_input_is_reported_over_a_pass_that_failed_meanwhile(unloadable, tmp_path, monkeypatch):
    monkeypatch.setattr(job.PassManager, "run", _failing_run)
    with pytest.raises(BadInputError, match="ONNX Runtime cannot load the input"):
        job.optimize(unloadable, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_a_good_input_leaves_the_pass_failure_as_it_is(tmp_path, monkeypatch):
    from nnopt_graph.errors import PassFailedError

    path = _relu(tmp_path)
    monkeypatch.setattr(job.PassManager, "run", _failing_run)
    with pytest.raises(PassFailedError, match="boom"):
        job.optimize(path, tmp_path / "out.onnx")


def test_passes_run_before_the_input_check_is_waited_for(tmp_path, monkeypatch):
    path = _relu(tmp_path)
    order: list[str] = []
    run, result = job.PassManager.run, job._InputRuns.result

    def record_run(self, model):
        order.append("passes")
        return run(self, model)

    def record_result(self):
        order.append("input check")
        return result(self)

    monkeypatch.setattr(job.PassManager, "run", record_run)
    monkeypatch.setattr(job._InputRuns, "result", record_result)
    out = job.optimize(path, tmp_path / "out.onnx")
    assert out.fidelity is not None and out.fidelity.equal
    assert order[:2] == ["passes", "input check"]


def test_a_large_model_is_checked_and_verified_one_process_at_a_time(tmp_path, monkeypatch):
    path = _relu(tmp_path)
    monkeypatch.setattr(job, "ONE_SESSION_AT_A_TIME_BYTES", 0)

    started = []
    real_start = job.start_isolated

    def record(fn, *args, **kwargs):
        started.append(fn.__name__)
        return real_start(fn, *args, **kwargs)

    monkeypatch.setattr(job, "start_isolated", record)
    out = job.optimize(path, tmp_path / "out.onnx")
    assert out.fidelity is not None and out.fidelity.equal
    assert started == ["_input_reference"]  # and waited for at once; no checker beside

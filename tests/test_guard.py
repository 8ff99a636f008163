"""The accuracy guard: expressions, rollback, back-off, user metric, nothing written on failure."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

from nnopt_graph import optimize
from nnopt_graph.errors import BadInputError, CheckFailedError
from nnopt_graph.guard import parse_guard
from nnopt_graph.pipeline import registry
from nnopt_graph.pipeline.base import Pass, PassContext, PassResult

DIGITS = "models/digits/digits_cnn.onnx"
HELDOUT = "models/digits/digits_heldout.npz"
LABELS = "models/digits/digits_heldout_labels.npy"


@dataclasses.dataclass(frozen=True)
class _ScaleOptions:
    factor: float = 10.0
    backs_off: bool = True


class _ScaleWeightPass(Pass):
    """Test-only lossy pass: multiplies the largest weight by ``factor``."""

    name = "test-scale-largest-weight"
    lossy = True
    Options = _ScaleOptions

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        value = max(model.graph.initializers.values(), key=lambda v: v.const_value.size)
        value.const_value = ir.tensor(value.const_value.numpy() * np.float32(self.options.factor), name=value.name)
        return PassResult({"weights-scaled": 1})

    def back_off(self):
        # Halve the distortion; give up once it is within 1% of identity.
        weaker = 1 + (self.options.factor - 1) / 2
        if not self.options.backs_off or abs(weaker - 1) < 0.01:
            return None
        return _ScaleWeightPass(factor=weaker)


@pytest.fixture(autouse=True)
def _register(monkeypatch):
    monkeypatch.setitem(registry._REGISTRY, _ScaleWeightPass.name, _ScaleWeightPass)


def test_parse_guard():
    conditions = parse_guard("cosine>=0.99, top1>=0.98,max_abs<=1e-3")
    assert [str(c) for c in conditions] == ["cosine>=0.99", "top1>=0.98", "max_abs<=0.001"]
    for bad in ["cosine", "cosine>=x", "accuracy>=0.9", "cosine=>0.9", ""]:
        with pytest.raises(BadInputError):
            parse_guard(bad)


def test_destructive_pass_is_rejected_and_nothing_written(tmp_path):
    out = tmp_path / "out.onnx"
    with pytest.raises(CheckFailedError, match="no lossy pass kept the guard"):
        optimize(DIGITS, out, "default,test-scale-largest-weight{factor=-1.0 backs-off=false}", calib=HELDOUT,
                 guard="cosine>=0.999")
    assert list(tmp_path.iterdir()) == []


def test_back_off_finds_a_weaker_setting_that_keeps_the_budget(tmp_path):
    out = tmp_path / "out.onnx"
    result = optimize(DIGITS, out, "test-scale-largest-weight{factor=3.0}", calib=HELDOUT,
                      guard="cosine>=0.999", report=tmp_path / "r.json")
    record = result.records[0]
    assert record.guard_action == "backed off"
    assert 1.0 < record.options["factor"] < 3.0
    assert record.fidelity["passed"] and record.fidelity["values"]["cosine"] >= 0.999
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["guard"] == {"expr": "cosine>=0.999", "passed": True}
    assert out.exists()


def test_default_guard_applies_to_lossy_pipelines(tmp_path):
    result = optimize(DIGITS, tmp_path / "o.onnx", "test-scale-largest-weight{factor=1.001}", calib=HELDOUT)
    assert result.report["guard"]["expr"] == "cosine>=0.99"
    assert result.records[0].guard_action == "kept"


def _accuracy(path: str) -> float:
    x = np.load(HELDOUT)["input"]
    labels = np.load(LABELS)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": x})[0]
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def test_user_metric_guard(tmp_path):
    assert _accuracy(DIGITS) > 0.97
    with pytest.raises(CheckFailedError):
        optimize(DIGITS, tmp_path / "o.onnx", "test-scale-largest-weight{factor=-1.0 backs-off=false}",
                 calib=HELDOUT, guard="metric>=0.97", metric=_accuracy)
    result = optimize(DIGITS, tmp_path / "o.onnx", "test-scale-largest-weight{factor=1.01}", calib=HELDOUT,
                      guard="metric>=0.97", metric=_accuracy)
    assert result.records[0].fidelity["values"]["metric"] >= 0.97


def test_metric_guard_without_function_is_bad_input(tmp_path):
    with pytest.raises(BadInputError, match="metric function"):
        optimize(DIGITS, tmp_path / "o.onnx", "test-scale-largest-weight", calib=HELDOUT, guard="metric>=0.9")

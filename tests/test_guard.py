"""The accuracy guard: expressions, rollback, back-off, user metric, nothing written on failure."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

from nnopt_graph import optimize
from nnopt_graph.check.guard import parse_guard
from nnopt_graph.errors import BadInputError, CheckFailedError
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
        value.const_value = ir.tensor(
            value.const_value.numpy() * np.float32(self.options.factor), name=value.name
        )
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


def test_parse_guard_reductions_and_old_spellings():
    conditions = parse_guard(
        "cosine>=0.99, top1>=0.98,max_abs<=1e-3,cosine.p5>=0.995,rel_l2.max<=0.05"
    )
    assert [str(c) for c in conditions] == [
        "cosine.min>=0.99",
        "top1.mean>=0.98",
        "max_abs.max<=0.001",
        "cosine.p5>=0.995",
        "rel_l2.max<=0.05",
    ]
    assert [c.reduction for c in parse_guard("sqnr>=30,metric>=0.75,cosine.median>=0.9")] == [
        "min",
        "value",
        "median",
    ]


@pytest.mark.parametrize(
    "bad",
    [
        "cosine",
        "cosine>=x",
        "accuracy>=0.9",
        "cosine=>0.9",
        "",
        "cosine>=inf",
        "cosine>=nan",
        "cosine.p0>=0.9",
        "cosine.p100>=0.9",
        "cosine.worst>=0.9",
        "metric.min>=0.9",
        "cosine.min>=0.9,",
    ],
)
def test_parse_guard_rejects(bad):
    with pytest.raises(BadInputError, match="bad --guard term"):
        parse_guard(bad)


def test_destructive_pass_is_rolled_back_and_the_lossless_result_written(tmp_path):
    out = tmp_path / "out.onnx"
    result = optimize(
        DIGITS,
        out,
        "default,test-scale-largest-weight{factor=-1.0 backs-off=false}",
        calib=HELDOUT,
        guard="cosine>=0.999",
    )
    record = result.records[-1]
    assert (
        record.outcome == "rolled back" and "cosine.min>=0.999 (measured" in record.outcome_detail
    )
    assert [r.name for r in result.rolled_back] == ["test-scale-largest-weight"]
    # What was written is the best model meeting the guard: the lossless part only.
    assert result.fidelity is not None and result.fidelity.cosine_min > 0.99999
    assert result.report["guard"]["passed"] is True
    assert "rolled back: test-scale-largest-weight" in result.report["guard"]["verdict"]


def test_fail_on_rollback_writes_nothing(tmp_path):
    out = tmp_path / "out.onnx"
    with pytest.raises(
        CheckFailedError, match="--fail-on-rollback.*rolled back test-scale-largest-weight"
    ):
        optimize(
            DIGITS,
            out,
            "default,test-scale-largest-weight{factor=-1.0 backs-off=false}",
            calib=HELDOUT,
            guard="cosine>=0.999",
            fail_on_rollback=True,
        )
    assert list(tmp_path.iterdir()) == []


def test_back_off_finds_a_weaker_setting_that_keeps_the_budget(tmp_path):
    out = tmp_path / "out.onnx"
    result = optimize(
        DIGITS,
        out,
        "test-scale-largest-weight{factor=3.0}",
        calib=HELDOUT,
        guard="cosine>=0.999",
        report=tmp_path / "r.json",
    )
    record = result.records[0]
    assert record.guard_action == "backed off" and record.outcome == "backed off"
    assert (
        record.outcome_detail.startswith("to factor=")
        and "cosine.min>=0.999 (measured" in record.outcome_detail
    )
    assert 1.0 < record.options["factor"] < 3.0
    assert record.fidelity["passed"] and record.fidelity["values"]["cosine.min>=0.999"] >= 0.999
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["guard"]["expr"] == "cosine>=0.999" and report["guard"]["passed"] is True
    assert report["guard"]["samples"] == 72  # the last 20% of 360 held-out images
    assert out.exists()


def test_default_guard_applies_to_lossy_pipelines(tmp_path):
    result = optimize(
        DIGITS, tmp_path / "o.onnx", "test-scale-largest-weight{factor=1.001}", calib=HELDOUT
    )
    assert result.report["guard"]["expr"] == "cosine.min>=0.99"
    assert result.records[0].outcome == "applied"


def test_few_held_out_samples_warn(tmp_path, caplog):
    x = np.load(HELDOUT)["input"][:10]
    small = tmp_path / "small.npz"
    np.savez(small, input=x)
    result = optimize(
        DIGITS, tmp_path / "o.onnx", "test-scale-largest-weight{factor=1.001}", calib=small
    )
    assert result.report["guard"]["samples"] == 2
    assert any("only 2 held-out sample" in w for w in result.report["guard"]["warnings"])
    assert "only 2 held-out sample" in caplog.text


def _accuracy(path: str) -> float:
    x = np.load(HELDOUT)["input"]
    labels = np.load(LABELS)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": x})[0]
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def test_user_metric_guard(tmp_path):
    assert _accuracy(DIGITS) > 0.97
    with pytest.raises(CheckFailedError):
        optimize(
            DIGITS,
            tmp_path / "o.onnx",
            "test-scale-largest-weight{factor=-1.0 backs-off=false}",
            calib=HELDOUT,
            guard="metric>=0.97",
            metric=_accuracy,
            fail_on_rollback=True,
        )
    result = optimize(
        DIGITS,
        tmp_path / "o.onnx",
        "test-scale-largest-weight{factor=1.01}",
        calib=HELDOUT,
        guard="metric>=0.97",
        metric=_accuracy,
    )
    assert result.records[0].fidelity["values"]["metric>=0.97"] >= 0.97


def test_metric_guard_without_function_is_bad_input(tmp_path):
    with pytest.raises(BadInputError, match="metric function"):
        optimize(
            DIGITS,
            tmp_path / "o.onnx",
            "test-scale-largest-weight",
            calib=HELDOUT,
            guard="metric>=0.9",
        )

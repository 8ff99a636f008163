"""Calibration feeds fit the model: fixed batch (1 or more), dynamic batch, stacked feeds."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from models import zoo
from nnopt_graph.errors import BadInputError
from nnopt_graph.pipeline.base import PassContext
from nnopt_graph.pipeline.grammar import PassSpec
from nnopt_graph.runtime import calibrate
from nnopt_graph.runtime.data import Dataset, feed_batch, input_specs, load_dataset

# Every pass that runs the model on calibration data, with options that make it do so.
_PASSES = [
    ("prune-channels", {"ratio": 0.25}),
    ("sparsify", {"reconstruct": True}),
    ("quantize-int8", {"speed_check": False}),
    ("quantize-int4", {"min_elements": 64, "method": "awq"}),
    ("quantize-fp16", {}),
    ("cluster-weights", {}),
]


def _cnn(batch: int | str, *, matmul: bool = False) -> onnx.ModelProto:
    """The zoo CNN with its batch axis declared ``batch`` (a number fixes it).

    With ``matmul`` its head is a MatMul (what int4 quantizes) instead of a Gemm.
    """
    proto = zoo.build_cnn(0)
    if matmul:
        for node in proto.graph.node:
            if node.op_type == "Gemm":
                weight, bias = node.input[1], node.input[2]
                (init,) = [i for i in proto.graph.initializer if i.name == weight]
                w = onnx.numpy_helper.to_array(init)
                wide = np.tile(w.T, (1, 8))[:, :10]  # [64, 10], as MatMul takes it
                init.CopyFrom(onnx.numpy_helper.from_array(np.ascontiguousarray(wide), weight))
                out = node.output[0]
                node.CopyFrom(onnx.helper.make_node("MatMul", [node.input[0], weight], ["mm"]))
                proto.graph.node.append(onnx.helper.make_node("Add", ["mm", bias], [out]))
    for value in [*proto.graph.input, *proto.graph.output]:
        dim = value.type.tensor_type.shape.dim[0]
        if isinstance(batch, int):
            dim.dim_value = batch
        else:
            dim.dim_param = batch
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _images(samples: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal([samples, 3, 32, 32]).astype(np.float32)


def _runs(model: ir.Model, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    proto = ir.serde.serialize_model(model)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


class _FeedSizes:
    """Spies on run_with_taps: records the batch of every feed it runs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sizes: list[int] = []
        original = Dataset.batches

        def batches(dataset: Dataset, batch_size: int = 1):
            for feed in original(dataset, batch_size):
                self.sizes.append(len(next(iter(feed.values()))))
                yield feed

        monkeypatch.setattr(Dataset, "batches", batches)


# ---------------------------------------------------------------- the helper


def test_fixed_batch_one_gives_feeds_of_one_whatever_is_asked():
    data = Dataset({"input": _images(16)}, "t").fit(input_specs(ir.from_proto(_cnn(1))))
    assert data.fixed_batch == 1
    assert [len(f["input"]) for f in data.batches(8)] == [1] * 16
    assert data.feed_count(8) == 16


def test_fixed_batch_two_gives_exact_feeds_and_drops_the_remainder():
    data = Dataset({"input": _images(7)}, "t").fit(input_specs(ir.from_proto(_cnn(2))))
    assert [len(f["input"]) for f in data.batches(1)] == [2, 2, 2]
    assert data.feed_count(1) == 3


def test_dynamic_batch_keeps_the_requested_size():
    data = Dataset({"input": _images(10)}, "t").fit(input_specs(ir.from_proto(_cnn("N"))))
    assert data.fixed_batch is None
    assert [len(f["input"]) for f in data.batches(8)] == [8, 2]


def test_stacked_inputs_without_batch_axis_give_one_feed_per_sample():
    specs = input_specs(ir.from_proto(_cnn(1)))
    data = Dataset({"input": _images(6)[:, None]}, "t", frozenset({"input"})).fit(specs)
    assert feed_batch(specs, data) == 1
    assert [f["input"].shape for f in data.batches(8)] == [(1, 3, 32, 32)] * 6


def test_inputs_declaring_different_fixed_batches_are_refused():
    proto = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 4] a, float[2, 4] b) => (float[1, 4] y) { y = Identity(a) }"""
    )
    specs = input_specs(ir.from_proto(proto))
    data = Dataset({"a": np.ones([4, 4], np.float32), "b": np.ones([4, 4], np.float32)}, "t")
    with pytest.raises(BadInputError, match="different batch sizes"):
        data.fit(specs)


def test_npz_with_fewer_samples_than_the_fixed_batch_is_refused(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, input=_images(3))
    with pytest.raises(BadInputError, match="fewer than the model's fixed batch 4"):
        load_dataset(path, input_specs(ir.from_proto(_cnn(4))))


def test_npz_remainder_is_warned_about(tmp_path, caplog):
    path = tmp_path / "calib.npz"
    np.savez(path, input=_images(5))
    with caplog.at_level(logging.WARNING):
        data = load_dataset(path, input_specs(ir.from_proto(_cnn(2))))
    assert data.fixed_batch == 2 and data.feed_count() == 2
    assert "not a multiple of the model's fixed batch 2" in caplog.text


def test_run_with_taps_feeds_a_fixed_batch_model_one_sample_at_a_time():
    model = ir.from_proto(_cnn(1))
    seen = []
    count = calibrate.run_with_taps(
        model,
        ["logits"],
        Dataset({"input": _images(5)}, "t"),
        lambda batch: seen.append(batch["logits"].shape),
        batch_size=8,
    )
    assert count == 5 and seen == [(1, 10)] * 5


# ---------------------------------------------------------------- every calibrating pass


@pytest.mark.parametrize(("name", "options"), _PASSES, ids=[p[0] for p in _PASSES])
@pytest.mark.parametrize("batch", [1, 2, "N"], ids=["fixed-1", "fixed-2", "dynamic"])
def test_pass_calibrates_on_any_declared_batch(name, options, batch, monkeypatch):
    proto = _cnn(batch, matmul=name == "quantize-int4")
    model = ir.serde.deserialize_model(proto)
    spy = _FeedSizes(monkeypatch)
    # 16 samples sliced along the batch axis, as a user's .npz of images gives them
    calib = Dataset({"input": _images(16)}, "calib")
    result = (
        PassSpec.create(name, **options).instantiate().run(model, PassContext(calibration=calib))
    )
    assert result.modified
    if isinstance(batch, int):
        assert set(spy.sizes) <= {batch}, spy.sizes
    feed_n = batch if isinstance(batch, int) else 2
    (logits,) = _runs(model, {"input": _images(feed_n, seed=1)})
    assert logits.shape == (feed_n, 10) and np.isfinite(logits).all()


def test_dynamic_batch_refit_uses_batches_larger_than_one(monkeypatch):
    model = ir.serde.deserialize_model(_cnn("N"))
    spy = _FeedSizes(monkeypatch)
    calib = Dataset({"input": _images(16)}, "calib")
    PassSpec.create("prune-channels", ratio=0.25).instantiate().run(
        model, PassContext(calibration=calib)
    )
    assert max(spy.sizes) == 8

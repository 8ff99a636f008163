"""prune-channels importance: obs (structured OBS from the sinks' input Grams) and auto."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper
from passes_util import ffn_chain, in_an_if, ort_run, to_proto

from nnopt_graph.check.equality import LOSSLESS, value_problems
from nnopt_graph.passes.prune import obs
from nnopt_graph.passes.prune.channels import PruneChannelsPass
from nnopt_graph.pipeline.base import PassContext
from nnopt_graph.runtime.data import Dataset


def _refit_error(x: np.ndarray, w: np.ndarray, drop: list[int]) -> float:
    """Squared error of the best least-squares refit (with a bias) of x @ w without ``drop``."""
    keep = [i for i in range(x.shape[1]) if i not in drop]
    features = np.concatenate([x[:, keep], np.ones((len(x), 1))], axis=1)
    coef, *_ = np.linalg.lstsq(features, x @ w, rcond=None)
    return float(np.sum(np.square(features @ coef - x @ w)))


def _sink(x: np.ndarray, w: np.ndarray, unit_of: np.ndarray, damp: float = 0.0) -> obs._Sink:
    """A sink over the Gram of [x 1], as collect_grams builds it (undamped by default)."""
    rows = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    return obs._Sink(w.copy(), rows.T @ rows, unit_of, damp=damp)


def test_a_constant_unit_costs_nothing():
    """The bias feature absorbs a unit whose contribution never varies."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 5))
    x[:, 2] = 4.0
    sink = _sink(x, rng.standard_normal((5, 3)), np.arange(5), damp=1e-10)
    costs = sink.costs(np.arange(5), 5)
    others = np.delete(costs, 2)
    assert (others > 1.0).all()
    assert costs[2] < 1e-4 * others.min()


def test_single_cost_equals_the_least_squares_refit_error():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 6)) @ rng.standard_normal((6, 6))
    w = rng.standard_normal((6, 3))
    costs = _sink(x, w, np.arange(6)).costs(np.arange(6), 6)
    expected = [_refit_error(x, w, [j]) for j in range(6)]
    np.testing.assert_allclose(costs, expected, rtol=1e-6)


def test_block_removal_and_sequential_steps_match_joint_refits():
    """Heads (two rows per unit) and a second step after the downdate stay exact."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((500, 8)) @ rng.standard_normal((8, 8))
    w = rng.standard_normal((8, 2))
    sink = _sink(x, w, np.repeat(np.arange(4), 2))
    np.testing.assert_allclose(sink.costs(np.array([1]), 4), [_refit_error(x, w, [2, 3])])
    first = sink.remove([1])
    assert first == pytest.approx(_refit_error(x, w, [2, 3]), rel=1e-6)
    second = sink.remove([3])
    assert first + second == pytest.approx(_refit_error(x, w, [2, 3, 6, 7]), rel=1e-6)


def _duplicated_mlp(seed: int = 0) -> onnx.ModelProto:
    """x [N, 6] -> MatMul [6, 12] -> Relu -> MatMul [12, 3] -> y.

    Hidden units 8-11 copy units 0-3 and have the largest output weights; units 4-7 are
    unique with the smallest. Removing the copies costs nothing once refit; removing the
    small unique units loses their signal.
    """
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((6, 12)).astype(np.float32)
    w1[:, 8:] = w1[:, :4]
    w2 = rng.standard_normal((12, 3)).astype(np.float32)
    w2[4:8] *= 0.3
    w2[8:] *= 3.0
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _calib(proto: onnx.ModelProto, samples: int = 256, seed: int = 0) -> Dataset:
    x = np.random.default_rng(seed).standard_normal((samples, 6)).astype(np.float32)
    return Dataset({proto.graph.input[0].name: x}, "test")


def _prune(proto: onnx.ModelProto, data: Dataset | None, **options):
    model = ir.serde.deserialize_model(proto)
    pass_ = PruneChannelsPass(protect_first=False, protect_last=False, **options)
    return model, pass_.run(model, PassContext(calibration=data))


def _held_out(proto: onnx.ModelProto, pruned: ir.Model) -> tuple[np.ndarray, np.ndarray]:
    feeds = {"x": np.random.default_rng(9).standard_normal((64, 6)).astype(np.float32)}
    return ort_run(proto, feeds)[0], ort_run(to_proto(pruned), feeds)[0]


def test_obs_removes_the_predictable_units_and_stays_lossless():
    proto = _duplicated_mlp()
    data = _calib(proto)
    pruned, result = _prune(proto, data, ratio=4 / 12, importance="obs", ridge=0.0)
    assert result.modified
    assert to_proto(pruned).graph.initializer[0].dims[-1] == 8
    reference, candidate = _held_out(proto, pruned)
    assert value_problems("y", reference, candidate, LOSSLESS) == []


def test_activation_importance_loses_the_unique_units_obs_keeps():
    """Negative: magnitude-style scores drop the small unique units, which no refit recovers."""
    proto = _duplicated_mlp()
    data = _calib(proto)
    pruned, _ = _prune(proto, data, ratio=4 / 12, importance="activation", ridge=0.0)
    reference, candidate = _held_out(proto, pruned)
    assert value_problems("y", reference, candidate, LOSSLESS) != []
    rel = np.linalg.norm(candidate - reference) / np.linalg.norm(reference)
    assert rel > 0.05


def test_obs_bounds_the_per_sample_error_on_an_ffn_chain():
    """A quarter of a random ReLU chain's neurons go: each sample's error stays bounded."""
    proto = ffn_chain(3, [32, 32], din=8)
    pruned, result = _prune(proto, _calib_for(proto, 512), ratio=0.25, importance="obs")
    assert result.modified
    feeds = {"x": np.random.default_rng(5).standard_normal((64, 8)).astype(np.float32)}
    reference, candidate = ort_run(proto, feeds)[0], ort_run(to_proto(pruned), feeds)[0]
    per_sample = np.linalg.norm(candidate - reference, axis=1) / np.linalg.norm(reference, axis=1)
    assert per_sample.max() < 0.75  # measured 0.52 (activation importance: 0.55)
    assert np.median(per_sample) < 0.2  # measured 0.15 (activation: 0.21)


def _calib_for(proto: onnx.ModelProto, samples: int) -> Dataset:
    dim = proto.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    x = np.random.default_rng(0).standard_normal((samples, dim)).astype(np.float32)
    return Dataset({"x": x}, "test")


def test_obs_at_ratio_zero_changes_nothing():
    """Negative (idempotence at the fixed point): nothing to remove, bit-identical outputs."""
    proto = _duplicated_mlp(1)
    pruned, result = _prune(proto, _calib(proto), ratio=0.0, importance="obs")
    assert not result.modified
    reference, candidate = _held_out(proto, pruned)
    assert np.array_equal(reference, candidate)


def test_second_obs_run_at_ratio_zero_keeps_the_widths():
    proto = _duplicated_mlp(2)
    pruned, _ = _prune(proto, _calib(proto), ratio=4 / 12, importance="obs")
    again = PruneChannelsPass(ratio=0.0, importance="obs").run(
        pruned, PassContext(calibration=_calib(proto))
    )
    assert not again.modified


def _conv_chain() -> tuple[onnx.ModelProto, Dataset]:
    """Conv 3->8 -> Relu -> Conv 8->4, and eight calibration images."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal([8, 3, 3, 3]).astype(np.float32), "wa"),
        numpy_helper.from_array(rng.standard_normal([4, 8, 3, 3]).astype(np.float32), "wb"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Conv", ["r", "wb"], ["y"], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6, 6])],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = rng.standard_normal((8, 3, 6, 6)).astype(np.float32)
    return proto, Dataset({"x": x}, "t")


def _kinds(proto: onnx.ModelProto, data: Dataset | None, **options) -> list[str]:
    """The importance kind the plan used for each candidate group."""
    plan = PruneChannelsPass(protect_first=False, protect_last=False, **options).plan(
        ir.serde.deserialize_model(proto), PassContext(calibration=data)
    )
    return [plan.kinds[g.id] for g in plan.candidates]


def test_conv_sinks_fall_back_to_activation():
    """Negative: a Conv's im2col features are not its channels, so OBS does not score it."""
    assert _kinds(*_conv_chain(), ratio=0.25, importance="obs") == ["activation"]


def test_obs_without_calibration_data_uses_l2():
    """Negative: no data, no Gram: the weight magnitude decides."""
    model = ir.serde.deserialize_model(_duplicated_mlp())
    plan = PruneChannelsPass(
        ratio=0.25, importance="obs", protect_first=False, protect_last=False
    ).plan(model, PassContext())
    assert [plan.kinds[g.id] for g in plan.candidates] == ["l2"]


def test_sinks_wider_than_the_gram_limit_fall_back(monkeypatch):
    """Negative: past MAX_FEATURES no Gram is collected and activation importance decides."""
    monkeypatch.setattr(obs, "MAX_FEATURES", 8)
    proto = _duplicated_mlp()
    model = ir.serde.deserialize_model(proto)
    plan = PruneChannelsPass(
        ratio=0.25, importance="obs", protect_first=False, protect_last=False
    ).plan(model, PassContext(calibration=_calib(proto)))
    assert [plan.kinds[g.id] for g in plan.candidates] == ["activation"]


def test_subgraph_groups_fall_back_and_still_prune():
    """Negative: values inside an If branch are not captured, so no Gram: activation, then l2."""
    proto = in_an_if(_duplicated_mlp())
    x = np.random.default_rng(0).standard_normal((16, 6)).astype(np.float32)
    data = Dataset({"x": x, "flag": np.ones([16], bool)}, "t")
    model = ir.serde.deserialize_model(proto)
    plan = PruneChannelsPass(
        ratio=0.25, importance="obs", protect_first=False, protect_last=False
    ).plan(model, PassContext(calibration=data))
    kinds = [plan.kinds[g.id] for g in plan.candidates]
    assert kinds and "obs" not in kinds
    pruned, result = _prune(proto, data, ratio=0.25, importance="obs")
    assert result.modified
    feeds = {"x": x[:2], "flag": np.array(True)}
    assert ort_run(to_proto(pruned), feeds)[0].shape == (2, 3)


def test_scores_follow_the_greedy_order_and_frozen_units_score_inf():
    proto = _duplicated_mlp()
    model = ir.serde.deserialize_model(proto)
    data = _calib(proto)
    plan = PruneChannelsPass(
        ratio=4 / 12, importance="obs", protect_first=False, protect_last=False
    ).plan(model, PassContext(calibration=data))
    (group,) = plan.candidates
    scores = plan.scores[group.id]
    assert np.isfinite(scores).all()
    assert set(np.argsort(scores)[:4]) <= {0, 1, 2, 3, 8, 9, 10, 11}
    group.unit_frozen[0] = True
    grams = obs.collect_grams(
        PassContext().runtime, model, obs.gram_taps([group], model.graph), data
    )
    frozen = obs.obs_scores(group, grams)
    assert frozen is not None and frozen[0] == np.inf and np.isfinite(frozen[1:]).all()


def test_auto_importance_is_fluctuation_for_dense_groups():
    """The default (auto) scores FFN-style groups, read only by MatMul, by FLAP fluctuation."""
    proto = _duplicated_mlp()
    model = ir.serde.deserialize_model(proto)
    plan = PruneChannelsPass(ratio=0.25, protect_first=False, protect_last=False).plan(
        model, PassContext(calibration=_calib(proto))
    )
    assert [plan.kinds[g.id] for g in plan.candidates] == ["fluctuation"]


def test_auto_importance_is_activation_for_conv_groups():
    """Negative: a group a Conv reads keeps activation importance."""
    assert _kinds(*_conv_chain(), ratio=0.25) == ["activation"]


def test_auto_importance_without_data_uses_l2():
    """Negative: no calibration data, no statistics: the weight magnitude decides."""
    plan = PruneChannelsPass(ratio=0.25, protect_first=False, protect_last=False).plan(
        ir.serde.deserialize_model(_duplicated_mlp()), PassContext()
    )
    assert [plan.kinds[g.id] for g in plan.candidates] == ["l2"]

"""prune-channels: parameter-budget allocation, fluctuation importance, bias compensation."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper
from passes_util import ffn_chain as _ffn
from passes_util import ort_run

from nnopt_graph.analysis.channels import analyze_channels
from nnopt_graph.passes.prune.allocate import (
    _hull,
    allocate_budget,
    allocate_params,
    removed_params,
    sensitivity_levels,
    total_weight_params,
    unit_param_costs,
)
from nnopt_graph.passes.prune.channels import PruneChannelsPass
from nnopt_graph.pipeline.base import PassContext
from nnopt_graph.runtime.data import Dataset


def _data(samples: int = 32, din: int = 6, seed: int = 0) -> Dataset:
    x = np.random.default_rng(seed).standard_normal([samples, din]).astype(np.float32)
    return Dataset({"x": x}, "test")


def _prune(proto: onnx.ModelProto, calibration: Dataset | None, **options):
    model = ir.serde.deserialize_model(proto)
    result = PruneChannelsPass(**options).run(model, PassContext(calibration=calibration))
    return model, result


def _worst_relative_error(before: onnx.ModelProto, after: ir.Model, data: Dataset) -> float:
    """max over samples of ||y' - y|| / ||y||."""
    pruned = ir.serde.serialize_model(after)
    onnx.checker.check_model(pruned, full_check=True)
    worst = 0.0
    for x in data.arrays["x"]:
        feed = {"x": x[None]}
        (y,) = ort_run(before, feed)
        (z,) = ort_run(pruned, feed)
        worst = max(worst, float(np.linalg.norm(z - y) / max(np.linalg.norm(y), 1e-12)))
    return worst


def _groups(proto: onnx.ModelProto):
    model = ir.serde.deserialize_model(proto)
    return model, [g for g in analyze_channels(model).groups if not g.frozen]


# ---------------------------------------------------------------- allocation


def test_unit_costs_and_total_weight_params():
    proto = _ffn(0, [8, 12])
    model, groups = _groups(proto)
    assert total_weight_params(model) == 6 * 8 + 8 * 12 + 12 * 4
    costs = {g.num_units: unit_param_costs(g) for g in groups}
    # A unit of the 8-wide layer is a column of w0 (6) and a row of w1 (12).
    np.testing.assert_array_equal(costs[8], np.full(8, 6 + 12))
    np.testing.assert_array_equal(costs[12], np.full(12, 8 + 4))


def test_sensitivity_levels_are_sorted_and_capped():
    assert sensitivity_levels(0.25, 0.75) == [0.125, 0.25, 0.5, 0.75]
    assert sensitivity_levels(0.4, 0.5) == [0.2, 0.4, 0.5]
    assert sensitivity_levels(0.0, 0.75) == []


def test_hull_drops_points_above_the_chord():
    points = [(0.0, 0.0), (1.0, 0.5), (2.0, 0.6), (3.0, 3.0)]
    assert _hull(points) == [(0.0, 0.0), (2.0, 0.6), (3.0, 3.0)]
    convex = [(0.0, 0.0), (1.0, 0.1), (2.0, 0.5), (3.0, 1.5)]
    assert _hull(convex) == convex


def test_allocation_takes_the_budget_from_the_insensitive_group():
    _, groups = _groups(_ffn(1, [16, 16]))
    a, b = groups
    curves = {
        a.id: {0.25: 0.001, 0.5: 0.002, 0.75: 0.004},  # insensitive
        b.id: {0.25: 0.1, 0.5: 0.3, 0.75: 0.6},
    }
    cost_a = float(unit_param_costs(a)[0])
    budget = 10 * cost_a
    chosen = allocate_params(groups, curves, budget, 0.75)
    assert chosen[a.id].ratio == pytest.approx(10 / 16)
    assert chosen[b.id].ratio == 0.0
    assert chosen[b.id].reason.startswith("kept")
    assert chosen[a.id].params == pytest.approx(budget)


def test_allocation_never_exceeds_max_layer_ratio_even_when_the_budget_is_larger():
    _, groups = _groups(_ffn(2, [16, 16]))
    curves = {g.id: {0.25: 0.01, 0.5: 0.02} for g in groups}
    chosen = allocate_params(groups, curves, 1e9, 0.5)
    assert all(chosen[g.id].ratio == 0.5 for g in groups)
    assert all("max-layer-ratio" in chosen[g.id].reason for g in groups)


def test_allocation_leaves_groups_without_a_curve_alone():
    _, groups = _groups(_ffn(3, [16, 16]))
    a, b = groups
    chosen = allocate_params(groups, {a.id: {0.5: 0.01}}, 1e9, 0.75)
    assert chosen[b.id].ratio == 0.0 and chosen[b.id].reason == "no sensitivity measured"
    assert chosen[a.id].ratio == 0.75


def test_removed_params_counts_a_weight_pruned_on_two_axes_once():
    _, groups = _groups(_ffn(5, [32, 32]))
    a, b = groups
    # w0 [6, 32] loses half its columns; w1 [32, 32] half its rows and a quarter of its
    # columns; w2 [32, 4] a quarter of its rows.
    expected = 6 * 16 + (32 * 32 - 16 * 24) + 8 * 4
    assert removed_params(groups, {a.id: 0.5, b.id: 0.25}) == pytest.approx(expected)
    assert removed_params(groups, {}) == 0.0


def test_budget_allocation_corrects_for_shared_weights():
    _, groups = _groups(_ffn(5, [32, 32]))
    curves = {g.id: {0.25: 0.01, 0.5: 0.02, 0.75: 0.03} for g in groups}
    # At most half of each group: both groups lose units, w1 on both axes.
    chosen = allocate_budget(groups, curves, 800, 0.5)
    exact = removed_params(groups, {gid: c.ratio for gid, c in chosen.items()})
    assert abs(exact - 800) <= 38
    naive = allocate_params(groups, curves, 800, 0.5)
    assert removed_params(groups, {gid: c.ratio for gid, c in naive.items()}) < 800 - 38


def test_allocation_is_deterministic():
    _, groups = _groups(_ffn(4, [16, 24]))
    curves = {g.id: {0.25: 0.01 * (k + 1), 0.5: 0.05 * (k + 1)} for k, g in enumerate(groups)}
    first = allocate_params(groups, curves, 300, 0.75)
    assert first == allocate_params(groups, curves, 300, 0.75)


def test_search_reaches_the_weight_parameter_budget():
    proto = _ffn(5, [32, 32])
    model = ir.serde.deserialize_model(proto)
    total = total_weight_params(model)
    pruned, result = _prune(
        proto, _data(), ratio=0.25, search=True, protect_first=False, protect_last=False
    )
    removed = total - total_weight_params(pruned)
    # Within one unit's parameters of the budget (units are whole).
    assert abs(removed - 0.25 * total) <= 6 + 32
    assert result.stats["params-budget"] == round(0.25 * total)
    # Planned per-unit costs count w1's crossing entries twice.
    assert result.stats["params-planned"] > removed
    assert _worst_relative_error(proto, pruned, _data(8, seed=9)) < 1.0


def test_units_budget_keeps_the_average_unit_ratio():
    """budget=units: the old allocation, whose unit average is ``ratio``; fewer params go."""
    proto = _ffn(5, [32, 32])
    total = total_weight_params(ir.serde.deserialize_model(proto))
    pruned, result = _prune(
        proto,
        _data(),
        ratio=0.25,
        search=True,
        budget="units",
        protect_first=False,
        protect_last=False,
    )
    assert result.stats["params-budget"] == 0
    units = [d for d in result.decisions if "units_before" in d]
    before = sum(d["units_before"] for d in units)
    after = sum(d["units_after"] for d in units)
    assert (before - after) / before == pytest.approx(0.25, abs=0.05)
    # In a chain, w1 loses rows and columns: 25% of the units is not 25% of the params.
    assert total - total_weight_params(pruned) > 0.25 * total + 32


def test_decisions_say_what_was_removed_and_why():
    proto = _ffn(6, [32, 32])
    _, result = _prune(
        proto, _data(), ratio=0.25, search=True, protect_first=False, protect_last=False
    )
    [summary] = [d for d in result.decisions if d.get("allocation") == "params"]
    assert summary["budget_params"] == result.stats["params-budget"]
    groups = [d for d in result.decisions if "units_before" in d]
    assert len(groups) == 2
    for d in groups:
        assert d["reason"] and set(d["sensitivity_curve"]) == {"0.125", "0.25", "0.5", "0.75"}
        assert d["units_after"] <= d["units_before"]
        assert d["status"] == ("pruned" if d["units_after"] < d["units_before"] else "unchanged")


def test_without_search_there_is_no_budget_entry():
    _, result = _prune(_ffn(6, [32, 32]), _data(), ratio=0.25, protect_first=False)
    assert not [d for d in result.decisions if "allocation" in d]
    assert {d["reason"] for d in result.decisions if "reason" in d} == {"uniform ratio"}


def test_back_off_halves_the_budget_and_reuses_measurements():
    proto = _ffn(7, [32, 32])
    data = _data()
    pass_ = PruneChannelsPass(ratio=0.25, search=True, protect_first=False, protect_last=False)
    pass_.run(ir.serde.deserialize_model(proto), PassContext(calibration=data))
    measured = dict(pass_._sensitivity)
    weaker = pass_.back_off()
    assert weaker is not None and weaker._sensitivity is pass_._sensitivity
    model = ir.serde.deserialize_model(proto)
    total = total_weight_params(model)
    result = weaker.run(model, PassContext(calibration=data))
    assert result.stats["params-budget"] == round(0.125 * total)
    # Levels shared with the first run (0.125, 0.25) were not measured again.
    assert all(pass_._sensitivity[k] == v for k, v in measured.items())


# ---------------------------------------------------------------- fluctuation importance


def test_fluctuation_ranks_a_constant_unit_lowest_where_activation_ranks_it_highest():
    proto = _ffn(8, [8], constant_units=1)
    data = _data()
    plans = {}
    for kind in ("activation", "fluctuation"):
        model = ir.serde.deserialize_model(proto)
        pass_ = PruneChannelsPass(
            ratio=0.125, importance=kind, protect_first=False, protect_last=False
        )
        plans[kind] = pass_.plan(model, PassContext(calibration=data))
    for kind, plan in plans.items():
        [group] = plan.candidates
        assert plan.kinds[group.id] == kind
    [group] = plans["fluctuation"].candidates
    assert 0 not in plans["fluctuation"].keep[group.id]  # the constant unit goes
    assert 0 in plans["activation"].keep[group.id]
    assert plans["fluctuation"].scores[group.id][0] == pytest.approx(0.0, abs=1e-9)


def test_fluctuation_without_data_falls_back_to_l2():
    _, result = _prune(
        _ffn(8, [8]),
        None,
        ratio=0.25,
        importance="fluctuation",
        protect_first=False,
        protect_last=False,
    )
    kinds = {d["importance"] for d in result.decisions if "importance" in d}
    assert kinds == {"l2"}


# ---------------------------------------------------------------- bias compensation


@pytest.mark.parametrize("op", ["MatMul", "Gemm"])
def test_compensation_makes_removing_a_constant_unit_exact(op):
    proto = _ffn(9, [8], constant_units=2, op=op)
    held = _data(8, seed=11)
    options = dict(
        ratio=0.25,
        importance="fluctuation",
        reconstruct=False,
        protect_first=False,
        protect_last=False,
    )
    plain, _ = _prune(proto, _data(), **options)
    compensated, result = _prune(proto, _data(), compensate=True, **options)
    assert result.stats["layers-bias-compensated"] == 1
    assert _worst_relative_error(proto, compensated, held) < 1e-5
    assert _worst_relative_error(proto, plain, held) > 1e-2


def _mean_squared_error(before: onnx.ModelProto, after: ir.Model, data: Dataset) -> float:
    feed = {"x": data.arrays["x"]}
    (y,) = ort_run(before, feed)
    (z,) = ort_run(ir.serde.serialize_model(after), feed)
    return float(np.mean(np.square(z - y)))


def test_compensation_lowers_the_error_of_ordinary_units():
    """The pruned layer's output is the model's: the mean shift is the best constant."""
    proto = _ffn(10, [16])
    held = _data(256, seed=12)
    options = dict(ratio=0.25, reconstruct=False, protect_first=False, protect_last=False)
    plain, _ = _prune(proto, _data(256), **options)
    compensated, result = _prune(proto, _data(256), compensate=True, **options)
    assert result.stats["layers-bias-compensated"] == 1
    assert _mean_squared_error(proto, compensated, held) < 0.9 * _mean_squared_error(
        proto, plain, held
    )
    # Per sample: the error stays below the average output norm.
    check = _data(16, seed=13)
    (y,) = ort_run(proto, {"x": check.arrays["x"]})
    (z,) = ort_run(ir.serde.serialize_model(compensated), {"x": check.arrays["x"]})
    per_sample = np.linalg.norm(z - y, axis=1)
    assert per_sample.max() < np.linalg.norm(y, axis=1).mean()


def test_compensation_skips_a_matmul_without_bias():
    proto = _ffn(9, [8], constant_units=2, bias=False)
    model, result = _prune(
        proto,
        _data(),
        ratio=0.25,
        importance="fluctuation",
        reconstruct=False,
        compensate=True,
        protect_first=False,
        protect_last=False,
    )
    assert result.stats["layers-bias-compensated"] == 0
    assert result.stats["skipped-compensate-no-bias"] == 1
    assert not [v for v in model.graph.initializers if "compensated" in v]


def test_compensation_leaves_refit_layers_to_the_refit():
    proto = _ffn(9, [8], constant_units=2)
    model, result = _prune(
        proto,
        _data(),
        ratio=0.25,
        importance="fluctuation",
        compensate=True,
        protect_first=False,
        protect_last=False,
    )
    assert result.stats["layers-reconstructed"] == 1
    assert result.stats["layers-bias-compensated"] == 0
    assert _worst_relative_error(proto, model, _data(8, seed=11)) < 1e-2


def test_compensated_model_is_unchanged_by_a_second_run_at_ratio_zero():
    proto = _ffn(10, [16, 16])
    model, _ = _prune(proto, _data(), ratio=0.5, reconstruct=False, compensate=True)
    before = ir.serde.serialize_model(model).SerializeToString()
    result = PruneChannelsPass(ratio=0.0, compensate=True).run(
        model, PassContext(calibration=_data())
    )
    assert not result.modified
    assert ir.serde.serialize_model(model).SerializeToString() == before


def _conv_chain(seed: int, *, gemm_without_c: bool = False) -> onnx.ModelProto:
    """x [N,3,4,4] -> Conv 1x1 (8; channels 0-1 constant 3 after Relu) -> Relu -> Conv 1x1 (4)
    -> GlobalAveragePool -> Flatten -> Gemm (2, no C when ``gemm_without_c``)."""
    rng = np.random.default_rng(seed)
    w0 = rng.standard_normal([8, 3, 1, 1]).astype(np.float32)
    b0 = (rng.standard_normal([8]) * 0.1).astype(np.float32)
    w0[:2] = 0
    b0[:2] = 3.0
    w1 = (rng.standard_normal([4, 8, 1, 1]) / 3).astype(np.float32)
    b1 = (rng.standard_normal([4]) * 0.1).astype(np.float32)
    wf = rng.standard_normal([2, 4]).astype(np.float32)
    inits = [
        numpy_helper.from_array(a, n)
        for a, n in ((w0, "w0"), (b0, "b0"), (w1, "w1"), (b1, "b1"), (wf, "wf"))
    ]
    gemm_inputs = ["flat", "wf"]
    if not gemm_without_c:
        inits.append(numpy_helper.from_array(np.zeros(2, np.float32), "bf"))
        gemm_inputs.append("bf")
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"]),
        helper.make_node("Relu", ["c0"], ["r0"]),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("GlobalAveragePool", ["r1"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", gemm_inputs, ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _images(samples: int, seed: int) -> Dataset:
    x = np.random.default_rng(seed).standard_normal([samples, 3, 4, 4]).astype(np.float32)
    return Dataset({"x": x}, "test")


def test_conv_compensation_makes_removing_constant_channels_exact():
    proto = _conv_chain(14)
    options = dict(ratio=0.25, importance="fluctuation", reconstruct=False, protect_first=False)
    plain, _ = _prune(proto, _images(16, 0), **options)
    compensated, result = _prune(proto, _images(16, 0), compensate=True, **options)
    assert result.stats["layers-bias-compensated"] >= 1
    held = _images(8, 5).arrays["x"]
    (y,) = ort_run(proto, {"x": held})
    (z,) = ort_run(ir.serde.serialize_model(compensated), {"x": held})
    (p,) = ort_run(ir.serde.serialize_model(plain), {"x": held})
    per_sample = np.linalg.norm(z - y, axis=1) / np.linalg.norm(y, axis=1).mean()
    assert per_sample.max() < 1e-5
    assert np.abs(p - y).max() > 1e-2


def test_gemm_compensation_creates_the_missing_bias():
    proto = _conv_chain(15, gemm_without_c=True)
    model, result = _prune(
        proto,
        _images(16, 0),
        ratio=0.5,
        reconstruct=False,
        compensate=True,
        protect_first=False,
        protect_last=False,
    )
    gemm = next(n for n in model.graph if n.op_type == "Gemm")
    assert len(gemm.inputs) == 3 and gemm.inputs[2] is not None
    assert result.stats["layers-bias-compensated"] >= 2
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)

"""prune-channels: options, planning, removal against a masked oracle, refit, guard, properties."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from passes_util import ort_run

from models import zoo
from nnopt_graph.check.guard import GuardOutcome
from nnopt_graph.passes.prune.channels import PruneChannelsPass
from nnopt_graph.pipeline.base import PassContext
from nnopt_graph.pipeline.grammar import Pipeline
from nnopt_graph.pipeline.manager import PassManager
from nnopt_graph.runtime.data import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "analysis"))
from channel_oracle import masked_copy, run, with_outputs  # noqa: E402

DIGITS = Path(__file__).resolve().parents[2] / "models" / "digits"


# ---------------------------------------------------------------- model builders


def _finish(nodes, inits, inputs, outputs, opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _cnn(
    seed: int,
    widths: list[int],
    *,
    residual: bool = False,
    concat: bool = False,
    depthwise: bool = False,
    bn: bool = False,
    act: str = "Relu",
    head: str = "gap",
    cin: int = 3,
    size: int = 6,
) -> onnx.ModelProto:
    """Conv stack [N,cin,size,size] -> classes; options add residual, concat, depthwise, BN."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x, c = "x", cin

    def weight(name, shape, scale=None):
        scale = scale or np.sqrt(2.0 / max(1, int(np.prod(shape[1:]))))
        inits.append(
            numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)
        )
        return name

    for i, w in enumerate(widths):
        y = f"c{i}"
        nodes.append(
            helper.make_node(
                "Conv",
                [x, weight(f"w{i}", [w, c, 3, 3]), weight(f"b{i}", [w], 0.1)],
                [y],
                pads=[1, 1, 1, 1],
            )
        )
        if bn:
            params = [
                weight(f"bn{i}_s", [w], 0.5),
                weight(f"bn{i}_b", [w], 0.1),
                weight(f"bn{i}_m", [w], 0.1),
            ]
            inits.append(
                numpy_helper.from_array(rng.uniform(0.5, 1.5, w).astype(np.float32), f"bn{i}_v")
            )
            nodes.append(
                helper.make_node("BatchNormalization", [y, *params, f"bn{i}_v"], [f"n{i}"])
            )
            y = f"n{i}"
        if act:
            nodes.append(helper.make_node(act, [y], [f"a{i}"]))
            y = f"a{i}"
        if depthwise and i == 0:
            nodes.append(
                helper.make_node(
                    "Conv", [y, weight("dw", [w, 1, 3, 3])], ["d0"], group=w, pads=[1, 1, 1, 1]
                )
            )
            y = "d0"
        if residual and i > 0 and widths[i - 1] == w:
            nodes.append(helper.make_node("Add", [x, y], [f"r{i}"]))
            y = f"r{i}"
        x, c = y, w
    if concat:
        nodes.append(helper.make_node("Conv", [x, weight("wc", [4, c, 1, 1])], ["side"]))
        nodes.append(helper.make_node("Concat", [x, "side"], ["cat"], axis=1))
        x, c = "cat", c + 4
    if head == "gap":
        nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
        nodes.append(helper.make_node("Flatten", [x if False else "gap"], ["flat"], axis=1))
        features = c
    else:
        nodes.append(helper.make_node("Flatten", [x], ["flat"], axis=1))
        features = c * size * size
    nodes.append(
        helper.make_node(
            "Gemm", ["flat", weight("wf", [3, features]), weight("bf", [3], 0.1)], ["y"], transB=1
        )
    )
    return _finish(
        nodes,
        inits,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", cin, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
    )


def _mlp(
    seed: int, widths: list[int], gemm: list[bool], act: str = "Relu", din: int = 5
) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x, d = "x", din
    for i, (w, use_gemm) in enumerate(zip([*widths, 3], [*gemm, True], strict=True)):
        wt = (rng.standard_normal([d, w]) / np.sqrt(d)).astype(np.float32)
        bias = (rng.standard_normal([w]) * 0.1).astype(np.float32)
        inits.append(numpy_helper.from_array(bias, f"b{i}"))
        y = "y" if i == len(widths) else f"h{i}"
        if use_gemm:
            inits.append(numpy_helper.from_array(np.ascontiguousarray(wt.T), f"w{i}"))
            nodes.append(
                helper.make_node(
                    "Gemm", [x, f"w{i}", f"b{i}"], [y if i == len(widths) else f"l{i}"], transB=1
                )
            )
        else:
            inits.append(numpy_helper.from_array(wt, f"w{i}"))
            nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]))
            nodes.append(helper.make_node("Add", [f"m{i}", f"b{i}"], [f"l{i}"]))
        if i < len(widths):
            nodes.append(helper.make_node(act, [f"l{i}"], [y]))
        x, d = y, w
    return _finish(
        nodes,
        inits,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", din])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
    )


def _data(proto: onnx.ModelProto, samples: int = 8, seed: int = 0) -> Dataset:
    value = proto.graph.input[0]
    shape = [d.dim_value or 1 for d in value.type.tensor_type.shape.dim]
    shape[0] = samples
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return Dataset({value.name: x}, "test")


def _prune(proto: onnx.ModelProto, calibration: Dataset | None = None, **options):
    model = ir.serde.deserialize_model(proto)
    pass_ = PruneChannelsPass(**options)
    result = pass_.run(model, PassContext(calibration=calibration))
    return model, result


def _valid(model: ir.Model) -> onnx.ModelProto:
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _assert_kept_channels_match(
    proto: onnx.ModelProto, calibration: Dataset | None = None, **options
):
    """Prune without refit; every group activation, at its kept indices, equals the
    original model with the removed channels masked; graph outputs equal it too."""
    options.setdefault("reconstruct", False)
    context = PassContext(calibration=calibration)
    original = ir.serde.deserialize_model(proto)
    plan = PruneChannelsPass(**options).plan(original, context)
    removals = [(g, plan.keep[g.id]) for g in plan.candidates if len(plan.keep[g.id]) < g.num_units]
    model, result = _prune(proto, calibration, **options)
    pruned = _valid(model)
    assert result.modified == bool(removals)
    feeds = dict(_data(proto, 3, seed=7).arrays)
    main = {v.name for n in model.graph for v in n.outputs}
    kept: dict[str, list[tuple[int, np.ndarray]]] = {}
    for group, keep in removals:
        mask = np.zeros(group.num_units, dtype=bool)
        mask[keep] = True
        for space in group.spaces:
            if not space.is_constant and space.name in main:
                kept.setdefault(space.name, []).append(
                    (space.axis, np.nonzero(mask[space.unit_of])[0])
                )
    masked = masked_copy(original, removals)
    got = run(with_outputs(model, sorted(kept)), feeds)
    want = run(with_outputs(masked, sorted(kept)), feeds)
    for out in model.graph.outputs:
        np.testing.assert_allclose(got[out.name], want[out.name], rtol=1e-4, atol=1e-4)
    for name, axes in kept.items():
        ref = want[name]
        for axis, idx in axes:
            ref = np.take(ref, idx, axis=axis)
        np.testing.assert_allclose(got[name], ref, rtol=1e-4, atol=1e-4)
    before = ort_run(proto, feeds)
    after = ort_run(pruned, feeds)
    assert [a.shape for a in after] == [b.shape for b in before]


# ---------------------------------------------------------------- options and contract


def test_pipeline_text_round_trip():
    text = (
        "prune-channels{ratio=0.3 round-to=8 importance=activation reconstruct=false search=true}"
    )
    pipeline = Pipeline.parse(text)
    printed = str(pipeline)
    assert "round-to=8" in printed and "latency-aware=false" in printed
    assert Pipeline.parse(printed) == pipeline


def test_ratio_zero_leaves_model_untouched():
    proto = _cnn(0, [8, 8])
    model, result = _prune(proto, ratio=0.0)
    assert not result.modified
    assert (
        ir.serde.serialize_model(model).SerializeToString()
        == ir.serde.serialize_model(ir.serde.deserialize_model(proto)).SerializeToString()
    )


def test_nothing_prunable_is_reported_and_unchanged():
    proto = _finish(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        [numpy_helper.from_array(np.ones([4, 3, 1, 1], np.float32), "w")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 4, 4])],
    )
    model, result = _prune(proto, ratio=0.5)
    assert not result.modified
    assert result.stats["skipped-nothing-prunable"] == 1
    assert result.stats["skipped-groups-frozen"] == 1
    assert result.decisions[0]["status"] == "frozen: graph output"


def test_second_run_at_ratio_zero_is_unchanged_after_pruning():
    model, first = _prune(_cnn(1, [8, 8]), ratio=0.5, reconstruct=False, protect_first=False)
    assert first.modified
    again = PruneChannelsPass(ratio=0.0).run(model, PassContext())
    assert not again.modified


def test_protection_of_first_and_last_layers():
    proto = _mlp(0, [8, 8], [True, True])
    _, default = _prune(proto, ratio=0.5, reconstruct=False)
    status = [d["status"] for d in default.decisions]
    assert status.count("protected: first layer") == 1
    assert status.count("protected: last layer") == 1
    assert not default.modified
    _, unprotected = _prune(
        proto, ratio=0.5, reconstruct=False, protect_first=False, protect_last=False
    )
    assert unprotected.stats["groups-pruned"] == 2
    assert unprotected.stats["channels-removed"] == 8


def test_round_to_and_max_layer_ratio():
    proto = _cnn(2, [16, 24, 24], residual=False)
    _, result = _prune(
        proto, ratio=0.3, round_to=8, reconstruct=False, protect_first=False, protect_last=False
    )
    pruned = [d for d in result.decisions if d["status"] == "pruned"]
    assert pruned and all(d["channels"][1] % 8 == 0 for d in pruned)
    _, capped = _prune(
        proto, ratio=0.9, max_layer_ratio=0.5, reconstruct=False, protect_first=False
    )
    for d in capped.decisions:
        if d["status"] == "pruned":
            assert d["channels"][1] >= d["channels"][0] / 2


def test_global_scope_spreads_the_same_total():
    proto = _cnn(3, [16, 16, 16])
    _, local = _prune(proto, ratio=0.25, reconstruct=False, protect_first=False)
    _, global_ = _prune(proto, ratio=0.25, reconstruct=False, protect_first=False, scope="global")
    assert abs(local.stats["units-removed"] - global_.stats["units-removed"]) <= 1
    ratios = {d["ratio"] for d in global_.decisions if "ratio" in d}
    assert len(ratios) >= 1


def test_back_off_halves_ratio_until_the_floor():
    pass_ = PruneChannelsPass(ratio=0.4, min_ratio=0.08)
    first = pass_.back_off()
    assert first is not None and first.options.ratio == pytest.approx(0.2)
    second = first.back_off()
    assert second is not None and second.options.ratio == pytest.approx(0.1)
    assert second.back_off() is None


class _ParamsGuard:
    """A stand-in guard that passes once the model keeps at least ``floor`` parameters."""

    def __init__(self, floor: int) -> None:
        self.floor = floor

    def measure(self, model: ir.Model) -> GuardOutcome:
        params = sum(
            v.const_value.size
            for v in model.graph.initializers.values()
            if v.const_value is not None
        )
        passed = params >= self.floor
        return GuardOutcome(passed, {"params": float(params)}, [] if passed else ["params"], None)


def test_guarded_run_backs_off_to_a_smaller_ratio():
    proto = _cnn(4, [16, 16, 16])
    params = sum(int(np.prod(i.dims)) for i in proto.graph.initializer)
    model = ir.serde.deserialize_model(proto)
    pipeline = Pipeline.parse("prune-channels{ratio=0.6 reconstruct=false protect-first=false}")
    manager = PassManager(pipeline, guard=_ParamsGuard(int(params * 0.8)))
    records = manager.run(model)
    assert records[0].guard_action == "backed off"
    assert records[0].options["ratio"] < 0.6
    assert records[0].modified


def test_guard_rolls_back_when_even_the_smallest_ratio_fails():
    proto = _cnn(5, [16, 16])
    model = ir.serde.deserialize_model(proto)
    manager = PassManager(
        Pipeline.parse("prune-channels{ratio=0.5 reconstruct=false protect-first=false}"),
        guard=_ParamsGuard(10**9),
    )
    records = manager.run(model)
    assert records[0].guard_action == "rolled back" and not records[0].modified
    assert _valid(manager.model).graph.initializer


# ---------------------------------------------------------------- removal and refit


@pytest.mark.parametrize(
    "kwargs",
    [
        {"widths": [8, 8, 8], "residual": True},
        {"widths": [8, 12], "concat": True},
        {"widths": [8, 8], "depthwise": True, "bn": True},
        {"widths": [6, 8], "head": "flatten"},
    ],
    ids=["residual", "concat", "depthwise-bn", "flatten-gemm"],
)
def test_kept_channels_match_masked_original(kwargs):
    _assert_kept_channels_match(_cnn(6, **kwargs), ratio=0.5, protect_first=False)


def test_refit_reduces_error_on_calibration_data():
    proto = _cnn(7, [12, 12, 12], size=6)
    calibration = _data(proto, 16)
    plain, _ = _prune(proto, calibration, ratio=0.5, reconstruct=False, protect_first=False)
    refit, result = _prune(proto, calibration, ratio=0.5, reconstruct=True, protect_first=False)
    assert result.stats["layers-reconstructed"] >= 2
    feeds = {"x": calibration.arrays["x"]}
    want = ort_run(proto, feeds)[0]

    def err(model):
        return float(np.linalg.norm(ort_run(_valid(model), feeds)[0] - want) / np.linalg.norm(want))

    assert err(refit) < err(plain)


def test_refit_of_the_first_pruned_layer_fits_better_than_slicing():
    """The first refit layer sees exact inputs, so its least-squares fit can only improve
    on the sliced weights (the ridge pulls toward them)."""
    proto = _mlp(1, [16, 16], [False, True])
    calibration = _data(proto, 64)
    options = {"ratio": 0.5, "protect_last": False, "protect_first": False}
    plain, _ = _prune(proto, calibration, reconstruct=False, **options)
    refit, result = _prune(proto, calibration, reconstruct=True, **options)
    assert result.stats["layers-reconstructed"] == 2
    # The second layer's output "l1" keeps only some channels: compare on those.
    plan = PruneChannelsPass(**options).plan(
        ir.serde.deserialize_model(proto), PassContext(calibration=calibration)
    )
    group = next(g for g in plan.candidates if any(s.name == "l1" for s in g.spaces))
    mask = np.zeros(group.num_units, dtype=bool)
    mask[plan.keep[group.id]] = True
    idx = np.nonzero(mask[next(s for s in group.spaces if s.name == "l1").unit_of])[0]
    feeds = {"x": calibration.arrays["x"]}
    want = run(with_outputs(ir.serde.deserialize_model(proto), ["l1"]), feeds)["l1"][:, idx]
    got_plain = run(with_outputs(plain, ["l1"]), feeds)["l1"]
    got_refit = run(with_outputs(refit, ["l1"]), feeds)["l1"]
    assert np.linalg.norm(got_refit - want) <= np.linalg.norm(got_plain - want) + 1e-6


def test_digits_cnn_keeps_accuracy_with_refit():
    model_path = DIGITS / "digits_cnn.onnx"
    calib = np.load(DIGITS / "digits_calib.npz")["input"][:128]
    held = np.load(DIGITS / "digits_heldout.npz")["input"]
    labels = np.load(DIGITS / "digits_heldout_labels.npy")
    model = ir.load(model_path)
    manager = PassManager(
        Pipeline.parse("default,prune-channels{ratio=0.25}"),
        context=PassContext(calibration=Dataset({"input": calib}, "digits")),
    )
    records = manager.run(model)
    stats = records[-1].stats
    assert stats["groups-pruned"] == 3 and stats["layers-reconstructed"] == 3
    proto = _valid(manager.model)
    before = (ort_run(onnx.load(model_path), {"input": held})[0].argmax(1) == labels).mean()
    after = (ort_run(proto, {"input": held})[0].argmax(1) == labels).mean()
    assert after >= before - 0.02


def test_bert_heads_and_ffn_are_pruned_and_run():
    proto = zoo.build_bert_encoder()
    feeds = zoo.example_inputs("bert-encoder")
    model = ir.serde.deserialize_model(proto)
    manager = PassManager(Pipeline.parse("default,prune-channels{ratio=0.5 reconstruct=false}"))
    records = manager.run(model)
    decisions = [d for d in records[-1].decisions if d["status"] == "pruned"]
    heads = [d for d in decisions if "attn.query" in d["group"]]
    assert heads and all(d["units_after"] == 2 for d in heads)
    out = ort_run(_valid(manager.model), feeds)[0]
    assert out.shape == (2, 16, 64)


def test_activation_importance_without_data_falls_back_to_l2(caplog):
    caplog.set_level(logging.INFO, logger="nnopt_graph.passes.prune")  # channels, importance
    _, result = _prune(
        _cnn(8, [8, 8]), None, ratio=0.5, importance="activation", protect_first=False
    )
    assert result.stats["skipped-reconstruct-no-calibration"] == 1
    assert {d["importance"] for d in result.decisions if "importance" in d} == {"l2"}
    assert "needs calibration data" in caplog.text


def test_activation_importance_with_data():
    proto = _cnn(9, [8, 8])
    _, result = _prune(
        proto,
        _data(proto),
        ratio=0.5,
        importance="activation",
        reconstruct=False,
        protect_first=False,
    )
    assert {d["importance"] for d in result.decisions if "importance" in d} == {"activation"}


def test_search_records_sensitivity_per_group():
    proto = _cnn(10, [8, 8, 8])
    _, result = _prune(
        proto, _data(proto), ratio=0.25, search=True, reconstruct=False, protect_first=False
    )
    sens = [d["sensitivity"] for d in result.decisions if d.get("sensitivity") is not None]
    assert len(sens) >= 2 and all(s >= 0 for s in sens)


def test_subgraph_groups_are_pruned_but_not_refit():
    then_nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["t"]),
    ]
    rng = np.random.default_rng(0)
    then_graph = helper.make_graph(
        then_nodes,
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["N", 2, 4, 4])],
        [
            numpy_helper.from_array(rng.standard_normal([8, 3, 1, 1]).astype(np.float32), "w1"),
            numpy_helper.from_array(rng.standard_normal([2, 8, 1, 1]).astype(np.float32), "w2"),
        ],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w3"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["N", 2, 4, 4])],
        [numpy_helper.from_array(rng.standard_normal([2, 3, 1, 1]).astype(np.float32), "w3")],
    )
    proto = _finish(
        [helper.make_node("If", ["c"], ["y"], then_branch=then_graph, else_branch=else_graph)],
        [],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4]),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 4, 4])],
    )
    calib = Dataset({"x": np.ones([4, 3, 4, 4], np.float32), "c": np.ones([4], bool)}, "t")
    model, result = _prune(proto, calib, ratio=0.5, protect_first=False)
    assert result.stats["groups-pruned"] == 1
    assert result.stats["skipped-reconstruct-subgraph"] == 1
    pruned = _valid(model)
    feeds = {"x": np.ones([1, 3, 4, 4], np.float32), "c": np.array(True)}
    assert ort_run(pruned, feeds)[0].shape == (1, 2, 4, 4)


def test_latency_aware_widths_are_timed():
    proto = _cnn(11, [40, 40], size=8)
    _, result = _prune(
        proto,
        None,
        ratio=0.3,
        latency_aware=True,
        reconstruct=False,
        protect_first=False,
        round_to=8,
    )
    timed = [d for d in result.decisions if "latency_ms" in d]
    assert timed
    for d in timed:
        assert d["channels"][1] in {int(k) for k in d["latency_ms"]}


# ---------------------------------------------------------------- properties


_CNN = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 10_000),
        "widths": st.lists(st.sampled_from([4, 6, 8, 12]), min_size=1, max_size=3),
        "residual": st.booleans(),
        "concat": st.booleans(),
        "depthwise": st.booleans(),
        "bn": st.booleans(),
        "act": st.sampled_from(["Relu", "Sigmoid", ""]),
        "head": st.sampled_from(["gap", "flatten"]),
    }
)
_MLP = st.integers(1, 3).flatmap(
    lambda n: st.fixed_dictionaries(
        {
            "seed": st.integers(0, 10_000),
            "widths": st.lists(st.sampled_from([4, 7, 16]), min_size=n, max_size=n),
            "gemm": st.lists(st.booleans(), min_size=n, max_size=n),
            "act": st.sampled_from(["Relu", "Tanh"]),
        }
    )
)
_SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(spec=_CNN, ratio=st.floats(0.05, 0.9), scope=st.sampled_from(["local", "global"]))
def test_property_cnn_any_ratio_is_valid_and_kept_channels_match(spec, ratio, scope):
    _assert_kept_channels_match(_cnn(**spec), ratio=ratio, scope=scope, protect_first=False)


@_SETTINGS
@given(spec=_MLP, ratio=st.floats(0.05, 0.9))
def test_property_mlp_any_ratio_is_valid_and_kept_channels_match(spec, ratio):
    _assert_kept_channels_match(_mlp(**spec), ratio=ratio, protect_first=False, protect_last=False)


@_SETTINGS
@given(spec=st.one_of(_CNN.map(lambda s: _cnn(**s)), _MLP.map(lambda s: _mlp(**s))))
def test_property_ratio_zero_is_identity(spec):
    before = ir.serde.serialize_model(ir.serde.deserialize_model(spec)).SerializeToString()
    model, result = _prune(spec, ratio=0.0)
    assert not result.modified
    assert ir.serde.serialize_model(model).SerializeToString() == before


@_SETTINGS
@given(spec=_CNN, ratio=st.floats(0.1, 0.7))
def test_property_refit_gives_a_valid_model(spec, ratio):
    proto = _cnn(**spec)
    model, result = _prune(proto, _data(proto, 4), ratio=ratio, protect_first=False)
    pruned = _valid(model)
    out = ort_run(pruned, {"x": _data(proto, 2, seed=3).arrays["x"]})[0]
    assert out.shape == (2, 3) and np.all(np.isfinite(out))


@pytest.mark.parametrize(
    ("op", "w_shape", "attrs", "x_shape"),
    [
        (
            "Conv",
            [5, 3, 3, 3],
            {"strides": [2, 2], "pads": [1, 0, 1, 2], "dilations": [1, 2]},
            [2, 3, 9, 8],
        ),
        ("Conv", [5, 3, 3, 3], {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, [2, 3, 7, 7]),
        ("Conv", [4, 3, 3], {"pads": [1, 1]}, [2, 3, 10]),
        ("ConvTranspose", [3, 5, 2, 2], {"strides": [2, 2]}, [2, 3, 4, 5]),
        (
            "ConvTranspose",
            [3, 4, 3, 3],
            {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]},
            [2, 3, 4, 4],
        ),
    ],
    ids=["conv-strided-dilated", "conv-same", "conv1d", "convt-k2s2", "convt-padded"],
)
def test_refit_rows_reproduce_the_layer(op, w_shape, attrs, x_shape):
    """The least-squares rows (im2col, or zero-insertion for ConvTranspose) times the
    layer's weights give back its output: the refit fits the right system."""
    from nnopt_graph.passes.prune.reconstruct import Sink, _System

    rng = np.random.default_rng(0)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[1] if op == "ConvTranspose" else w_shape[0]).astype(np.float32)
    proto = _finish(
        [helper.make_node(op, ["x", "w", "b"], ["y"], **attrs)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * len(x_shape))],
    )
    x = rng.standard_normal(x_shape).astype(np.float32)
    y = ort_run(proto, {"x": x})[0]
    model = ir.serde.deserialize_model(proto)
    node = model.graph.node(0)
    sink = Sink(
        node, "convt" if op == "ConvTranspose" else "conv", node.inputs[0], node.outputs[0], {}
    )
    system = _System(sink, w, b, budget=10_000)
    system.sample(0, y, total_batches=1, rng=rng)
    system.add(0, x)
    # Exact targets: the least-squares solution is the layer's own weights and bias.
    solved, bias = system.solve(ridge=1e-9)
    np.testing.assert_allclose(solved, system.flat_weight(), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(bias, b, rtol=1e-3, atol=1e-3)


def test_zoo_cnn_without_cleanup_prunes_to_a_valid_model():
    """Robust without the default pipeline: a Constant-node weight, unfolded BN,
    Identity, Dropout, a depthwise and a grouped Conv, residual Adds and a Concat."""
    proto = zoo.build_cnn()
    _assert_kept_channels_match(proto, ratio=0.5, protect_first=False)


def test_zoo_yolo_block_split_concat_resize_prunes_to_a_valid_model():
    _assert_kept_channels_match(zoo.build_yolo_block(), ratio=0.3, protect_first=False)


def _annotated(proto: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """value_info of intermediate values (initializers' entries are constants to ORT)."""
    weights = {t.name for t in proto.graph.initializer}
    return {v.name: v for v in proto.graph.value_info if v.name not in weights}


def test_pruning_adds_no_value_info_the_input_lacked():
    proto = _mlp(0, [16, 16], [False, False])
    assert not proto.graph.value_info
    model, result = _prune(proto, _data(proto), ratio=0.5, protect_first=False)
    assert result.stats["channels-removed"] > 0
    assert _annotated(_valid(model)) == {}  # ORT fuses differently on an annotated graph


def test_pruning_keeps_input_annotations_with_their_new_shapes():
    proto = _mlp(0, [16, 16], [False, False])
    proto.graph.value_info.append(helper.make_tensor_value_info("h0", TensorProto.FLOAT, ["N", 16]))
    model, result = _prune(proto, _data(proto), ratio=0.5, protect_first=False)
    assert result.stats["channels-removed"] > 0
    annotated = _annotated(_valid(model))
    assert list(annotated) == ["h0"]
    width = annotated["h0"].type.tensor_type.shape.dim[1].dim_value
    assert width == model.graph.initializers["w1"].const_value.shape[0] < 16

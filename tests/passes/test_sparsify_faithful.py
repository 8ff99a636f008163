"""Tests of sparsify's faithful 2:4: sequential toward the dense output, sensitivity, coverage."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from passes_util import ort_run, to_proto
from test_sparsify import HEADER, build, dataset, initializer, nm_violations, weights

from nnopt_graph.check.metrics import sample_metrics
from nnopt_graph.errors import BadInputError
from nnopt_graph.passes.sparsity.layers import ActivationStats, Layer
from nnopt_graph.passes.sparsity.patterns import (
    follows_pattern,
    least_squares_target,
    parse_pattern,
    refit_masked,
    relative_error,
    sparsegpt,
)
from nnopt_graph.passes.sparsity.sparsify import SparsifyPass
from nnopt_graph.pipeline.base import PassContext
from nnopt_graph.pipeline.grammar import PassSpec

# A 3-layer MLP: w1 [64,64], w2 [64,64], w3 [64,32]; 64*64*2 + 64*32 = 10240 weights.
DEEP = f"""{HEADER}
g (float[N,64] x, float[64,64] w1, float[64,64] w2, float[64,32] w3) => (float[N,32] y) {{
    h1 = MatMul (x, w1)
    r1 = Tanh (h1)
    h2 = MatMul (r1, w2)
    r2 = Tanh (h2)
    y = MatMul (r2, w3)
}}"""


def deep() -> onnx.ModelProto:
    return build(
        DEEP,
        w1=weights(1, 64, 64) * 0.2,
        w2=weights(2, 64, 64) * 0.2,
        w3=weights(3, 64, 32) * 0.2,
    )


def inputs(seed: int, samples: int, rows: int = 16, k: int = 64) -> np.ndarray:
    """Correlated, unevenly scaled features, as real activations are."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(99).standard_normal((k, k)) * 0.4 + np.eye(k)
    scale = np.random.default_rng(98).uniform(0.3, 2.0, k)
    return ((rng.standard_normal((samples, rows, k)) @ mix) * scale).astype(np.float32)


def run(proto: onnx.ModelProto, context: PassContext | None = None, **options):
    model = ir.serde.deserialize_model(proto)
    result = (
        PassSpec.create("sparsify", **options).instantiate().run(model, context or PassContext())
    )
    return model, result


def per_sample_cosine(reference: onnx.ModelProto, candidate: onnx.ModelProto, x: np.ndarray):
    """Worst-output cosine of each sample, measured independently of the pass."""
    values = []
    for sample in x:
        ref, got = ort_run(reference, {"x": sample}), ort_run(candidate, {"x": sample})
        values.append(min(sample_metrics(r, g).cosine for r, g in zip(ref, got, strict=True)))
    return np.array(values)


def summary(result) -> dict:
    return result.decisions[-1]


def dense_weights(result) -> list[str]:
    return [d["weight"] for d in result.decisions if "layer" in d and d["pattern"] == "dense"]


# ---------------------------------------------------------------- least-squares target


def test_least_squares_target_matches_reference_output_better_than_w():
    rng = np.random.default_rng(0)
    x_ref = rng.standard_normal((400, 16))
    # Drift mostly explained by the inputs (a mixing), partly not (noise).
    drift = np.eye(16) + 0.3 * rng.standard_normal((16, 16))
    x = x_ref @ drift + 0.05 * rng.standard_normal((400, 16))
    w = rng.standard_normal((8, 16))
    target = least_squares_target(w, x.T @ x, x.T @ x_ref, damp=0.0)
    residual = np.linalg.norm(x_ref @ w.T - x @ target.T)
    assert residual < 0.2 * np.linalg.norm(x_ref @ w.T - x @ w.T)
    # The normal equations hold: no other dense W' does better on these inputs.
    np.testing.assert_allclose((x_ref @ w.T - x @ target.T).T @ x, 0.0, atol=1e-8)


def test_least_squares_target_is_w_when_inputs_did_not_drift():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 12))
    w = rng.standard_normal((5, 12))
    h = x.T @ x
    for damp in (0.0, 0.01, 10.0):
        np.testing.assert_allclose(least_squares_target(w, h, h, damp), w, rtol=1e-9, atol=1e-9)


def test_least_squares_target_ridge_pulls_toward_w_not_zero():
    rng = np.random.default_rng(2)
    x_ref = rng.standard_normal((50, 12))
    x = x_ref @ (np.eye(12) + 0.5 * rng.standard_normal((12, 12)))
    w = rng.standard_normal((5, 12))
    h, c = x.T @ x, x.T @ x_ref
    gaps = [np.linalg.norm(least_squares_target(w, h, c, d) - w) for d in (0.0, 1.0, 1e4)]
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 0.01 * gaps[0]  # a huge ridge leaves W as it was


def test_cross_statistics_need_the_reference_input():
    text = f"""{HEADER}
    g (float[N,8] x, float[8,4] w) => (float[N,4] y) {{ y = MatMul (x, w) }}"""
    model = ir.serde.deserialize_model(build(text, w=weights(4, 8, 4)))
    node = next(iter(model.graph))
    layer = Layer(node, node.inputs[1], "MatMul", (8, 4))
    stats = ActivationStats(layer, hessian=False, cross=True)
    assert stats.hessian  # cross statistics are always full Hessians
    with pytest.raises(ValueError, match="reference"):
        stats.update(np.ones((3, 8), np.float32))
    with pytest.raises(ValueError, match="reference"):
        stats.update(np.ones((3, 8), np.float32), np.ones((2, 8), np.float32))
    x, x_ref = weights(5, 3, 8), weights(6, 3, 8)
    stats.update(x, x_ref)
    np.testing.assert_allclose(stats.cross_sums[0], x.T.astype(np.float64) @ x_ref, atol=1e-4)
    plain = ActivationStats(layer, hessian=True)
    plain.update(x)
    assert plain.cross_sums == []


# ---------------------------------------------------------------- sequential toward dense


def test_match_dense_beats_plain_sequential_on_held_out_samples():
    proto = deep()
    x = inputs(0, 40)
    calib = dataset(x=x[:32])
    held = x[32:]
    worst = {}
    for match in (False, True):
        model, result = run(
            proto, PassContext(calibration=calib), sequential=True, match_dense=match
        )
        out = to_proto(model)
        assert nm_violations(out, 2, 4) == {"w1": 0, "w2": 0, "w3": 0}
        assert summary(result)["match-dense"] is match
        worst[match] = per_sample_cosine(proto, out, held).min()
    assert 1 - worst[True] < 0.9 * (1 - worst[False]), worst


def test_sequential_keeps_the_first_layer_solution_of_one_shot():
    # The first layer sees the same inputs either way: sequential changes only later ones.
    proto = deep()
    calib = dataset(x=inputs(1, 16))
    one_shot, _ = run(proto, PassContext(calibration=calib))
    seq, _ = run(proto, PassContext(calibration=calib), sequential=True)
    a, b = to_proto(one_shot), to_proto(seq)
    np.testing.assert_allclose(initializer(a, "w1"), initializer(b, "w1"), rtol=1e-5, atol=1e-6)
    assert not np.allclose(initializer(a, "w3"), initializer(b, "w3"), atol=1e-4)


def test_sequential_match_dense_is_idempotent():
    proto = deep()
    calib = dataset(x=inputs(2, 16))
    model, first = run(proto, PassContext(calibration=calib), sequential=True)
    assert first.stats["layers-sparsified"] == 3
    second = SparsifyPass(sequential=True).run(model, PassContext(calibration=calib))
    assert not second.modified, second.stats
    assert summary(second)["matmul-gemm-weight-coverage"] == 1.0


# ---------------------------------------------------------------- sensitivity and coverage


# y = MatMul(x, big) + 0.001 * MatMul(x, small): the big layer's weights are nearly 2:4
# already (two tiny entries in every four), so its own relative error is tiny, yet it
# carries the output; the small layer's error is large but barely reaches the output.
SPLIT = f"""{HEADER}
g (float[N,16] x, float[16,16] big, float[16,16] small, float[1] s) => (float[N,16] y) {{
    a = MatMul (x, big)
    b = MatMul (x, small)
    c = Mul (b, s)
    y = Add (a, c)
}}"""


def split_model() -> onnx.ModelProto:
    big = weights(7, 16, 16)
    big[1::4] *= 0.05
    big[3::4] *= 0.05
    return build(SPLIT, big=big, small=weights(8, 16, 16), s=np.array([1e-3], np.float32))


def test_output_sensitivity_ranks_by_effect_on_the_outputs():
    proto = split_model()
    calib = dataset(x=weights(9, 8, 4, 16))
    options = {"importance": "magnitude", "reconstruct": False, "keep_dense": 1}
    _, by_error = run(proto, PassContext(calibration=calib), **options)
    _, by_output = run(proto, PassContext(calibration=calib), sensitivity="output", **options)
    assert dense_weights(by_error) == ["small"]  # the larger relative error
    assert dense_weights(by_output) == ["big"]  # the larger effect on the outputs
    layers = {d["weight"]: d for d in by_output.decisions if "layer" in d}
    assert layers["big"]["sensitivity-cosine"] < layers["small"]["sensitivity-cosine"]
    assert summary(by_output)["ranked-by"] == "output"
    assert summary(by_output)["kept-dense"] == ["a"]


def test_calibration_cosine_in_summary_is_what_onnx_runtime_measures():
    proto = split_model()
    x = weights(10, 6, 4, 16)
    model, result = run(
        proto,
        PassContext(calibration=dataset(x=x)),
        importance="magnitude",
        reconstruct=False,
        keep_dense=1,
        sensitivity="output",
    )
    measured = per_sample_cosine(proto, to_proto(model), x).min()
    assert summary(result)["calibration-cosine-min"] == pytest.approx(measured, abs=1e-5)
    assert summary(result)["calibration-samples"] == 6


def test_min_coverage_passes_over_a_sensitive_layer_too_large_to_keep_dense():
    proto = deep()
    calib = dataset(x=inputs(3, 16))
    # 10240 weights; at 0.75 coverage 2560 may stay dense: w3 (2048) fits, w1/w2 (4096) not.
    model, result = run(proto, PassContext(calibration=calib), keep_dense=3, min_coverage=0.75)
    assert dense_weights(result) == ["w3"]
    assert summary(result)["matmul-gemm-weight-coverage"] == pytest.approx(8192 / 10240)
    assert summary(result)["matmul-gemm-weight-coverage"] >= 0.75
    np.testing.assert_array_equal(initializer(to_proto(model), "w3"), initializer(proto, "w3"))
    passed = PassSpec.create("sparsify", keep_dense=3, min_coverage=0.75).instantiate()
    passed.run(ir.serde.deserialize_model(proto), PassContext(calibration=calib))
    assert passed.back_off() is None  # nothing else fits: back-off stops


def test_min_coverage_one_keeps_nothing_dense_and_stops_back_off():
    proto = deep()
    calib = dataset(x=inputs(4, 8))
    nm = PassSpec.create("sparsify", keep_dense=1, min_coverage=1.0).instantiate()
    result = nm.run(ir.serde.deserialize_model(proto), PassContext(calibration=calib))
    assert dense_weights(result) == []
    assert result.stats["layers-sparsified"] == 3
    assert nm.back_off() is None


def test_back_off_grows_keep_dense_within_min_coverage():
    proto = deep()
    calib = dataset(x=inputs(5, 8))
    current = PassSpec.create("sparsify", min_coverage=0.5).instantiate()
    steps = []
    while True:
        current.run(ir.serde.deserialize_model(proto), PassContext(calibration=calib))
        nxt = current.back_off()
        if nxt is None:
            break
        steps.append(nxt.options.keep_dense)
        current = nxt
    assert steps and steps == list(range(1, len(steps) + 1))
    result = current.run(ir.serde.deserialize_model(proto), PassContext(calibration=calib))
    sizes = {"w1": 4096, "w2": 4096, "w3": 2048}
    dense = dense_weights(result)
    assert len(dense) == steps[-1]
    # 5120 weights may stay dense; back-off stopped because no other layer fits.
    used = sum(sizes[d] for d in dense)
    assert used <= 5120
    assert all(used + sizes[w] > 5120 for w in sizes if w not in dense)
    assert summary(result)["matmul-gemm-weight-coverage"] >= 0.5


def test_keep_dense_with_coverage_is_idempotent():
    proto = deep()
    calib = dataset(x=inputs(6, 16))
    options = {"keep_dense": 1, "min_coverage": 0.75, "sequential": True}
    model, first = run(proto, PassContext(calibration=calib), **options)
    assert first.modified and dense_weights(first) == ["w3"]
    again = PassSpec.create("sparsify", **options).instantiate()
    second = again.run(model, PassContext(calibration=calib))
    assert not second.modified, second.stats
    assert second.stats["skipped-layers-already-sparse"] == 2
    assert (
        summary(second)["matmul-gemm-weight-coverage"]
        == summary(first)["matmul-gemm-weight-coverage"]
    )


def test_sequential_keeps_the_chosen_dense_layer_untouched_and_bounds_the_error():
    proto = deep()
    x = inputs(7, 24)
    calib = dataset(x=x[:16])
    all_sparse, _ = run(proto, PassContext(calibration=calib), sequential=True)
    model, result = run(
        proto,
        PassContext(calibration=calib),
        sequential=True,
        keep_dense=1,
        sensitivity="output",
    )
    out = to_proto(model)
    (name,) = dense_weights(result)
    np.testing.assert_array_equal(initializer(out, name), initializer(proto, name))
    held = x[16:]
    worst_sparse = per_sample_cosine(proto, to_proto(all_sparse), held).min()
    worst = per_sample_cosine(proto, out, held).min()
    assert worst > worst_sparse  # the most sensitive layer kept dense: every sample closer
    assert 1 - worst < 0.5


def test_bad_coverage_and_sensitivity_options_are_rejected():
    model = ir.serde.deserialize_model(deep())
    for options in ({"min_coverage": 1.5}, {"min_coverage": -0.1}, {"sensitivity": "loss"}):
        with pytest.raises(BadInputError, match="sparsify"):
            PassSpec.create("sparsify", **options)
        with pytest.raises(BadInputError, match="sparsify"):
            SparsifyPass(**options).requires(model)


def test_output_sensitivity_without_calibration_falls_back_to_error():
    _, result = run(deep(), keep_dense=1, sensitivity="output")
    assert result.stats["skipped-no-calibration-data"] == 1
    assert len(dense_weights(result)) == 1
    assert all(d["sensitivity-cosine"] is None for d in result.decisions if "layer" in d)
    assert "calibration-cosine-min" not in summary(result)


# ---------------------------------------------------------------- refit


def test_refit_is_the_exact_least_squares_fit_on_the_mask():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2000, 32)) @ rng.standard_normal((32, 32))
    w = rng.standard_normal((12, 32))
    h = x.T @ x
    pattern = parse_pattern("2:4", 0.0)
    swept = sparsegpt(w, h, pattern, damp=0.01).matrix
    refit = refit_masked(w, h, swept != 0, 0.01, start=swept)
    assert follows_pattern(refit, pattern)
    np.testing.assert_array_equal(refit == 0, swept == 0)  # the mask is kept
    damped = h + 0.01 * np.mean(np.diag(h)) * np.eye(32)
    for row in range(12):
        kept = np.flatnonzero(swept[row])
        exact = np.linalg.solve(damped[np.ix_(kept, kept)], (damped @ w[row])[kept])
        np.testing.assert_allclose(refit[row, kept], exact, rtol=1e-5, atol=1e-7)
    assert relative_error(w, refit, h) < relative_error(w, swept, h)


def test_refit_lowers_calibration_error_and_needs_calibration():
    proto = deep()
    calib = dataset(x=inputs(8, 16))
    errors = {}
    for refit in (False, True):
        model, result = run(proto, PassContext(calibration=calib), refit=refit)
        assert nm_violations(to_proto(model), 2, 4) == {"w1": 0, "w2": 0, "w3": 0}
        errors[refit] = [d["relative-output-error"] for d in result.decisions if "layer" in d]
    assert all(a < b for a, b in zip(errors[True], errors[False], strict=True)), errors
    # Without calibration there is no Hessian: refit changes nothing.
    plain, _ = run(proto, importance="magnitude", reconstruct=False)
    with_refit, _ = run(proto, refit=True)
    for name in ("w1", "w2", "w3"):
        np.testing.assert_array_equal(
            initializer(to_proto(plain), name), initializer(to_proto(with_refit), name)
        )

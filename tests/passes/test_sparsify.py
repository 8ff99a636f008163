"""Tests of sparsify: N:M along K, unstructured, Wanda, SparseGPT, guard back-off, MatMul->Gemm."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import pytest
from onnx import numpy_helper
from passes_util import ort_run, to_proto

from nnopt_graph.passes.sparsity.patterns import (
    follows_pattern,
    mask_weights,
    parse_pattern,
    relative_error,
    sparsegpt,
)
from nnopt_graph.passes.sparsity.sparsify import SparsifyPass
from nnopt_graph.pipeline.base import PassContext
from nnopt_graph.pipeline.grammar import PassSpec, Pipeline
from nnopt_graph.runtime.data import Dataset

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


# ---------------------------------------------------------------- helpers


def build(text: str, **weights: np.ndarray) -> onnx.ModelProto:
    """Parse a model whose weights are declared as graph inputs; make them initializers."""
    proto = onnx.parser.parse_model(text)
    for name, array in weights.items():
        proto.graph.initializer.append(numpy_helper.from_array(array, name))
        kept = [i for i in proto.graph.input if i.name != name]
        del proto.graph.input[:]
        proto.graph.input.extend(kept)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def weights(seed: int, *shape: int, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def run(proto: onnx.ModelProto, context: PassContext | None = None, **options):
    model = ir.serde.deserialize_model(proto)
    result = (
        PassSpec.create("sparsify", **options).instantiate().run(model, context or PassContext())
    )
    return model, result


def dataset(**arrays: np.ndarray) -> Dataset:
    """Samples stacked on axis 0 (each one a whole feed)."""
    return Dataset(dict(arrays), "test", frozenset(arrays))


def initializer(proto: onnx.ModelProto, name: str) -> np.ndarray:
    for tensor in proto.graph.initializer:
        if tensor.name == name:
            return numpy_helper.to_array(tensor)
    raise KeyError(name)


def nm_violations(proto: onnx.ModelProto, n: int, m: int) -> dict[str, int]:
    """Independent check: per Conv/MatMul/Gemm initializer weight, groups breaking N:M along K.

    Written from the rule as TensorRT documents it, not from the pass: Conv weights
    [Cout, Cin, *kernel] count non-zeros in each run of M input channels at each output
    channel and kernel position; MatMul B [K, N] and Gemm B ([K, N], or [N, K] with
    transB=1) count non-zeros in each run of M along K for each output column.
    """
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    out: dict[str, int] = {}
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "MatMul", "Gemm") or node.input[1] not in inits:
            continue
        w = inits[node.input[1]]
        if node.op_type == "Conv":
            cout, cin = w.shape[:2]
            assert cin % m == 0, f"{node.input[1]}: Cin {cin} not a multiple of {m}"
            runs = w.reshape(cout, cin // m, m, -1)
            counts = np.count_nonzero(runs, axis=2)
        else:
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            kn = w.T if node.op_type == "Gemm" and trans_b else w
            k, cols = kn.shape
            assert k % m == 0, f"{node.input[1]}: K {k} not a multiple of {m}"
            counts = np.count_nonzero(kn.reshape(k // m, m, cols), axis=1)
        out[node.input[1]] = int(np.sum(counts > n))
    return out


def cosine(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    x = np.concatenate([v.ravel() for v in a]).astype(np.float64)
    y = np.concatenate([v.ravel() for v in b]).astype(np.float64)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def outputs(proto: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    return [o for f in feeds for o in ort_run(proto, f)]


def rel_err(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    pairs = zip(ref, got, strict=True)
    num = sum(float(np.sum((a.astype(np.float64) - b) ** 2)) for a, b in pairs)
    den = sum(float(np.sum(a.astype(np.float64) ** 2)) for a in ref)
    return num / den


MLP = f"""{HEADER}
g (float[N,64] x, float[64,32] w1, float[32,16] w2) => (float[N,16] y) {{
    h = MatMul (x, w1)
    r = Relu (h)
    y = MatMul (r, w2)
}}"""


def mlp() -> onnx.ModelProto:
    return build(MLP, w1=weights(1, 64, 32), w2=weights(2, 32, 16))


def correlated_inputs(seed: int, samples: int, rows: int, k: int) -> np.ndarray:
    """Inputs with strongly correlated, unevenly scaled features (as real activations are)."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(99).standard_normal((k, k)) * 0.3 + np.eye(k)
    scale = np.random.default_rng(98).uniform(0.2, 3.0, k)
    scale[:4] *= 8
    z = rng.standard_normal((samples, rows, k))
    return ((z @ mix) * scale).astype(np.float32)


# ---------------------------------------------------------------- patterns (positive)


def test_matmul_2_4_along_k():
    proto = mlp()
    model, result = run(proto, importance="magnitude", reconstruct=False)
    out = to_proto(model)
    assert nm_violations(out, 2, 4) == {"w1": 0, "w2": 0}
    assert result.stats["layers-sparsified"] == 2
    assert result.stats["params-zeroed"] == (64 * 32 + 32 * 16) // 2
    assert np.count_nonzero(initializer(out, "w1")) == 64 * 32 // 2
    feeds = [{"x": weights(s, 4, 64)} for s in range(3)]
    assert cosine(outputs(proto, feeds), outputs(out, feeds)) > 0.7


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_n_m_respects_trans_b(trans_b):
    shape = (24, 16) if trans_b else (16, 24)
    text = f"""{HEADER}
    g (float[N,16] x, float[{shape[0]},{shape[1]}] w, float[24] b) => (float[N,24] y) {{
        y = Gemm <transB = {trans_b}> (x, w, b)
    }}"""
    proto = build(text, w=weights(3, *shape), b=weights(4, 24))
    model, result = run(proto, pattern="4:8", importance="magnitude", reconstruct=False)
    out = to_proto(model)
    assert nm_violations(out, 4, 8) == {"w": 0}
    assert result.stats["layers-sparsified"] == 1
    np.testing.assert_array_equal(initializer(out, "b"), initializer(proto, "b"))


def test_conv_2_4_along_input_channels_per_kernel_position():
    text = f"""{HEADER}
    g (float[N,8,6,6] x, float[16,8,3,3] w) => (float[N,16,6,6] y) {{
        y = Conv <pads = [1, 1, 1, 1]> (x, w)
    }}"""
    proto = build(text, w=weights(5, 16, 8, 3, 3))
    feeds = [{"x": weights(6 + s, 2, 8, 6, 6)} for s in range(2)]
    calib = dataset(x=np.stack([weights(20 + s, 2, 8, 6, 6) for s in range(4)]))
    model, result = run(proto, PassContext(calibration=calib))
    out = to_proto(model)
    assert nm_violations(out, 2, 4) == {"w": 0}
    assert result.stats["layers-sparsified"] == 1
    assert cosine(outputs(proto, feeds), outputs(out, feeds)) > 0.7


def test_unstructured_ratio_per_layer():
    proto = mlp()
    model, result = run(
        proto, pattern="unstructured", ratio=0.7, importance="magnitude", reconstruct=False
    )
    out = to_proto(model)
    for name, size in (("w1", 64 * 32), ("w2", 32 * 16)):
        zeros = size - np.count_nonzero(initializer(out, name))
        assert zeros == int(np.floor(0.7 * size))
    assert result.stats["params-zeroed"] == int(0.7 * 2048) + int(np.floor(0.7 * 512))


def test_wanda_beats_magnitude_on_uneven_inputs():
    text = f"""{HEADER}
    g (float[N,32] x, float[32,32] w) => (float[N,32] y) {{ y = MatMul (x, w) }}"""
    proto = build(text, w=weights(7, 32, 32))
    x = correlated_inputs(0, 12, 8, 32)
    calib = dataset(x=x[:8])
    held = [{"x": s} for s in x[8:]]
    ref = outputs(proto, held)
    errors = {}
    for importance in ("magnitude", "wanda"):
        model, _ = run(
            proto, PassContext(calibration=calib), importance=importance, reconstruct=False
        )
        errors[importance] = rel_err(ref, outputs(to_proto(model), held))
    assert errors["wanda"] < errors["magnitude"]


def test_reconstruction_reduces_error_on_held_out_data():
    text = f"""{HEADER}
    g (float[N,32] x, float[32,24] w) => (float[N,24] y) {{ y = MatMul (x, w) }}"""
    proto = build(text, w=weights(8, 32, 24))
    x = correlated_inputs(1, 24, 16, 32)
    calib = dataset(x=x[:16])
    held = [{"x": s} for s in x[16:]]
    ref = outputs(proto, held)
    errors = {}
    for reconstruct in (False, True):
        model, result = run(proto, PassContext(calibration=calib), reconstruct=reconstruct)
        out = to_proto(model)
        assert nm_violations(out, 2, 4) == {"w": 0}
        errors[reconstruct] = rel_err(ref, outputs(out, held))
        assert result.decisions[0]["reconstructed"] is reconstruct
    assert errors[True] < 0.7 * errors[False]


def test_idempotent_after_reconstruction():
    proto = mlp()
    calib = dataset(x=np.stack([weights(30 + s, 4, 64) for s in range(4)]))
    model, first = run(proto, PassContext(calibration=calib))
    assert first.modified
    second = SparsifyPass().run(model, PassContext(calibration=calib))
    assert not second.modified, second.stats
    assert second.stats["skipped-layers-already-sparse"] == 2


def test_weight_in_constant_node_and_float16():
    text = f"""{HEADER}
    g (float16[N,16] x) => (float16[N,8] y) {{
        w = Constant <value = float16[1] {{0}}> ()
        y = MatMul (x, w)
    }}"""
    proto = onnx.parser.parse_model(text)
    value = numpy_helper.from_array(weights(20, 16, 8, dtype=np.float16), "w")
    proto.graph.node[0].attribute[0].t.CopyFrom(value)
    onnx.checker.check_model(proto, full_check=True)
    model, result = run(proto, importance="magnitude", reconstruct=False)
    assert result.stats["layers-sparsified"] == 1
    constant = next(n for n in model.graph if n.op_type == "Constant")
    tensor = constant.attributes["value"].as_tensor()
    assert tensor.dtype == ir.DataType.FLOAT16
    kn = tensor.numpy()
    assert np.all(np.count_nonzero(kn.reshape(4, 4, 8), axis=1) <= 2)
    to_proto(model)


# ---------------------------------------------------------------- skips (negative)


def test_shared_weight_is_skipped():
    text = f"""{HEADER}
    g (float[N,16] x, float[N,16] z, float[16,16] w) => (float[N,16] y) {{
        a = MatMul (x, w)
        b = MatMul (z, w)
        y = Add (a, b)
    }}"""
    proto = build(text, w=weights(9, 16, 16))
    model, result = run(proto)
    assert not result.modified
    assert result.stats["skipped-layers-shared-weights"] == 2
    np.testing.assert_array_equal(initializer(to_proto(model), "w"), initializer(proto, "w"))


def test_non_constant_and_graph_output_weights_are_skipped():
    text = f"""{HEADER}
    g (float[N,16] x, float[16,8] v, float[16,8] w) => (float[N,8] y, float[16,8] w_out) {{
        a = MatMul (x, v)
        b = MatMul (x, w)
        y = Add (a, b)
        w_out = Identity (w)
    }}"""
    proto = build(text, w=weights(10, 16, 8))  # v stays a graph input
    _, result = run(proto)
    assert not result.modified
    assert result.stats["skipped-layers-unsupported"] == 1  # v is not constant
    assert result.stats["skipped-layers-shared-weights"] == 1  # w also feeds Identity


def test_k_not_multiple_of_m_and_depthwise_conv_are_skipped():
    text = f"""{HEADER}
    g (float[N,6] x, float[6,8] w, float[N,8,5,5] i, float[8,1,3,3] d)
        => (float[N,8] y, float[N,8,5,5] z) {{
        y = MatMul (x, w)
        z = Conv <group = 8, pads = [1, 1, 1, 1]> (i, d)
    }}"""
    proto = build(text, w=weights(11, 6, 8), d=weights(12, 8, 1, 3, 3))
    _, result = run(proto)
    assert not result.modified
    assert result.stats["skipped-layers-pattern-mismatch"] == 2


def test_integer_weight_is_left_alone():
    text = f"""{HEADER}
    g (int32[N,8] x, int32[8,4] w) => (int32[N,4] y) {{ y = MatMul (x, w) }}"""
    proto = build(text, w=np.arange(32, dtype=np.int32).reshape(8, 4))
    _, result = run(proto)
    assert not result.modified and result.stats["skipped-layers-unsupported"] == 1


def test_exclude_min_params_and_ops():
    proto = mlp()
    model, result = run(proto, exclude="^y$", importance="magnitude", reconstruct=False)
    assert result.stats["layers-sparsified"] == 1  # unnamed nodes go by their output's name
    assert result.stats["skipped-layers-excluded"] == 1
    np.testing.assert_array_equal(initializer(to_proto(model), "w2"), initializer(proto, "w2"))
    _, result = run(proto, min_params=1000, importance="magnitude", reconstruct=False)
    assert result.stats["layers-sparsified"] == 1 and result.stats["skipped-layers-excluded"] == 1
    _, result = run(proto, ops="conv")
    assert not result.modified


def test_no_calibration_falls_back_to_magnitude():
    proto = mlp()
    _, result = run(proto, importance="wanda", reconstruct=True)
    assert result.modified
    assert result.stats["skipped-no-calibration-data"] == 1
    assert all(d["importance"] == "magnitude" for d in result.decisions if "layer" in d)


def test_bad_options_are_rejected_before_running():
    from nnopt_graph.errors import BadInputError

    model = ir.serde.deserialize_model(mlp())
    for options in (
        {"pattern": "4:2"},
        {"pattern": "2-4"},
        {"ops": "conv+lstm"},
        {"ratio": 1.5, "pattern": "unstructured"},
        {"exclude": "("},
        {"keep_dense": -1},
    ):
        with pytest.raises(BadInputError, match="sparsify"):
            PassSpec.create("sparsify", **options)  # the grammar refuses them first
        with pytest.raises(BadInputError, match="sparsify"):
            SparsifyPass(**options).requires(model)  # and so does a pass built directly


# ---------------------------------------------------------------- subgraphs and functions


BRANCH_WEIGHT = ", ".join(str(v) for v in range(1, 257))


def test_if_branch_weight_uses_magnitude_and_is_counted():
    text = f"""{HEADER}
    g (float[N,16] x, bool c, float[16,16] w) => (float[N,16] y) {{
        h = MatMul (x, w)
        y = If (c) <then_branch = t () => (float[N,16] ty) {{
                       tw = Constant <value = float[16,16] {{{BRANCH_WEIGHT}}}> ()
                       ty = MatMul (h, tw)
                   }},
                   else_branch = e () => (float[N,16] ey) {{ ey = Neg (h) }}>
    }}"""
    proto = build(text, w=weights(13, 16, 16))
    calib = dataset(
        x=np.stack([weights(40 + s, 2, 16) for s in range(3)]), c=np.ones((3,), dtype=bool)
    )
    model, result = run(proto, PassContext(calibration=calib))
    assert result.stats["layers-sparsified"] == 2
    assert result.stats["skipped-subgraph-layers-magnitude-only"] == 1
    out = to_proto(model)
    assert nm_violations(out, 2, 4) == {"w": 0}
    feeds = {"x": weights(50, 2, 16), "c": np.array(True)}
    ort_run(out, feeds)


def test_function_bodies_are_counted_not_changed():
    text = """<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
    g (float[N,4] x) => (float[N,4] y) { y = local.Lin (x) }
    <domain: "local", opset_import: ["" : 17]>
    Lin (a) => (b) {
        w = Constant <value = float[4,4] {1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16}> ()
        b = MatMul (a, w)
    }"""
    _, result = run(build(text))
    assert not result.modified
    assert result.stats["skipped-layers-in-functions"] == 1


# ---------------------------------------------------------------- keep-dense, back-off, guard


def test_keep_dense_leaves_the_most_sensitive_layer_dense():
    proto = mlp()
    model, result = run(proto, keep_dense=1, importance="magnitude", reconstruct=False)
    assert result.stats["layers-sparsified"] == 1 and result.stats["skipped-layers-kept-dense"] == 1
    layers = [d for d in result.decisions if "layer" in d]
    dense = [d for d in layers if d["pattern"] == "dense"]
    sparse = [d for d in layers if d["pattern"] != "dense"]
    assert dense[0]["relative-output-error"] >= sparse[0]["relative-output-error"]
    name = dense[0]["weight"]
    np.testing.assert_array_equal(initializer(to_proto(model), name), initializer(proto, name))


def test_back_off_sequence():
    nm = SparsifyPass()
    assert nm.back_off() is None  # not run yet: nothing known to back off to
    nm.run(ir.serde.deserialize_model(mlp()), PassContext())
    steps = []
    current = nm
    while (current := current.back_off()) is not None:
        steps.append(current.options.keep_dense)
        current.run(ir.serde.deserialize_model(mlp()), PassContext())
    assert steps == [1, 2]
    un = SparsifyPass(pattern="unstructured", ratio=0.3)
    assert un.back_off().options.ratio == pytest.approx(0.2)
    assert un.back_off().back_off().options.ratio == pytest.approx(0.1)


def test_guard_backs_off_to_keep_dense(tmp_path):
    from nnopt_graph.job import optimize

    proto = mlp()
    x = np.stack([weights(60 + s, 4, 64) for s in range(10)])
    held = [{"x": s} for s in x[6:]]
    plain, _ = run(proto, importance="magnitude", reconstruct=False)
    from nnopt_graph.check.metrics import sample_metrics

    ref, cand = outputs(proto, held), outputs(to_proto(plain), held)
    first = min(sample_metrics(r, c).cosine for r, c in zip(ref, cand, strict=True))  # worst sample
    budget = first + (1 - first) / 2  # the full 2:4 model cannot keep it
    result = optimize(
        proto,
        tmp_path / "out.onnx",
        "sparsify{importance=magnitude reconstruct=false}",
        calib=dataset(x=x[:6]),
        eval_data=dataset(x=x[6:]),
        guard=f"cosine>={budget:.6f}",
    )
    record = result.records[0]
    assert record.guard_action == "backed off", record.outcome_detail
    assert record.options["keep-dense"] >= 1
    assert result.fidelity is not None and result.fidelity.cosine_min >= budget


# ---------------------------------------------------------------- MatMul -> Gemm for TensorRT


@pytest.mark.parametrize("opset", [13, 17])
def test_matmul_to_gemm_for_tensorrt_rank3(opset):
    text = f"""<ir_version: 8, opset_import: ["" : {opset}]>
    g (float[B,S,16] x, float[16,8] w, float[8] b) => (float[B,S,8] y) {{
        h = MatMul (x, w)
        y = Add (h, b)
    }}"""
    proto = build(text, w=weights(14, 16, 8), b=weights(15, 8))
    plain, _ = run(proto, importance="magnitude", reconstruct=False)
    model, result = run(
        proto, PassContext(target="tensorrt"), importance="magnitude", reconstruct=False
    )
    assert result.stats["matmuls-to-gemm"] == 1
    out = to_proto(model)
    types = [n.op_type for n in out.graph.node]
    assert "MatMul" not in types and "Gemm" in types
    assert nm_violations(out, 2, 4) == {"w": 0}  # Gemm transB=1: [N, K], still 2:4 along K
    feeds = {"x": weights(16, 2, 5, 16)}
    np.testing.assert_allclose(
        ort_run(out, feeds)[0], ort_run(to_proto(plain), feeds)[0], rtol=1e-5, atol=1e-5
    )


def test_matmul_to_gemm_rank2_and_option_off():
    text = f"""{HEADER}
    g (float[N,16] x, float[16,8] w) => (float[N,8] y) {{ y = MatMul (x, w) }}"""
    proto = build(text, w=weights(17, 16, 8))
    model, result = run(
        proto, PassContext(target="tensorrt"), importance="magnitude", reconstruct=False
    )
    out = to_proto(model)
    assert [n.op_type for n in out.graph.node] == ["Gemm"]
    assert [o.name for o in out.graph.output] == ["y"]
    model, result = run(proto, PassContext(target="tensorrt"), to_gemm="false")
    assert result.stats["matmuls-to-gemm"] == 0
    model, result = run(proto, PassContext(target="cuda"))
    assert result.stats["matmuls-to-gemm"] == 0


# ---------------------------------------------------------------- report


def test_decisions_report_tensorrt_verdict_and_bytes():
    text = f"""{HEADER}
    g (float[N,64] x, float[64,64] w, float[64,8] v) => (float[N,8] y) {{
        h = MatMul (x, w)
        y = MatMul (h, v)
    }}"""
    proto = build(text, w=weights(18, 64, 64), v=weights(19, 64, 8))
    _, result = run(proto, importance="magnitude", reconstruct=False)
    by_weight = {d["weight"]: d for d in result.decisions if "layer" in d}
    assert by_weight["w"]["tensorrt-sparse-kernels"] == "likely"
    assert by_weight["v"]["tensorrt-sparse-kernels"] == "unlikely"
    assert by_weight["w"]["sparsity"] == 0.5 and by_weight["w"]["pattern"] == "2:4"
    assert by_weight["w"]["bytes-on-disk"] == 64 * 64 * 4
    summary = result.decisions[-1]
    assert summary["matmul-gemm-weight-coverage"] == 1.0
    _, result = run(proto, pattern="4:8", importance="magnitude", reconstruct=False)
    assert all(
        d["tensorrt-sparse-kernels"] == "ineligible" for d in result.decisions if "layer" in d
    )


def test_pipeline_text_round_trips():
    text = "sparsify{pattern=unstructured ratio=0.6 importance=magnitude ops=matmul+gemm}"
    pipeline = Pipeline.parse(text)
    assert Pipeline.parse(str(pipeline)) == pipeline


# ---------------------------------------------------------------- solver


def test_sparsegpt_solver_handles_dead_columns_and_keeps_pattern():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 16)) @ rng.standard_normal((16, 16))
    x[:, 3] = 0.0  # a dead input column
    w = rng.standard_normal((8, 16))
    h = x.T @ x
    pattern = parse_pattern("2:4", 0.0)
    result = sparsegpt(w, h, pattern)
    assert result.dead_columns == 1
    assert follows_pattern(result.matrix, pattern)
    masked = mask_weights(w, pattern)
    assert relative_error(w, result.matrix, h) < relative_error(w, masked, h)

"""quantize-dynamic-int8: the fused dynamic int8 MatMul, its error bound, the cost model, skips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper
from passes_util import op_types, ort_outputs, random_feeds, to_proto

from nnopt_graph.pipeline.base import PassContext
from nnopt_graph.pipeline.grammar import PassSpec
from nnopt_graph.runtime.data import Dataset
from nnopt_graph.runtime.ort_graph import ort_optimized_graph

RNG = np.random.default_rng(0)


def _model(nodes, inputs, outputs, inits, opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _w(name, *shape, dtype=np.float32):
    return numpy_helper.from_array((RNG.standard_normal(shape) * 0.1).astype(dtype), name)


def encoder_block(k=256, n=256, opset=17):
    """Q/K/V-like: three MatMuls of one input (wide N: int8 pays), then a sum."""
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["x", "wk"], ["k"], name="k_proj"),
        helper.make_node("MatMul", ["x", "wv"], ["v"], name="v_proj"),
        helper.make_node("Sum", ["q", "k", "v"], ["y"], name="sum"),
    ]
    inits = [_w("wq", k, n), _w("wk", k, n), _w("wv", k, n)]
    return _model(nodes, [_vi("x", ["N", 16, k])], [_vi("y", ["N", 16, n])], inits, opset)


def _data(proto, samples=2):
    feeds = [random_feeds(proto, i, N=1) for i in range(samples)]
    arrays = {k: np.stack([f[k] for f in feeds]) for k in feeds[0]}
    return Dataset(arrays, "test", frozenset(arrays))


def _run(proto, target="cpu", **options):
    model = ir.serde.deserialize_model(proto)
    context = PassContext(target=target, calibration=_data(proto))
    pass_ = PassSpec.create("quantize-dynamic-int8", **options).instantiate()
    return model, pass_.run(model, context), pass_, context


def test_matmuls_become_fused_dynamic_int8_with_bounded_error(tmp_path: Path) -> None:
    proto = encoder_block()
    model, result, _, _ = _run(proto)
    assert result.modified and result.stats["nodes-quantized"] == 3
    out = to_proto(model)
    onnx.checker.check_model(out, full_check=True)
    types = op_types(out)
    assert types.count("DynamicQuantizeLinear") == 1  # one per shared input
    assert types.count("MatMulInteger") == 3 and "MatMul" not in types
    names = {n.name for n in out.graph.node}
    assert {"q_proj", "k_proj", "v_proj"} <= names  # the MatMuls' names live on
    assert [o.name for o in out.graph.output] == ["y"]
    for seed in range(3):
        feed = random_feeds(proto, 100 + seed, N=2)
        (ref,), (got,) = ort_outputs(proto, feed), ort_outputs(out, feed)
        rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
        assert 0 < rel < 0.02, rel  # int8 error: present, bounded
    onnx.save(out, tmp_path / "q.onnx")
    fused = ort_optimized_graph(tmp_path / "q.onnx").fused
    assert any(op.endswith(("DynamicQuantizeMatMul", "MatMulIntegerToFloat")) for op in fused)


def test_second_run_changes_nothing() -> None:
    model, _, pass_, context = _run(encoder_block())
    again = pass_.run(model, context)
    assert not again.modified and again.stats["nodes-quantized"] == 0


def test_narrow_matmuls_are_modelled_slower_and_kept_float() -> None:
    # N = 16: quantizing each input element at run time costs more than int8 saves.
    model, result, _, _ = _run(encoder_block(k=256, n=16))
    assert not result.modified and result.stats["skipped-not-faster"] == 1
    assert "MatMul" in op_types(to_proto(model))
    assert result.decisions[0]["modelled"]["ratio"] >= 0.9
    assert any("kept float" in note for note in result.notes)


def test_speed_check_off_quantizes_even_narrow_matmuls() -> None:
    _, result, _, _ = _run(encoder_block(k=256, n=16), speed_check=False)
    assert result.stats["nodes-quantized"] == 3


def test_activation_by_activation_and_3d_weight_are_left_alone() -> None:
    nodes = [
        helper.make_node("MatMul", ["x", "x2"], ["a"], name="act_act"),
        helper.make_node("MatMul", ["a", "w3"], ["y"], name="batched"),
    ]
    proto = _model(
        nodes,
        [_vi("x", [2, 8, 8]), _vi("x2", [2, 8, 8])],
        [_vi("y", [2, 8, 8])],
        [_w("w3", 2, 8, 8)],
    )
    model, result, _, _ = _run(proto, speed_check=False)
    assert not result.modified
    assert result.stats["skipped-weight-not-constant"] == 1
    assert result.stats["skipped-unsupported-weight-rank"] == 1
    assert op_types(to_proto(model)) == ["MatMul", "MatMul"]


def test_double_weight_excluded_node_and_other_targets_are_left_alone() -> None:
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    double = _model(
        nodes,
        [_vi("x", [2, 64], TensorProto.DOUBLE)],
        [_vi("y", [2, 64], TensorProto.DOUBLE)],
        [_w("w", 64, 64, dtype=np.float64)],
    )
    _, result, _, _ = _run(double, speed_check=False)
    assert not result.modified and result.stats["skipped-non-float32-weight"] == 1
    _, result, _, _ = _run(encoder_block(), exclude="q_proj,k_proj,v_proj")
    assert not result.modified and result.stats["skipped-excluded"] == 3
    _, result, _, _ = _run(encoder_block(), target="cuda")
    assert not result.modified and result.stats["skipped-target-not-cpu"] == 3


def test_old_opset_is_skipped_with_a_stat() -> None:
    _, result, _, _ = _run(encoder_block(opset=10), speed_check=False)
    assert not result.modified and result.stats["skipped-opset-below-11"] == 3


def test_matmul_in_subgraph_is_skipped_with_a_stat() -> None:
    body = helper.make_graph(
        [helper.make_node("MatMul", ["x", "wb"], ["t"], name="inner")],
        "then",
        [],
        [_vi("t", [2, 64])],
        initializer=[_w("wb", 64, 64)],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["e"], name="pass")], "else", [], [_vi("e", [2, 64])]
    )
    nodes = [
        helper.make_node("If", ["c"], ["y"], name="branch", then_branch=body, else_branch=other)
    ]
    proto = _model(
        nodes, [_vi("x", [2, 64]), _vi("c", [], TensorProto.BOOL)], [_vi("y", [2, 64])], []
    )
    model, result, _, _ = _run(proto, speed_check=False)
    assert not result.modified and result.stats["skipped-nodes-in-subgraphs"] == 1
    types = op_types(to_proto(model))
    assert "MatMul" in types and "MatMulInteger" not in types


def test_shapes_inference_cannot_know_are_read_from_a_calibration_feed() -> None:
    # The Reshape's target shape is a graph input: no static shape reaches the MatMul,
    # so the cost model reads it from one captured feed (as on exported transformers).
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["r"], name="reshape"),
        helper.make_node("MatMul", ["r", "w"], ["y"], name="proj"),
    ]
    proto = _model(
        nodes,
        [_vi("x", ["N", 4096]), _vi("shape", [3], TensorProto.INT64)],
        [_vi("y", ["A", "B", 256])],
        [_w("w", 256, 256)],
    )
    arrays = {
        "x": RNG.standard_normal((2, 1, 4096)).astype(np.float32),
        "shape": np.array([[1, 16, 256]] * 2, np.int64),
    }
    model = ir.serde.deserialize_model(proto)
    context = PassContext(target="cpu", calibration=Dataset(arrays, "test", frozenset(arrays)))
    result = PassSpec.create("quantize-dynamic-int8").instantiate().run(model, context)
    assert result.stats["nodes-quantized"] == 1
    modelled = result.decisions[0]["modelled"]
    assert modelled["matmuls"] == 1 and modelled["ratio"] < 0.9

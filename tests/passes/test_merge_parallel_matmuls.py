"""merge-parallel-matmuls: MatMuls (+ bias Add) reading one input as one MatMul and a Split."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from passes_util import check_idempotent, in_an_if, op_types, ort_outputs, run_pass, to_proto

from nnopt_graph.check.equality import LOSSLESS, array_problems
from nnopt_graph.pipeline.presets import PRESETS

D, S = 8, 5
RNG = np.random.default_rng(7)


def _array(shape, dtype=np.float32):
    return (RNG.standard_normal(shape) * 0.5).astype(dtype)


def projections(
    widths=(D, D, D),
    *,
    bias=True,
    bias_shapes=None,
    opset=17,
    outputs=False,
    shared_weight=False,
    extra_use=False,
):
    """x -> one MatMul (+ bias Add) per width -> their sum of squares per projection -> y.

    ``outputs``: every projection is also a graph output. ``shared_weight``: the first
    weight is read by a second MatMul on another input. ``extra_use``: the first MatMul's
    raw output is read by a second node besides its bias Add.
    """
    dtype, np_dtype = TensorProto.FLOAT, np.float32
    inits, nodes, heads = [], [], []
    for i, width in enumerate(widths):
        inits.append(numpy_helper.from_array(_array([D, width], np_dtype), f"w{i}"))
        nodes.append(helper.make_node("MatMul", ["x", f"w{i}"], [f"m{i}"], name=f"mm{i}"))
        head = f"m{i}"
        if bias:
            shape = bias_shapes[i] if bias_shapes else [width]
            inits.append(numpy_helper.from_array(_array(shape, np_dtype), f"b{i}"))
            nodes.append(helper.make_node("Add", [f"m{i}", f"b{i}"], [f"p{i}"], name=f"add{i}"))
            head = f"p{i}"
        heads.append(head)
    reduced = []
    for i, head in enumerate(heads):
        nodes.append(helper.make_node("Mul", [head, head], [f"sq{i}"], name=f"sq{i}"))
        if opset >= 13:
            reduce = helper.make_node("ReduceSum", [f"sq{i}", "axes"], [f"r{i}"], name=f"r{i}")
        else:  # axes an attribute before opset 13
            reduce = helper.make_node("ReduceSum", [f"sq{i}"], [f"r{i}"], name=f"r{i}", axes=[-1])
        nodes.append(reduce)
        reduced.append(f"r{i}")
    inits.append(numpy_helper.from_array(np.array([-1], np.int64), "axes"))
    nodes.append(helper.make_node("Sum", reduced, ["y"], name="sum"))
    graph_outputs = [helper.make_tensor_value_info("y", dtype, [S, 1])]
    if shared_weight:
        nodes.append(helper.make_node("MatMul", ["x2", "w0"], ["y2"], name="other"))
        graph_outputs.append(helper.make_tensor_value_info("y2", dtype, [S, widths[0]]))
    if extra_use:
        nodes.append(helper.make_node("Relu", ["m0"], ["y3"], name="relu"))
        graph_outputs.append(helper.make_tensor_value_info("y3", dtype, [S, widths[0]]))
    if outputs:
        graph_outputs += [
            helper.make_tensor_value_info(h, dtype, [S, w])
            for h, w in zip(heads, widths, strict=True)
        ]
    inputs = [helper.make_tensor_value_info("x", dtype, [S, D])]
    if shared_weight:
        inputs.append(helper.make_tensor_value_info("x2", dtype, [S, D]))
    graph = helper.make_graph(nodes, "g", inputs, graph_outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def _feeds(proto, seed, **extra):
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in proto.graph.input:
        if value.name in extra:
            continue
        dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        feeds[value.name] = rng.standard_normal([S, D]).astype(dtype)
    return {**feeds, **extra}


def _assert_equal(before, after, samples=4, **extra):
    """Per sample, every output bit-identical and within the strict (lossless) check."""
    for seed in range(samples):
        feeds = _feeds(before, seed, **extra)
        for ref, out in zip(ort_outputs(before, feeds), ort_outputs(after, feeds), strict=True):
            assert array_problems("y", ref, out, LOSSLESS) == []
            np.testing.assert_array_equal(out, ref)


def test_three_projections_become_one_matmul_add_and_split():
    proto = projections()
    model, result = run_pass(proto, "merge-parallel-matmuls")
    assert result.stats == {"matmuls-merged": 3, "groups-merged": 1}
    assert op_types(model).count("MatMul") == 1 and op_types(model).count("Add") == 1
    assert op_types(model).count("Split") == 1
    [decision] = result.decisions
    assert decision["merged"] == ["mm0", "mm1", "mm2"] and decision["widths"] == [D, D, D]
    after = to_proto(model)
    weights = {i.name: numpy_helper.to_array(i) for i in after.graph.initializer}
    assert not {"w0", "w1", "w2", "b0", "b1", "b2"} & set(weights)  # the old ones are gone
    merged = next(n for n in after.graph.node if n.op_type == "MatMul")
    assert weights[merged.input[1]].shape == (D, 3 * D)
    split = next(n for n in after.graph.node if n.op_type == "Split")
    assert list(split.output) == ["p0", "p1", "p2"]  # the consumers read the same names
    _assert_equal(proto, after)


def test_unequal_widths_and_no_bias():
    proto = projections(widths=(3, 8, 5), bias=False)
    model, result = run_pass(proto, "merge-parallel-matmuls")
    assert result.stats["matmuls-merged"] == 3
    assert "Add" not in op_types(model)
    after = to_proto(model)
    split = next(n for n in after.graph.node if n.op_type == "Split")
    sizes = next(i for i in after.graph.initializer if i.name == split.input[1])
    assert numpy_helper.to_array(sizes).tolist() == [3, 8, 5]
    _assert_equal(proto, after)


def test_projections_that_are_graph_outputs_keep_their_names():
    proto = projections(outputs=True)
    model, result = run_pass(proto, "merge-parallel-matmuls")
    assert result.stats["matmuls-merged"] == 3
    after = to_proto(model)
    assert [o.name for o in after.graph.output] == ["y", "p0", "p1", "p2"]
    _assert_equal(proto, after)


def test_broadcast_biases_of_one_rank_merge():
    proto = projections(bias_shapes=[[1, D], [1, D], [1, D]])
    model, result = run_pass(proto, "merge-parallel-matmuls")
    assert result.stats["matmuls-merged"] == 3
    _assert_equal(proto, to_proto(model))


def test_inside_an_if_branch():
    inner = projections(widths=(D, D))
    # in_an_if needs one output of x's type and shape: project back to D wide.
    proto = in_an_if(_back_to_x(inner))
    model, result = run_pass(proto, "merge-parallel-matmuls")
    assert result.stats == {"matmuls-merged": 2, "groups-merged": 1}
    after = to_proto(model)
    branch = next(a.g for a in after.graph.node[0].attribute if a.name == "then_branch")
    assert [n.op_type for n in branch.node].count("Split") == 1
    _assert_equal(proto, after, flag=np.array(True))
    feeds = _feeds(proto, 0, flag=np.array(False))
    np.testing.assert_array_equal(ort_outputs(after, feeds)[0], feeds["x"])


def _back_to_x(proto):
    """The model with y = x * (its sum of squares), shaped as x, for in_an_if."""
    graph = proto.graph
    total = next(n for n in graph.node if n.op_type == "Sum")
    total.output[0] = "total"
    graph.node.append(helper.make_node("Mul", ["x", "total"], ["y"], name="scale"))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, [S, D]))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def test_second_run_changes_nothing():
    model, _ = run_pass(projections(), "merge-parallel-matmuls")
    check_idempotent(model, "merge-parallel-matmuls")


def test_in_the_cpu_preset_only():
    assert "merge-parallel-matmuls" in PRESETS["target-cpu"].split(",")
    for name in ("default", "target-tensorrt", "target-cuda"):
        assert "merge-parallel-matmuls" not in PRESETS[name]


def test_a_lone_matmul_is_left_alone():
    proto = projections(widths=(D,))
    model, result = run_pass(proto, "merge-parallel-matmuls")
    assert not result.modified and op_types(model) == op_types(proto)


def test_a_weight_another_node_reads_is_left_alone():
    proto = projections(widths=(D, D), shared_weight=True)
    model, result = run_pass(proto, "merge-parallel-matmuls")
    assert not result.modified and op_types(model) == op_types(proto)


def test_a_matmul_output_read_twice_does_not_merge_with_biased_ones():
    # mm0's raw output feeds a Relu as well: it has no bias of its own to merge, and the
    # two biased projections left merge without it.
    proto = projections(extra_use=True)
    model, result = run_pass(proto, "merge-parallel-matmuls")
    assert result.stats["matmuls-merged"] == 2
    assert result.decisions[0]["merged"] == ["mm1", "mm2"]
    assert op_types(model).count("MatMul") == 2
    _assert_equal(proto, to_proto(model))


def test_biases_of_other_ranks_do_not_merge():
    proto = projections(widths=(D, D), bias_shapes=[[D], [1, D]])
    model, result = run_pass(proto, "merge-parallel-matmuls")
    assert not result.modified and op_types(model) == op_types(proto)


def test_computed_weights_are_left_alone():
    proto = projections(widths=(D, D), bias=False)
    # Both weights become computed values (Identity of an input), not constants.
    graph = proto.graph
    for i in range(2):
        graph.input.append(helper.make_tensor_value_info(f"w{i}_in", TensorProto.FLOAT, [D, D]))
        graph.node.insert(0, helper.make_node("Identity", [f"w{i}_in"], [f"w{i}"], name=f"id{i}"))
    kept = [init for init in graph.initializer if not init.name.startswith("w")]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.checker.check_model(proto, full_check=True)
    model, result = run_pass(proto, "merge-parallel-matmuls")
    assert not result.modified and op_types(model) == op_types(proto)


def test_integer_matmuls_are_left_alone():
    weights = [numpy_helper.from_array(np.ones([D, D], np.int32), f"w{i}") for i in range(2)]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"], name=f"mm{i}") for i in range(2)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.INT32, [S, D])],
        [helper.make_tensor_value_info(f"y{i}", TensorProto.INT32, [S, D]) for i in range(2)],
        initializer=weights,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(proto, full_check=True)
    model, result = run_pass(proto, "merge-parallel-matmuls")
    assert not result.modified and op_types(model) == op_types(proto)


def test_opset_11_splits_by_attribute():
    proto = projections(opset=11)
    model, result = run_pass(proto, "merge-parallel-matmuls")
    assert result.stats["matmuls-merged"] == 3
    after = to_proto(model)
    split = next(n for n in after.graph.node if n.op_type == "Split")
    assert len(split.input) == 1
    assert [list(a.ints) for a in split.attribute if a.name == "split"] == [[D, D, D]]
    _assert_equal(proto, after)


def test_opset_before_11_is_left_alone():
    # Split takes no negative axis there.
    proto = projections(opset=10)
    model, result = run_pass(proto, "merge-parallel-matmuls")
    assert result.stats["skipped-opset-before-11"] == 1
    assert not result.modified and op_types(model) == op_types(proto)


def test_target_cpu_on_the_zoo_bert_merges_before_dynamic_int8(tmp_path):
    from models import calib, zoo
    from nnopt_graph import optimize

    src = tmp_path / "bert.onnx"
    onnx.save(zoo.ZOO["bert-encoder"](), src)
    data = calib.write_calib_npz("bert-encoder", tmp_path / "calib.npz", samples=24)
    result = optimize(str(src), tmp_path / "out.onnx", target="cpu", calib=str(data))
    outcomes = {r.name: r.outcome for r in result.records}
    assert outcomes["merge-parallel-matmuls"] == "changed"
    assert outcomes["quantize-dynamic-int8"] == "applied"
    out = onnx.load(tmp_path / "out.onnx")
    # One Split per layer feeds the three projections; the merged projection is int8.
    splits = [n for n in out.graph.node if n.op_type == "Split"]
    assert len(splits) == 2
    producers = {o: n for n in out.graph.node for o in n.output}
    for split in splits:
        chain, value = [], split.input[0]
        while value in producers and len(chain) < 6:  # back through the rescale and bias
            chain.append(producers[value].op_type)
            value = next((i for i in producers[value].input if i in producers), "")
        assert "MatMulInteger" in chain and "MatMul" not in chain, chain


def test_a_head_pruned_zoo_bert_merges_and_keeps_its_outputs_exactly(tmp_path):
    """After prune-channels removes a head per layer (Q/K/V 48 wide), the merge
    still takes every layer's three projections, and the pruned outputs are unchanged."""
    from models import calib, zoo
    from nnopt_graph import optimize

    src = tmp_path / "bert.onnx"
    onnx.save(zoo.ZOO["bert-encoder"](), src)
    data = calib.write_calib_npz("bert-encoder", tmp_path / "calib.npz", samples=64)
    prune = (
        'prune-channels{group-ratios="*.attn.*=0.25,*.ffn.*=0.25" max-layer-ratio=1 '
        "protect-first=false protect-last=false importance=obs}"
    )
    pruned, merged = tmp_path / "pruned.onnx", tmp_path / "merged.onnx"
    optimize(str(src), pruned, prune, calib=str(data), guard="cosine>=-1", check=False)
    result = optimize(str(pruned), merged, "merge-parallel-matmuls")
    assert result.records[0].stats["groups-merged"] == 2
    assert result.records[0].stats["matmuls-merged"] == 6
    inits = {t.name: list(t.dims) for t in onnx.load(pruned).graph.initializer}
    assert inits["encoder.layer.0.attn.query.weight"] == [64, 48]  # a head is gone
    splits = [n for n in onnx.load(merged).graph.node if n.op_type == "Split"]
    assert len(splits) == 2
    samples = np.load(data)
    before, after = onnx.load(pruned), onnx.load(merged)
    for k in range(3):
        feed = {name: samples[name][k] for name in samples.files}
        for a, b in zip(ort_outputs(before, feed), ort_outputs(after, feed), strict=True):
            np.testing.assert_array_equal(a, b)

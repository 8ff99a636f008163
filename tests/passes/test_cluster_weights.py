"""Unit tests of cluster-weights: both encodings under ORT, value counts, negative cases."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper
from passes_util import check_idempotent, ort_run, random_feeds, run_pass, to_proto

from nnopt_graph import optimize
from nnopt_graph.errors import BadInputError
from nnopt_graph.passes.sharing import cluster_weights as cw
from nnopt_graph.pipeline.base import PassContext
from nnopt_graph.pipeline.grammar import PassSpec, Pipeline

SMALL = 64  # min-elements for the small test weights


def _model(nodes, inputs, outputs, inits=(), opset=17, ir_version=8, functions=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    opsets = [helper.make_opsetid("", opset)]
    if functions:
        opsets.append(helper.make_opsetid("local", 1))
    proto = helper.make_model(
        graph, opset_imports=opsets, ir_version=ir_version, functions=list(functions)
    )
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _f(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _init(array, name):
    return numpy_helper.from_array(np.asarray(array), name)


def _weights(shape, seed=0, dtype=np.float32):
    """Gaussian weights with per-row scales spread over two decades (like folded BN)."""
    rng = np.random.default_rng(seed)
    rows = np.exp(rng.uniform(-2.3, 0.0, size=(shape[0],) + (1,) * (len(shape) - 1)))
    return (rng.standard_normal(shape) * rows).astype(dtype)


def _conv_model(weight, opset=17, extra_nodes=(), extra_outputs=()):
    m, c = weight.shape[:2]
    return _model(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]), *extra_nodes],
        [_f("x", [1, c, 6, 6])],
        [_f("y", [1, m, 6, 6]), *extra_outputs],
        [_init(weight, "w")],
        opset=opset,
    )


def _matmul_model(weight, opset=17, dtype=TensorProto.FLOAT):
    k, n = weight.shape
    return _model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [_f("x", [3, k], dtype)],
        [_f("y", [3, n], dtype)],
        [_init(weight, "w")],
        opset=opset,
    )


def _decoded(after: onnx.ModelProto, name: str, shape, dtype=TensorProto.FLOAT, **feeds):
    """The weight as ONNX Runtime computes it from its encoding (made a graph output)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(after)
    probe.graph.output.append(_f(name, list(shape), dtype))
    all_feeds = random_feeds(after)
    all_feeds.update(feeds)
    return ort_run(probe, all_feeds)[-1]


def _distinct_per_group(array: np.ndarray, axis: int | None) -> int:
    """The largest number of distinct values in one group (None: the whole tensor)."""
    if axis is None:
        return len(np.unique(array))
    moved = np.moveaxis(array, axis, 0).reshape(array.shape[axis], -1)
    return max(len(np.unique(row)) for row in moved)


def _sqnr(original: np.ndarray, decoded: np.ndarray) -> float:
    a = original.astype(np.float64)
    return float(10 * np.log10(np.sum(a * a) / np.sum((a - decoded.astype(np.float64)) ** 2)))


def _cosine(before: onnx.ModelProto, after: onnx.ModelProto, seed: int = 3, **fixed) -> float:
    feeds = random_feeds(before, seed)
    feeds.update(fixed)
    a = np.concatenate([o.ravel() for o in ort_run(before, feeds)]).astype(np.float64)
    b = np.concatenate([o.ravel() for o in ort_run(after, feeds)]).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _ops(model) -> list[str]:
    if isinstance(model, onnx.ModelProto):
        model = ir.serde.deserialize_model(model)
    return [n.op_type for n in ir.traversal.RecursiveGraphIterator(model.graph)]


def _init_dtypes(model: ir.Model) -> dict[str, ir.DataType]:
    return {name: v.const_value.dtype for name, v in model.graph.initializers.items()}


# ---------------------------------------------------------------- dequantize encoding


def test_uniform_int8_per_channel_conv():
    w = _weights((16, 8, 3, 3))
    proto = _conv_model(w)
    model, result = run_pass(proto, "cluster-weights", method="uniform", min_elements=SMALL)
    assert result.stats["weights-clustered"] == 1
    assert result.stats["bytes-saved-disk"] > 0.7 * w.nbytes
    assert result.stats["bytes-saved-memory"] == result.stats["bytes-saved-disk"]
    (decision,) = result.decisions
    assert decision["encoding"] == "dequantize" and decision["storage"] == "int8"
    assert decision["granularity"] == "channel (axis 0)"
    assert decision["bytes_memory_after"] == decision["bytes_disk_after"] < w.nbytes
    assert "DequantizeLinear" in _ops(model)
    assert ir.DataType.INT8 in _init_dtypes(model).values()
    after = to_proto(model)
    decoded = _decoded(after, "w", w.shape)
    assert _distinct_per_group(decoded, 0) <= 256
    assert _sqnr(w, decoded) > 40
    assert abs(_sqnr(w, decoded) - decision["sqnr_db"]) < 0.01
    assert _cosine(proto, after) > 0.9999
    check_idempotent(model, "cluster-weights", method="uniform", min_elements=SMALL)


def test_uniform_int4_per_channel_at_opset_21():
    w = _weights((16, 8, 3, 3), seed=1)
    proto = _conv_model(w, opset=21)
    model, result = run_pass(proto, "cluster-weights", bits=4, method="uniform", min_elements=SMALL)
    assert result.decisions[0]["storage"] == "int4"
    assert ir.DataType.INT4 in _init_dtypes(model).values()
    assert result.stats["opset-raised"] == 0
    after = to_proto(model)
    decoded = _decoded(after, "w", w.shape)
    assert _distinct_per_group(decoded, 0) <= 16
    assert _sqnr(w, decoded) > 17
    assert _cosine(proto, after) > 0.98
    check_idempotent(model, "cluster-weights", bits=4, method="uniform", min_elements=SMALL)


def test_int4_raises_a_safe_opset_to_21():
    w = _weights((16, 8, 3, 3), seed=2)
    proto = _conv_model(
        w,
        opset=17,
        extra_nodes=[helper.make_node("Relu", ["y"], ["r"])],
        extra_outputs=[_f("r", [1, 16, 6, 6])],
    )
    model, result = run_pass(proto, "cluster-weights", bits=3, method="uniform", min_elements=SMALL)
    assert result.stats["opset-raised"] == 1
    assert result.decisions[0] == {"opset": "raised 17 -> 21"}
    assert model.opset_imports[""] == 21 and model.ir_version >= 10
    after = to_proto(model)
    assert _distinct_per_group(_decoded(after, "w", w.shape), 0) <= 8
    assert _cosine(proto, after) > 0.9


def test_int4_stored_as_int8_when_opset_cannot_rise():
    # Softmax changes meaning at opset 13: the opset stays 12, so int4 becomes int8
    # storage and per-channel scales are applied by Sub/Mul after a per-tensor dequantize.
    w = _weights((16, 8, 3, 3), seed=3)
    proto = _conv_model(
        w,
        opset=12,
        extra_nodes=[helper.make_node("Softmax", ["y"], ["s"], axis=1)],
        extra_outputs=[_f("s", [1, 16, 6, 6])],
    )
    model, result = run_pass(proto, "cluster-weights", bits=4, method="uniform", min_elements=SMALL)
    assert model.opset_imports[""] == 12
    assert result.stats["int4-stored-as-int8"] == 1
    assert result.stats["channel-emulated"] == 1
    opset, weight = result.decisions
    assert opset["opset"] == "kept 12" and "Softmax" in opset["reason"]
    assert weight["storage"] == "int8" and "int4 stored as int8" in weight["notes"]
    assert ir.DataType.INT8 in _init_dtypes(model).values()
    after = to_proto(model)
    decoded = _decoded(after, "w", w.shape)
    assert _distinct_per_group(decoded, 0) <= 16
    assert _sqnr(w, decoded) > 17
    check_idempotent(model, "cluster-weights", bits=4, method="uniform", min_elements=SMALL)


def test_emulated_per_channel_with_many_channels_is_idempotent():
    # 4096 output channels at opset 12: zero points and scales (Sub, Mul) are
    # themselves weights of min-elements size, and must be seen as part of the encoding.
    w = _weights((4096, 8), seed=15)
    proto = _model(
        [
            helper.make_node("Gemm", ["x", "w"], ["g"], transB=1),
            helper.make_node("Softmax", ["g"], ["y"], axis=1),
        ],
        [_f("x", [3, 8])],
        [_f("y", [3, 4096])],
        [_init(w, "w")],
        opset=12,
    )
    model, result = run_pass(proto, "cluster-weights", method="uniform", min_elements=4096)
    assert result.stats["channel-emulated"] == 1
    assert _cosine(proto, to_proto(model)) > 0.999
    second = PassSpec.create("cluster-weights", method="uniform", min_elements=4096)
    again = second.instantiate().run(model, PassContext())
    assert not again.modified
    assert again.stats["skipped-already-clustered"] == 3  # integers, zero points, scales


def test_block_granularity_with_a_partial_last_block():
    # Gemm with transB: W is [N, K]; blocks of 32 run along K = 80 (32 + 32 + 16).
    w = _weights((24, 80), seed=4)
    proto = _model(
        [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)],
        [_f("x", [3, 80])],
        [_f("y", [3, 24])],
        [_init(w, "w")],
        opset=21,
    )
    model, result = run_pass(
        proto,
        "cluster-weights",
        bits=4,
        method="uniform",
        granularity="block",
        block_size=32,
        min_elements=SMALL,
    )
    assert result.decisions[0]["granularity"] == "block (axis 1, size 32)"
    (node,) = [n for n in model.graph if n.op_type == "DequantizeLinear"]
    assert node.attributes["block_size"].as_int() == 32
    after = to_proto(model)
    decoded = _decoded(after, "w", w.shape)
    for start in range(0, 80, 32):
        block = decoded[:, start : start + 32]
        assert max(len(np.unique(row)) for row in block) <= 16
    assert _sqnr(w, decoded) > 19
    assert _cosine(proto, after) > 0.98


def test_float16_weight_dequantized_then_cast():
    w = _weights((64, 48), seed=5, dtype=np.float16)
    proto = _matmul_model(w, dtype=TensorProto.FLOAT16)
    model, result = run_pass(proto, "cluster-weights", method="uniform", min_elements=SMALL)
    assert result.stats["weights-clustered"] == 1
    assert "Cast" in _ops(model)
    after = to_proto(model)
    decoded = _decoded(after, "w", w.shape, TensorProto.FLOAT16)
    assert decoded.dtype == np.float16
    assert _distinct_per_group(decoded, 1) <= 256  # MatMul B: channels on the last axis
    assert _sqnr(w, decoded) > 35


# ---------------------------------------------------------------- codebook encoding


def test_kmeans_codebook_per_tensor_packed_4bit():
    w = _weights((64, 96), seed=6)
    proto = _matmul_model(w)
    model, result = run_pass(
        proto, "cluster-weights", bits=4, granularity="tensor", min_elements=SMALL
    )
    (decision,) = result.decisions
    assert decision["encoding"] == "codebook"
    assert decision["storage"] == "packed 4-bit indices"
    assert decision["bytes_memory_after"] == w.nbytes  # expanded when the session loads
    assert result.stats["bytes-saved-memory"] == 0
    assert result.stats["bytes-saved-disk"] > 0.8 * w.nbytes
    assert "Gather" in _ops(model) and "DequantizeLinear" not in _ops(model)
    packed = [v for v in model.graph.initializers.values() if v.const_value.dtype.name == "UINT8"]
    assert packed[0].const_value.size == w.size // 2
    after = to_proto(model)
    decoded = _decoded(after, "w", w.shape)
    assert _distinct_per_group(decoded, None) <= 16
    # k-means beats the uniform grid of the same size on Gaussian-like values.
    scale, zero, levels = cw.uniform_grid(w.reshape(1, -1), 4, search=False)
    uniform = ((levels - zero[:, None]) * scale[:, None]).reshape(w.shape)
    assert _sqnr(w, decoded) > _sqnr(w, uniform)
    assert _cosine(proto, after) > 0.95
    check_idempotent(model, "cluster-weights", bits=4, granularity="tensor", min_elements=SMALL)


def test_kmeans_codebook_per_channel_conv():
    w = _weights((16, 8, 3, 3), seed=7)
    proto = _conv_model(w)
    model, result = run_pass(proto, "cluster-weights", bits=3, min_elements=SMALL)
    (decision,) = result.decisions
    assert decision["granularity"] == "channel (axis 0)"
    assert decision["storage"] == "packed 4-bit indices"
    assert decision["kmeans_iterations"] >= 1
    after = to_proto(model)
    decoded = _decoded(after, "w", w.shape)
    assert _distinct_per_group(decoded, 0) <= 8
    assert _sqnr(w, decoded) > 13
    assert _cosine(proto, after) > 0.95
    check_idempotent(model, "cluster-weights", bits=3, min_elements=SMALL)


def test_uniform_codebook_and_odd_element_count():
    # 1365 * 3 elements: the packed indices need a trailing Slice.
    w = _weights((3, 1365), seed=8).T.copy()
    proto = _matmul_model(w)
    model, result = run_pass(
        proto, "cluster-weights", bits=4, method="uniform", encoding="codebook", min_elements=SMALL
    )
    assert result.decisions[0]["encoding"] == "codebook"
    assert "Slice" in _ops(model)
    after = to_proto(model)
    decoded = _decoded(after, "w", w.shape)
    assert _distinct_per_group(decoded, 1) <= 16
    assert _sqnr(w, decoded) > 15


def test_embedding_gather_with_runtime_indices_is_clustered():
    table = _weights((50, 16), seed=9)
    proto = _model(
        [helper.make_node("Gather", ["table", "ids"], ["y"])],
        [_f("ids", [5], TensorProto.INT64)],
        [_f("y", [5, 16])],
        [_init(table, "table")],
    )
    model, result = run_pass(proto, "cluster-weights", bits=6, min_elements=SMALL)
    assert result.stats["weights-clustered"] == 1
    assert result.decisions[0]["granularity"] == "channel (axis 0)"  # one row per token
    after = to_proto(model)
    ids = np.array([0, 7, 49, 3, 7])
    decoded = _decoded(after, "table", table.shape, ids=ids)
    assert _distinct_per_group(decoded, 0) <= 64
    check_idempotent(model, "cluster-weights", bits=6, min_elements=SMALL)


# ---------------------------------------------------------------- subgraphs


def _if_model(weight_then, weight_else, constant=False):
    def branch(name, weight):
        out = f"{name}_out"
        wname = f"{name}_w"
        if constant:
            nodes = [
                helper.make_node("Constant", [], [wname], value=_init(weight, wname)),
                helper.make_node("MatMul", ["x", wname], [out]),
            ]
            inits = []
        else:
            nodes = [helper.make_node("MatMul", ["x", wname], [out])]
            inits = [_init(weight, wname)]
        return helper.make_graph(nodes, name, [], [_f(out, [3, weight.shape[1]])], inits)

    return _model(
        [
            helper.make_node(
                "If",
                ["c"],
                ["y"],
                then_branch=branch("then_g", weight_then),
                else_branch=branch("else_g", weight_else),
            )
        ],
        [_f("x", [3, weight_then.shape[0]]), _f("c", [], TensorProto.BOOL)],
        [_f("y", [3, weight_then.shape[1]])],
    )


@pytest.mark.parametrize("constant", [False, True], ids=["initializers", "constants"])
def test_weights_inside_if_branches_are_clustered_in_place(constant):
    proto = _if_model(_weights((32, 24), seed=10), _weights((32, 24), seed=11), constant)
    model, result = run_pass(proto, "cluster-weights", method="uniform", min_elements=SMALL)
    assert result.stats["weights-clustered"] == 2
    assert {d["graph"] for d in result.decisions} == {"If/then_branch", "If/else_branch"}
    assert "Constant" not in _ops(model)
    after = to_proto(model)
    for cond in (True, False):
        assert _cosine(proto, after, c=np.array(cond)) > 0.9999
    check_idempotent(model, "cluster-weights", method="uniform", min_elements=SMALL)


def test_main_graph_weight_read_inside_a_branch():
    w = _weights((32, 24), seed=12)
    then_g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["t"])], "then_g", [], [_f("t", [3, 24])]
    )
    else_g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["e"]), helper.make_node("Neg", ["e"], ["n"])],
        "else_g",
        [],
        [_f("n", [3, 24])],
    )
    proto = _model(
        [helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)],
        [_f("x", [3, 32]), _f("c", [], TensorProto.BOOL)],
        [_f("y", [3, 24])],
        [_init(w, "w")],
    )
    model, result = run_pass(proto, "cluster-weights", bits=5, min_elements=SMALL)
    assert result.stats["weights-clustered"] == 1
    assert result.decisions[0]["graph"] == "main"
    after = to_proto(model)
    for cond in (True, False):
        assert _cosine(proto, after, c=np.array(cond)) > 0.99


# ---------------------------------------------------------------- negative cases


def test_weights_below_min_elements_untouched():
    proto = _conv_model(_weights((4, 2, 3, 3)))  # 72 elements
    model, result = run_pass(proto, "cluster-weights")
    assert not result.modified
    assert result.stats["skipped-below-min-elements"] == 1
    assert _ops(model) == ["Conv"]


def test_integer_weights_untouched():
    table = np.arange(200, dtype=np.int64).reshape(100, 2)
    proto = _model(
        [helper.make_node("Gather", ["table", "ids"], ["y"])],
        [_f("ids", [5], TensorProto.INT64)],
        [_f("y", [5, 2], TensorProto.INT64)],
        [_init(table, "table")],
    )
    model, result = run_pass(proto, "cluster-weights", min_elements=SMALL)
    assert not result.modified
    assert result.stats["skipped-integer-weights"] == 1


def test_graph_input_initializer_untouched():
    w = _weights((32, 24))
    proto = _model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [_f("x", [3, 32]), _f("w", [32, 24])],
        [_f("y", [3, 24])],
        [_init(w, "w")],
    )
    model, result = run_pass(proto, "cluster-weights", min_elements=SMALL)
    assert not result.modified
    assert result.stats["skipped-graph-input-initializers"] == 1


def test_weight_that_is_a_graph_output_untouched():
    w = _weights((32, 24))
    proto = _model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [_f("x", [3, 32])],
        [_f("y", [3, 24]), _f("w", [32, 24])],
        [_init(w, "w")],
    )
    model, result = run_pass(proto, "cluster-weights", min_elements=SMALL)
    assert not result.modified
    assert result.stats["skipped-graph-output-weights"] == 1


def test_constants_in_functions_counted_and_left_alone():
    w = _weights((8, 16))
    function = helper.make_function(
        "local",
        "Project",
        ["a"],
        ["b"],
        [
            helper.make_node("Constant", [], ["k"], value=_init(w, "k")),
            helper.make_node("MatMul", ["a", "k"], ["b"]),
        ],
        [helper.make_opsetid("", 17)],
    )
    proto = _model(
        [helper.make_node("Project", ["x"], ["y"], domain="local")],
        [_f("x", [3, 8])],
        [_f("y", [3, 16])],
        functions=[function],
    )
    model, result = run_pass(proto, "cluster-weights", min_elements=SMALL)
    assert not result.modified
    assert result.stats["skipped-function-constants"] == 1
    assert [n.op_type for n in next(iter(model.functions.values()))] == ["Constant", "MatMul"]


def test_quantized_weights_recognized_as_already_clustered():
    q = np.random.default_rng(0).integers(-127, 128, (32, 24)).astype(np.int8)
    proto = _model(
        [
            helper.make_node("DequantizeLinear", ["q", "s"], ["w"]),
            helper.make_node("MatMul", ["x", "w"], ["y"]),
        ],
        [_f("x", [3, 32])],
        [_f("y", [3, 24])],
        [_init(q, "q"), _init(np.float32(0.01), "s")],
    )
    model, result = run_pass(proto, "cluster-weights", min_elements=SMALL)
    assert not result.modified
    assert result.stats["skipped-already-clustered"] == 1


def test_hand_made_codebook_recognized_as_already_clustered():
    codebook = _weights((128,)).reshape(128)
    indices = np.random.default_rng(0).integers(0, 128, (32, 24)).astype(np.uint8)
    proto = _model(
        [
            helper.make_node("Cast", ["idx"], ["idx32"], to=TensorProto.INT32),
            helper.make_node("Gather", ["codebook", "idx32"], ["w"]),
            helper.make_node("MatMul", ["x", "w"], ["y"]),
        ],
        [_f("x", [3, 32])],
        [_f("y", [3, 24])],
        [_init(codebook, "codebook"), _init(indices, "idx")],
    )
    model, result = run_pass(proto, "cluster-weights", min_elements=SMALL)
    assert not result.modified
    assert result.stats["skipped-already-clustered"] == 2  # the codebook and its indices


def test_vectors_stay_float():
    bias = _weights((64,)).reshape(64)
    proto = _model(
        [helper.make_node("Add", ["x", "b"], ["y"])],
        [_f("x", [3, 64])],
        [_f("y", [3, 64])],
        [_init(bias, "b")],
    )
    model, result = run_pass(proto, "cluster-weights", min_elements=SMALL)
    assert not result.modified and result.stats["skipped-vectors"] == 1


def test_gather_of_a_weight_with_constant_int64_indices_is_no_codebook():
    # Gather(table, constant rows) is an ordinary op on a weight, not this pass's format.
    table = _weights((200, 4))
    rows = np.arange(0, 200, 2, dtype=np.int64)
    proto = _model(
        [
            helper.make_node("Gather", ["table", "rows"], ["picked"]),
            helper.make_node("Mul", ["x", "picked"], ["y"]),
        ],
        [_f("x", [100, 4])],
        [_f("y", [100, 4])],
        [_init(table, "table"), _init(rows, "rows")],
    )
    model, result = run_pass(proto, "cluster-weights", method="uniform", min_elements=SMALL)
    assert result.stats["weights-clustered"] == 1
    assert result.stats["skipped-integer-weights"] == 1  # the int64 row numbers
    after = to_proto(model)
    assert _cosine(proto, after) > 0.999


def test_per_channel_codebook_with_many_channels_is_idempotent():
    # 4096 rows: the per-row scales and offsets are themselves weights of min-elements size.
    table = _weights((4096, 4), seed=14)
    proto = _model(
        [helper.make_node("Gather", ["table", "ids"], ["y"])],
        [_f("ids", [5], TensorProto.INT64)],
        [_f("y", [5, 4])],
        [_init(table, "table")],
    )
    model, result = run_pass(proto, "cluster-weights", bits=2, min_elements=4096)
    assert result.stats["weights-clustered"] == 1
    second = PassSpec.create("cluster-weights", bits=2, min_elements=4096).instantiate()
    again = second.run(model, PassContext())
    assert not again.modified
    assert again.stats["skipped-already-clustered"] == 3  # indices, scales, offsets


def test_encoding_that_saves_nothing_is_skipped_and_counts_no_fallback():
    # Two elements per channel at opset 12: int8 values plus a float zero point and scale
    # per channel outweigh the floats; the per-channel fallback is not counted either.
    w = _weights((4096, 2), seed=16)
    proto = _model(
        [
            helper.make_node("Gemm", ["x", "w"], ["g"], transB=1),
            helper.make_node("Softmax", ["g"], ["y"], axis=1),
        ],
        [_f("x", [3, 2])],
        [_f("y", [3, 4096])],
        [_init(w, "w")],
        opset=12,
    )
    model, result = run_pass(proto, "cluster-weights", method="uniform", min_elements=4096)
    assert not result.modified
    assert result.stats["skipped-no-saving"] == 1
    assert result.stats["channel-emulated"] == 0


def test_codebook_that_saves_nothing_is_skipped():
    # 8 x 8 weights per tensor: a 64-entry codebook plus indices outweighs the floats.
    w = _weights((8, 8))
    proto = _matmul_model(w)
    model, result = run_pass(proto, "cluster-weights", granularity="tensor", min_elements=SMALL)
    assert not result.modified
    assert result.stats["skipped-no-saving"] == 1
    assert _ops(model) == ["MatMul"]


def test_non_finite_weights_skipped():
    w = _weights((32, 24))
    w[3, 4] = np.inf
    model, result = run_pass(_matmul_model(w), "cluster-weights", min_elements=SMALL)
    assert not result.modified
    assert result.stats["skipped-non-finite-weights"] == 1


def test_opset_below_10_skipped():
    proto = _conv_model(_weights((16, 8, 3, 3)), opset=9)
    model, result = run_pass(proto, "cluster-weights", min_elements=SMALL)
    assert not result.modified
    assert result.stats["skipped-old-model"] == 1


# ---------------------------------------------------------------- options, back-off, guard


@pytest.mark.parametrize(
    "text",
    [
        "cluster-weights{method=kmeans encoding=dequantize}",
        "cluster-weights{granularity=block}",
        "cluster-weights{bits=9}",
        "cluster-weights{bits=0}",
        "cluster-weights{min-elements=0}",
        "cluster-weights{granularity=block method=uniform block-size=1}",
    ],
)
def test_bad_options_rejected_before_running(text):
    with pytest.raises(BadInputError, match="cluster-weights"):
        Pipeline.parse(text)  # the grammar checks ranges and Options.problem()
    # A pass built directly (bypassing the grammar) still refuses in requires().
    element = text[len("cluster-weights{") : -1]
    options = dict(kv.split("=") for kv in element.split())
    typed = {
        k.replace("-", "_"): int(v) if v.lstrip("-").isdigit() else v for k, v in options.items()
    }
    pass_ = cw.ClusterWeightsPass(**typed)
    with pytest.raises(BadInputError, match="cluster-weights"):
        pass_.requires(_ir(_conv_model(_weights((16, 8, 3, 3)))))


def test_unknown_choice_rejected_when_parsed():
    with pytest.raises(BadInputError):
        Pipeline.parse("cluster-weights{granularity=row}")


def test_bad_options_fail_the_job_as_bad_input():
    with pytest.raises(BadInputError):
        optimize(_conv_model(_weights((16, 8, 3, 3))), pipeline="cluster-weights{bits=12}")


def test_pipeline_text_round_trips():
    pipeline = Pipeline.parse("cluster-weights{bits=4 method=uniform granularity=block}")
    assert Pipeline.parse(str(pipeline)) == pipeline


def test_back_off_adds_a_bit_up_to_8():
    pass_ = PassSpec.create("cluster-weights", bits=6).instantiate()
    weaker = pass_.back_off()
    assert weaker is not None and weaker.options.bits == 7
    strongest = weaker.back_off()
    assert strongest is not None and strongest.options.bits == 8
    assert strongest.back_off() is None


def test_guard_backs_off_until_the_budget_holds():
    w = _weights((32, 16, 3, 3), seed=13)
    proto = _conv_model(w)
    result = optimize(
        proto,
        pipeline="cluster-weights{bits=1 method=uniform min-elements=64}",
        guard="cosine>=0.999",
    )
    (record,) = result.records
    assert record.guard_action == "backed off"
    assert 2 <= record.options["bits"] <= 8
    assert record.fidelity["worst"]["cosine"] >= 0.999


# ---------------------------------------------------------------- algorithms


def test_kmeans_is_exact_with_few_distinct_values():
    values = np.repeat(np.array([-1.5, -0.25, 0.0, 0.75, 3.0]), 40)[None, :]
    codebook, assignment, _ = cw.kmeans_1d(values, 8)
    # Exact once stored as float32 (the float64 centroids carry the normalisation's rounding).
    decoded = np.take_along_axis(codebook.astype(np.float32), assignment, 1)
    np.testing.assert_array_equal(decoded, values.astype(np.float32))


def test_kmeans_never_worse_than_its_linear_start_and_deterministic():
    rows = np.random.default_rng(0).standard_t(3, size=(3, 5000))
    codebook, assignment, iterations = cw.kmeans_1d(rows, 16)
    again = cw.kmeans_1d(rows, 16)
    np.testing.assert_array_equal(codebook, again[0])
    error = np.sum((rows - np.take_along_axis(codebook, assignment, 1)) ** 2, axis=1)
    start = np.linspace(rows.min(axis=1), rows.max(axis=1), 16).T
    nearest = np.abs(rows[:, :, None] - start[:, None, :]).argmin(axis=2)
    start_error = np.sum((rows - np.take_along_axis(start, nearest, 1)) ** 2, axis=1)
    assert np.all(error < start_error)
    assert iterations > 1


def test_weighted_kmeans_follows_the_weights():
    values = np.array([[0.0, 1.0, 2.0, 10.0]])
    heavy_tail = np.array([[1.0, 1.0, 1.0, 100.0]])
    codebook, assignment, _ = cw.kmeans_1d(values, 2, heavy_tail)
    assert codebook[0, 1] == pytest.approx(10.0)
    assert list(assignment[0]) == [0, 0, 0, 1]


def test_uniform_grid_has_zero_and_2_to_the_n_levels():
    rows = np.random.default_rng(1).normal(0.3, 1.0, (4, 1000))
    scale, zero, levels = cw.uniform_grid(rows, 3)
    assert levels.min() >= 0 and levels.max() <= 7
    assert np.all((zero >= 0) & (zero <= 7))  # zero decodes to exactly 0.0


def test_uniform_grid_keeps_row_sums_within_half_a_step():
    rows = np.random.default_rng(2).standard_t(4, size=(8, 3000))
    for keep in (False, True):
        scale, zero, levels = cw.uniform_grid(rows, 6, np.float64, search=False, keep_sums=keep)
        drift = np.abs(np.sum((levels - zero[:, None]) * scale[:, None] - rows, axis=1))
        if keep:
            assert np.all(drift <= scale / 2 + 1e-9)
            assert np.all(levels >= 0) and np.all(levels <= 63)
        else:
            assert np.any(drift > scale / 2)  # plain rounding drifts


# ---------------------------------------------------------------- opset upgrade check


def _ir(proto):
    return ir.serde.deserialize_model(proto)


def test_upgrade_blockers_accept_ops_that_only_gain_types():
    proto = _conv_model(
        _weights((4, 2, 3, 3)),
        opset=12,
        extra_nodes=[helper.make_node("Relu", ["y"], ["r"])],
        extra_outputs=[_f("r", [1, 4, 6, 6])],
    )
    assert cw.upgrade_blockers(_ir(proto), 21) == []


@pytest.mark.parametrize(
    ("node", "opset", "target", "reason"),
    [
        (helper.make_node("Softmax", ["x"], ["y"], axis=1), 12, 13, "Softmax changes meaning"),
        (helper.make_node("Squeeze", ["x"], ["y"], axes=[0]), 12, 13, "Squeeze attribute 'axes'"),
        (
            helper.make_node("ReduceMean", ["x"], ["y"], axes=[1]),
            17,
            21,
            "ReduceMean attribute 'axes'",
        ),
        (helper.make_node("Split", ["x"], ["y", "z"], axis=1), 17, 21, "Split without"),
    ],
)
def test_upgrade_blockers_refuse_changed_ops(node, opset, target, reason):
    outputs = [_f(name, None) for name in node.output]
    proto = helper.make_model(
        helper.make_graph([node], "g", [_f("x", [1, 4, 2])], outputs),
        opset_imports=[helper.make_opsetid("", opset)],
        ir_version=8,
    )
    blockers = cw.upgrade_blockers(_ir(proto), target)
    assert blockers and reason in blockers[0]


def test_upgrade_blockers_refuse_models_with_default_domain_functions():
    function = helper.make_function(
        "local",
        "F",
        ["a"],
        ["b"],
        [helper.make_node("Relu", ["a"], ["b"])],
        [helper.make_opsetid("", 17)],
    )
    proto = _model(
        [helper.make_node("F", ["x"], ["y"], domain="local")],
        [_f("x", [2])],
        [_f("y", [2])],
        functions=[function],
    )
    assert "imports the default domain" in cw.upgrade_blockers(_ir(proto), 21)[0]


def test_pass_runs_without_context_data():
    # cluster-weights reads no calibration data: an empty context is enough.
    proto = _conv_model(_weights((16, 8, 3, 3)))
    model = _ir(proto)
    result = (
        PassSpec.create("cluster-weights", min_elements=SMALL)
        .instantiate()
        .run(model, PassContext())
    )
    assert result.modified

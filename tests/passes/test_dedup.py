"""Unit tests of dedup: identical weights in every scope, exact transforms, negative cases."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper
from passes_util import (
    check_idempotent,
    model_from_text,
    op_types,
    ort_run,
    random_feeds,
    run_pass,
    to_proto,
)

from nnopt_graph.core import io
from nnopt_graph.passes.sharing import dedup, tensor_bytes
from nnopt_graph.pipeline.base import PassContext
from nnopt_graph.pipeline.grammar import PassSpec

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def _model(nodes, inputs, outputs, inits=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _f(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _init(array, name):
    return numpy_helper.from_array(np.asarray(array), name)


def _all_initializers(model: ir.Model) -> dict[str, str]:
    """Initializer name -> name of the graph holding it, over all graphs."""
    return {name: graph.name for graph in model.graphs() for name in graph.initializers}


def _assert_bit_exact(before: onnx.ModelProto, after: onnx.ModelProto, **fixed) -> None:
    feeds = random_feeds(before)
    feeds.update(fixed)
    for a, b in zip(ort_run(before, feeds), ort_run(after, feeds), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()


# ---------------------------------------------------------------- byte-identical weights


def test_identical_initializers_merged_into_one():
    proto = model_from_text(
        f"""{HEADER}
        g (float[N,4] x) => (float[N,4] y)
          <float[4] a = {{1.0, 2.0, 3.0, 4.0}}, float[4] b = {{1.0, 2.0, 3.0, 4.0}},
           float[4] c = {{1.0, 2.0, 3.0, 4.0}}, float[4] d = {{1.0, 2.0, 3.0, 5.0}}> {{
            t = Add (x, a)
            u = Mul (t, b)
            v = Sub (u, c)
            y = Div (v, d)
        }}"""
    )
    model, result = run_pass(proto, "dedup")
    assert result.stats["tensors-merged"] == 2
    assert result.stats["bytes-saved"] == 32
    assert sorted(model.graph.initializers) == ["a", "d"]
    after = to_proto(model)
    _assert_bit_exact(proto, after)
    check_idempotent(model, "dedup")


def test_same_bytes_different_dtype_not_merged():
    data = np.arange(4, dtype=np.float32)
    proto = _model(
        [
            helper.make_node("Add", ["x", "a"], ["y"]),
            helper.make_node("Add", ["i", "b"], ["z"]),
        ],
        [_f("x", ["N", 4]), helper.make_tensor_value_info("i", TensorProto.INT32, ["N", 4])],
        [_f("y", ["N", 4]), helper.make_tensor_value_info("z", TensorProto.INT32, ["N", 4])],
        [_init(data, "a"), _init(data.view(np.int32), "b")],
    )
    model, result = run_pass(proto, "dedup")
    assert not result.modified
    assert sorted(model.graph.initializers) == ["a", "b"]


def test_same_bytes_different_shape_not_merged():
    data = np.arange(4, dtype=np.float32)
    proto = _model(
        [
            helper.make_node("Add", ["x", "a"], ["y"]),
            helper.make_node("Add", ["x2", "b"], ["z"]),
        ],
        [_f("x", ["N", 4]), _f("x2", [2, 2])],
        [_f("y", ["N", 4]), _f("z", [2, 2])],
        [_init(data, "a"), _init(data.reshape(2, 2), "b")],
    )
    model, result = run_pass(proto, "dedup")
    assert not result.modified
    assert sorted(model.graph.initializers) == ["a", "b"]


def test_graph_input_initializer_not_merged():
    # 'b' is overridable at run time: it must keep its own storage.
    proto = model_from_text(
        f"""{HEADER}
        g (float[N,4] x, float[4] b) => (float[N,4] y)
          <float[4] a = {{1.0, 2.0, 3.0, 4.0}}, float[4] b = {{1.0, 2.0, 3.0, 4.0}}> {{
            t = Add (x, a)
            y = Mul (t, b)
        }}"""
    )
    model, result = run_pass(proto, "dedup")
    assert not result.modified
    assert result.stats["skipped-graph-input-initializers"] == 1
    assert sorted(model.graph.initializers) == ["a", "b"]
    to_proto(model)


def test_weight_that_is_graph_output_not_merged():
    proto = model_from_text(
        f"""{HEADER}
        g (float[N,4] x) => (float[N,4] y, float[4] a)
          <float[4] a = {{1.0, 2.0, 3.0, 4.0}}, float[4] b = {{1.0, 2.0, 3.0, 4.0}}> {{
            y = Add (x, b)
        }}"""
    )
    model, result = run_pass(proto, "dedup")
    assert not result.modified
    assert result.stats["skipped-graph-output-weights"] == 1
    assert [o.name for o in model.graph.outputs] == ["y", "a"]


def test_different_values_same_hash_not_merged(monkeypatch):
    # A (forced) hash collision must be caught by the byte comparison.
    monkeypatch.setattr(dedup, "tensor_digest", lambda tensor, nbytes=None: b"same")
    proto = model_from_text(
        f"""{HEADER}
        g (float[N,4] x) => (float[N,4] y)
          <float[4] a = {{1.0, 2.0, 3.0, 4.0}}, float[4] b = {{1.0, 2.0, 3.0, 5.0}}> {{
            t = Add (x, a)
            y = Mul (t, b)
        }}"""
    )
    _, result = run_pass(proto, "dedup")
    assert not result.modified


def test_constant_node_weights_merged():
    proto = model_from_text(
        f"""{HEADER}
        g (float[N,4] x) => (float[N,4] y) {{
            a = Constant <value = float[4] {{1.0, 2.0, 3.0, 4.0}}> ()
            t = Add (x, a)
            b = Constant <value = float[4] {{1.0, 2.0, 3.0, 4.0}}> ()
            y = Mul (t, b)
        }}"""
    )
    model, result = run_pass(proto, "dedup")
    assert result.stats["tensors-merged"] == 1
    assert "Constant" not in op_types(model)
    assert list(model.graph.initializers) == ["a"]
    _assert_bit_exact(proto, to_proto(model))
    check_idempotent(model, "dedup")


def test_constant_node_and_initializer_merged_keeping_initializer():
    proto = model_from_text(
        f"""{HEADER}
        g (float[N,4] x) => (float[N,4] y) <float[4] w = {{1.0, 2.0, 3.0, 4.0}}> {{
            t = Add (x, w)
            k = Constant <value = float[4] {{1.0, 2.0, 3.0, 4.0}}> ()
            y = Mul (t, k)
        }}"""
    )
    model, result = run_pass(proto, "dedup")
    assert result.stats["tensors-merged"] == 1
    assert op_types(model) == ["Add", "Mul"]
    assert list(model.graph.initializers) == ["w"]
    _assert_bit_exact(proto, to_proto(model))


def test_constant_in_function_left_alone():
    proto = model_from_text(
        """<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
        g (float[N,4] x) => (float[N,4] y) <float[4] w = {1.0, 1.0, 1.0, 1.0}> {
            t = local.AddOne (x)
            y = Add (t, w)
        }
        <domain: "local", opset_import: ["" : 17]>
        AddOne (a) => (b) {
            one = Constant <value = float[4] {1.0, 1.0, 1.0, 1.0}> ()
            b = Add (a, one)
        }"""
    )
    model, result = run_pass(proto, "dedup")
    assert not result.modified
    assert result.stats["skipped-function-constants"] == 1


# ---------------------------------------------------------------- subgraphs


def _branch(
    name: str, op: str, weight: np.ndarray, weight_name: str, constant: bool = False
) -> onnx.GraphProto:
    out = f"{name}_out"
    if constant:
        nodes = [
            helper.make_node("Constant", [], [weight_name], value=_init(weight, weight_name)),
            helper.make_node(op, ["x", weight_name], [out]),
        ]
        inits = []
    else:
        nodes = [helper.make_node(op, ["x", weight_name], [out])]
        inits = [_init(weight, weight_name)]
    return helper.make_graph(nodes, name, [], [_f(out, ["N", 4])], inits)


def _if_model(
    then_graph, else_graph, main_inits=(), extra_nodes=(), extra_outputs=()
) -> onnx.ModelProto:
    return _model(
        [
            helper.make_node("If", ["c"], ["y"], then_branch=then_graph, else_branch=else_graph),
            *extra_nodes,
        ],
        [_f("x", ["N", 4]), helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [_f("y", ["N", 4]), *extra_outputs],
        main_inits,
    )


def _assert_both_branches_exact(before, after):
    for cond in (True, False):
        _assert_bit_exact(before, after, c=np.array(cond))


def test_weights_in_both_if_branches_lifted_to_main_graph():
    w = np.random.default_rng(0).standard_normal(4).astype(np.float32)
    proto = _if_model(_branch("then_g", "Add", w, "wt"), _branch("else_g", "Mul", w, "we"))
    model, result = run_pass(proto, "dedup")
    assert result.stats["tensors-merged"] == 1
    assert result.stats["bytes-saved"] == 16
    assert list(_all_initializers(model).values()) == ["g"]  # one copy, in the main graph
    after = to_proto(model)
    _assert_both_branches_exact(proto, after)
    check_idempotent(model, "dedup")


def test_constant_weights_in_branches_lifted():
    w = np.random.default_rng(1).standard_normal(4).astype(np.float32)
    proto = _if_model(
        _branch("then_g", "Add", w, "wt", constant=True),
        _branch("else_g", "Mul", w, "we", constant=True),
    )
    model, result = run_pass(proto, "dedup")
    assert result.stats["tensors-merged"] == 1
    assert "Constant" not in op_types(model)
    assert list(_all_initializers(model).values()) == ["g"]
    _assert_both_branches_exact(proto, to_proto(model))


def test_weight_in_main_graph_and_branch_kept_in_main_graph():
    w = np.random.default_rng(2).standard_normal(4).astype(np.float32)
    extra = [helper.make_node("Sub", ["x", "wm"], ["z"])]
    proto = _if_model(
        _branch("then_g", "Add", w, "wt"),
        _branch("else_g", "Mul", w * 2, "we"),
        main_inits=[_init(w, "wm")],
        extra_nodes=extra,
        extra_outputs=[_f("z", ["N", 4])],
    )
    model, result = run_pass(proto, "dedup")
    assert result.stats["tensors-merged"] == 1
    assert _all_initializers(model) == {"wm": "g", "we": "else_g"}
    _assert_both_branches_exact(proto, to_proto(model))


def test_lifted_weight_renamed_when_its_name_is_taken_elsewhere():
    # Sibling branches may reuse names: lifting the copy under its own name would shadow
    # a value of that name in the other branch.
    w = np.random.default_rng(3).standard_normal(4).astype(np.float32)

    def branch(name: str, dup: str, temp: str) -> onnx.GraphProto:
        return helper.make_graph(
            [
                helper.make_node("Mul", ["x", dup], [temp]),
                helper.make_node("Add", [temp, "x"], [f"{name}_out"]),
            ],
            name,
            [],
            [_f(f"{name}_out", ["N", 4])],
            [_init(w, dup)],
        )

    proto = _if_model(branch("then_g", "w", "u"), branch("else_g", "u", "w"))
    model, result = run_pass(proto, "dedup")
    assert result.stats["tensors-merged"] == 1
    inits = _all_initializers(model)
    assert len(inits) == 1 and next(iter(inits)).endswith("__1") and inits.popitem()[1] == "g"
    # ORT rejects the original (it mixes up the siblings' names); the result runs.
    after = to_proto(model)
    x = random_feeds(proto)["x"]
    for cond in (True, False):
        (y,) = ort_run(after, {"x": x, "c": np.array(cond)})
        np.testing.assert_array_equal(y, x * w + x)


def _loop_with_if(weight: np.ndarray, main_copy: bool) -> onnx.ModelProto:
    """A Loop whose body holds an If with the same weight in both branches."""
    then_g = helper.make_graph(
        [helper.make_node("Add", ["s_in", "wt"], ["t_out"])],
        "then_g",
        [],
        [_f("t_out", [4])],
        [_init(weight, "wt")],
    )
    else_g = helper.make_graph(
        [helper.make_node("Mul", ["s_in", "we"], ["e_out"])],
        "else_g",
        [],
        [_f("e_out", [4])],
        [_init(weight, "we")],
    )
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("If", ["c"], ["s_out"], then_branch=then_g, else_branch=else_g),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            _f("s_in", [4]),
        ],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), _f("s_out", [4])],
    )
    nodes = [helper.make_node("Loop", ["n", "", "x"], ["y"], body=body)]
    inits = [_init(np.array(3, np.int64), "n")]
    outputs = [_f("y", [4])]
    if main_copy:
        nodes.append(helper.make_node("Sub", ["x", "wm"], ["z"]))
        inits.append(_init(weight, "wm"))
        outputs.append(_f("z", [4]))
    return _model(
        nodes,
        [_f("x", [4]), helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        outputs,
        inits,
    )


def test_nested_if_inside_loop_lifted_to_loop_body():
    w = np.random.default_rng(4).standard_normal(4).astype(np.float32)
    proto = _loop_with_if(w, main_copy=False)
    model, result = run_pass(proto, "dedup")
    assert result.stats["tensors-merged"] == 1
    inits = _all_initializers(model)
    assert sorted(inits.values()) == [
        "body",
        "g",
    ]  # 'n', and w in the scope enclosing both branches
    after = to_proto(model)
    _assert_both_branches_exact(proto, after)
    check_idempotent(model, "dedup")


def test_nested_if_inside_loop_with_main_graph_copy_lifted_to_main():
    w = np.random.default_rng(5).standard_normal(4).astype(np.float32)
    proto = _loop_with_if(w, main_copy=True)
    model, result = run_pass(proto, "dedup")
    assert result.stats["tensors-merged"] == 2
    assert _all_initializers(model) == {"n": "g", "wm": "g"}
    _assert_both_branches_exact(proto, to_proto(model))


# ---------------------------------------------------------------- external data


def test_external_data_streamed_in_chunks_without_loading(tmp_path, monkeypatch):
    rng = np.random.default_rng(6)
    w = rng.standard_normal((64, 16)).astype(np.float32)
    near = w.copy()
    near[-1, -1] += 1.0  # differs only in the last chunk
    proto = _model(
        [
            helper.make_node("MatMul", ["x", "a"], ["t"]),
            helper.make_node("MatMul", ["x", "b"], ["u"]),
            helper.make_node("MatMul", ["x", "c"], ["v"]),
            helper.make_node("Sum", ["t", "u", "v"], ["y"]),
        ],
        [_f("x", ["N", 64])],
        [_f("y", ["N", 16])],
        [_init(w, "a"), _init(w, "b"), _init(near, "c")],
    )
    path = tmp_path / "m.onnx"
    original = onnx.ModelProto()
    original.CopyFrom(proto)
    onnx.save(
        proto,
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="m.onnx.data",
        size_threshold=0,
    )
    model = io.load(path)
    assert all(
        isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values()
    )

    def refuse(self, *args, **kwargs):
        raise AssertionError("dedup loaded a whole external tensor")

    monkeypatch.setattr(ir.ExternalTensor, "numpy", refuse)
    monkeypatch.setattr(ir.ExternalTensor, "tobytes", refuse)
    monkeypatch.setattr(tensor_bytes, "CHUNK_BYTES", 1000)  # several uneven chunks per tensor
    result = PassSpec.create("dedup", transforms=False).instantiate().run(model, PassContext())
    monkeypatch.undo()
    assert result.stats["tensors-merged"] == 1
    assert sorted(model.graph.initializers) == ["a", "c"]
    out = tmp_path / "out.onnx"
    io.save(model, out)
    after = onnx.load(out)
    onnx.checker.check_model(str(out), full_check=True)
    _assert_bit_exact(original, after)


def test_tensors_equal_across_chunk_boundaries(monkeypatch):
    monkeypatch.setattr(tensor_bytes, "CHUNK_BYTES", 7)
    a = ir.tensor(np.arange(100, dtype=np.float32))
    b = ir.tensor(np.arange(100, dtype=np.float32))
    c = ir.tensor(np.r_[np.arange(99), 1000].astype(np.float32))
    assert dedup.tensors_equal(a, b)
    assert not dedup.tensors_equal(a, c)
    assert dedup.tensor_digest(a) == dedup.tensor_digest(b) != dedup.tensor_digest(c)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.arange(5, dtype=np.int64),
        np.array([0.5, -2.0], np.float16),
        np.array([True, False, True]),
        np.zeros((0, 3), np.float32),
    ],
    ids=["float32", "int64", "float16", "bool", "empty"],
)
def test_loaded_tensor_digest_is_the_in_memory_one(array, monkeypatch):
    loaded = ir.serde.deserialize_tensor(numpy_helper.from_array(array, "w"))
    assert tensor_bytes._raw_data(loaded) is not None or array.size == 0
    expected = dedup.tensor_digest(ir.tensor(array))
    assert dedup.tensor_digest(loaded) == expected
    monkeypatch.setattr(tensor_bytes, "CHUNK_BYTES", 7)  # the chunked path agrees
    assert dedup.tensor_digest(ir.tensor(array)) == expected


def test_typed_field_tensor_is_hashed_by_its_bytes():
    proto = helper.make_tensor("w", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])  # float_data
    loaded = ir.serde.deserialize_tensor(proto)
    assert tensor_bytes._raw_data(loaded) is None
    assert dedup.tensor_digest(loaded) == dedup.tensor_digest(
        ir.tensor(np.array([1.0, 2.0, 3.0], np.float32))
    )


# ---------------------------------------------------------------- exact transforms


def _tied_lm(vocab: int = 64, hidden: int = 16) -> tuple[onnx.ModelProto, np.ndarray]:
    """Embedding Gather on W [vocab, hidden] and an LM head MatMul on a copy of W^T."""
    w = np.random.default_rng(7).standard_normal((vocab, hidden)).astype(np.float32)
    proto = _model(
        [
            helper.make_node("Gather", ["emb", "ids"], ["h"]),
            helper.make_node("Tanh", ["h"], ["a"]),
            helper.make_node("MatMul", ["a", "head"], ["logits"]),
        ],
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "S"])],
        [_f("logits", ["B", "S", vocab])],
        [_init(w, "emb"), _init(np.ascontiguousarray(w.T), "head")],
    )
    return proto, w


def test_tied_embedding_and_lm_head_share_one_weight():
    proto, w = _tied_lm()
    model, result = run_pass(proto, "dedup")
    assert result.stats["transposes-shared"] == 1
    assert result.stats["bytes-saved"] == w.nbytes
    assert len(model.graph.initializers) == 1
    assert sorted(op_types(model)) == ["Gather", "MatMul", "Tanh", "Transpose"]
    after = to_proto(model)
    assert after.ByteSize() < proto.ByteSize() - w.nbytes + 200
    _assert_bit_exact(proto, after)
    check_idempotent(model, "dedup")


def test_transforms_option_off_keeps_transposed_copy():
    proto, _ = _tied_lm()
    _, result = run_pass(proto, "dedup", transforms=False)
    assert not result.modified


def test_tiny_transpose_that_would_not_save_bytes_left_alone():
    w = np.arange(1, 7, dtype=np.float32).reshape(2, 3)
    proto = _model(
        [
            helper.make_node("MatMul", ["x", "a"], ["t"]),
            helper.make_node("MatMul", ["t", "b"], ["y"]),
        ],
        [_f("x", ["N", 2])],
        [_f("y", ["N", 2])],
        [_init(w, "a"), _init(np.ascontiguousarray(w.T), "b")],
    )
    model, result = run_pass(proto, "dedup")
    assert not result.modified
    assert result.stats["skipped-transforms-too-small"] == 1
    assert "Transpose" not in op_types(model)


def _pair_model(base: np.ndarray, other: np.ndarray) -> onnx.ModelProto:
    rows, cols = base.shape
    elem = helper.np_dtype_to_tensor_dtype(base.dtype)
    return _model(
        [
            helper.make_node("MatMul", ["x", "a"], ["t"]),
            helper.make_node("MatMul", ["x", "b"], ["u"]),
            helper.make_node("Add", ["t", "u"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", elem, ["N", rows])],
        [helper.make_tensor_value_info("y", elem, ["N", cols])],
        [_init(base, "a"), _init(other, "b")],
    )


def test_negation_shared():
    w = np.random.default_rng(8).standard_normal((16, 8)).astype(np.float32)
    w[0, 0] = 0.0  # -0.0 after negation: must stay bit exact
    proto = _pair_model(w, -w)
    model, result = run_pass(proto, "dedup")
    assert result.stats["negations-shared"] == 1
    assert len(model.graph.initializers) == 1 and "Neg" in op_types(model)
    _assert_bit_exact(proto, to_proto(model))
    check_idempotent(model, "dedup")


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_scalar_multiple_shared(dtype):
    w = np.random.default_rng(9).standard_normal((16, 8)).astype(dtype)
    proto = _pair_model(w, (w * dtype(0.25)).astype(dtype))
    model, result = run_pass(proto, "dedup")
    assert result.stats["multiples-shared"] == 1
    assert "Mul" in op_types(model)
    scales = [v for v in model.graph.initializers.values() if v.const_value.shape == ()]
    assert len(scales) == 1 and scales[0].const_value.numpy() == dtype(0.25)
    _assert_bit_exact(proto, to_proto(model))
    check_idempotent(model, "dedup")


def test_two_multiples_share_one_scale_constant():
    w = np.random.default_rng(10).standard_normal((16, 8)).astype(np.float32)
    proto = _model(
        [
            helper.make_node("MatMul", ["x", "a"], ["t"]),
            helper.make_node("MatMul", ["x", "b"], ["u"]),
            helper.make_node("MatMul", ["x", "c"], ["v"]),
            helper.make_node("Sum", ["t", "u", "v"], ["y"]),
        ],
        [_f("x", ["N", 16])],
        [_f("y", ["N", 8])],
        [_init(w, "a"), _init(w * np.float32(3.0), "b"), _init(w * np.float32(9.0), "c")],
    )
    model, result = run_pass(proto, "dedup")
    assert result.stats["multiples-shared"] == 2
    _assert_bit_exact(proto, to_proto(model))
    check_idempotent(model, "dedup")


def test_multiple_derived_in_the_exact_direction():
    # 3w / 3 is not w bit for bit for all w, but w * 3 is 3w: the first weight goes.
    w = np.random.default_rng(13).standard_normal((16, 8)).astype(np.float32)
    three, nine = w * np.float32(3.0), w * np.float32(9.0)
    assert not np.array_equal(three * (w[0, 0] / three[0, 0]), w)
    proto = _model(
        [
            helper.make_node("MatMul", ["x", "a"], ["t"]),
            helper.make_node("MatMul", ["x", "b"], ["u"]),
            helper.make_node("MatMul", ["x", "c"], ["v"]),
            helper.make_node("Sum", ["t", "u", "v"], ["y"]),
        ],
        [_f("x", ["N", 16])],
        [_f("y", ["N", 8])],
        [_init(three, "a"), _init(w, "b"), _init(nine, "c")],
    )
    model, result = run_pass(proto, "dedup")
    assert result.stats["multiples-shared"] == 2
    big = [n for n, v in model.graph.initializers.items() if v.const_value.shape != ()]
    assert big == ["b"]
    _assert_bit_exact(proto, to_proto(model))
    check_idempotent(model, "dedup")


def test_almost_multiple_left_alone():
    w = np.random.default_rng(11).standard_normal((16, 8)).astype(np.float32)
    other = w * np.float32(0.5)
    other[5, 5] = np.nextafter(other[5, 5], np.float32(10))  # one ulp off, same signs and zeros
    model, result = run_pass(_pair_model(w, other), "dedup")
    assert not result.modified


def test_transposed_copy_in_if_branch_derived_in_branch():
    w = np.random.default_rng(12).standard_normal((4, 12)).astype(np.float32)
    then_g = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "wa"], ["p"]),
            helper.make_node("MatMul", ["p", "wb"], ["then_out"]),
        ],
        "then_g",
        [],
        [_f("then_out", ["N", 4])],
        [_init(w, "wa"), _init(np.ascontiguousarray(w.T), "wb")],
    )
    else_g = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["else_out"])], "else_g", [], [_f("else_out", ["N", 4])]
    )
    proto = _if_model(then_g, else_g)
    model, result = run_pass(proto, "dedup")
    assert result.stats["transposes-shared"] == 1
    then_graph = next(g for g in model.graphs() if g.name == "then_g")
    assert [n.op_type for n in then_graph] == ["Transpose", "MatMul", "MatMul"]
    _assert_both_branches_exact(proto, to_proto(model))
    check_idempotent(model, "dedup")


def test_non_float_or_non_2d_weights_not_transformed():
    w = np.arange(24, dtype=np.int64).reshape(4, 6) + 1
    proto = _model(
        [
            helper.make_node("MatMul", ["x", "a"], ["t"]),
            helper.make_node("MatMul", ["t", "b"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.INT64, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, ["N", 4])],
        [_init(w, "a"), _init(np.ascontiguousarray(w.T), "b")],
    )
    _, result = run_pass(proto, "dedup")
    assert not result.modified

"""Unit tests of cse: merges in all scopes, commutative inputs, and what must stay apart."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from passes_util import (
    assert_same_outputs,
    check_idempotent,
    model_from_text,
    op_types,
    ort_run,
    random_feeds,
    run_pass,
    to_proto,
)

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def _if_model(then_body: str, else_body: str) -> onnx.ModelProto:
    return model_from_text(
        f"""{HEADER}
        g (float[N,4] x, bool c) => (float[N,4] y) {{
            y = If (c) <then_branch = {then_body}, else_branch = {else_body}>
        }}"""
    )


def test_identical_nodes_merged_and_chains_follow():
    proto = model_from_text(
        f"""{HEADER}
        g (float[N,4] x) => (float[N,4] y) {{
            a = Relu (x)
            b = Relu (x)
            na = Neg (a)
            nb = Neg (b)
            y = Sub (na, nb)
        }}"""
    )
    model, result = run_pass(proto, "cse")
    assert result.stats["nodes-merged"] == 2
    assert op_types(model) == ["Relu", "Neg", "Sub"]
    assert_same_outputs(proto, to_proto(model), rtol=0, atol=0)
    check_idempotent(model, "cse")


def test_commutative_inputs_normalized():
    proto = model_from_text(
        f"""{HEADER}
        g (float[N,4] x, float[N,4] z) => (float[N,4] y) {{
            a = Add (x, z)
            b = Add (z, x)
            m = Max (x, z, a)
            n = Max (a, z, x)
            s = Sub (m, n)
            y = Mul (s, b)
        }}"""
    )
    model, result = run_pass(proto, "cse")
    assert result.stats["nodes-merged"] == 2
    assert op_types(model) == ["Add", "Max", "Sub", "Mul"]
    assert_same_outputs(proto, to_proto(model), rtol=0, atol=0)
    check_idempotent(model, "cse")


@pytest.mark.parametrize("op", ["Sub", "Div", "Pow", "MatMul", "Less"])
def test_non_commutative_swapped_inputs_not_merged(op):
    out = "bool[4,4]" if op == "Less" else "float[4,4]"
    proto = model_from_text(
        f"""{HEADER}
        g (float[4,4] x, float[4,4] z) => ({out} a, {out} b) {{
            a = {op} (x, z)
            b = {op} (z, x)
        }}"""
    )
    _, result = run_pass(proto, "cse")
    assert not result.modified


def test_different_attributes_not_merged():
    proto = model_from_text(
        f"""{HEADER}
        g (float[N,4] x) => (float[N,4] y) {{
            a = LeakyRelu <alpha = 0.1> (x)
            b = LeakyRelu <alpha = 0.2> (x)
            y = Add (a, b)
        }}"""
    )
    _, result = run_pass(proto, "cse")
    assert not result.modified


def test_attributes_compared_by_bits_negative_zero_differs():
    proto = model_from_text(
        f"""{HEADER}
        g (float[N,4] x) => (float[N,4] y) {{
            a = Constant <value_float = 0.0> ()
            b = Constant <value_float = -0.0> ()
            p = Div (x, a)
            q = Div (x, b)
            y = Add (p, q)
        }}"""
    )
    _, result = run_pass(proto, "cse")
    assert not result.modified


def test_same_attributes_in_other_order_merged():
    proto = model_from_text(
        f"""{HEADER}
        g (float[N,4,6] x) => (float[N,6,4] y) {{
            a = Transpose <perm = [0, 2, 1]> (x)
            b = Transpose <perm = [0, 2, 1]> (x)
            c = Transpose <perm = [1, 0, 2]> (x)
            y = Add (a, b)
        }}"""
    )
    model, result = run_pass(proto, "cse")
    assert result.stats["nodes-merged"] == 1
    assert op_types(model).count("Transpose") == 2  # the other perm stays
    to_proto(model)


def test_large_constant_nodes_merged_after_byte_check():
    values = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal(256).astype(np.float32)
    )
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["a"], value=values),
            helper.make_node("Constant", [], ["b"], value=values),
            helper.make_node("Add", ["x", "a"], ["t"]),
            helper.make_node("Add", ["t", "b"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 256])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    model, result = run_pass(proto, "cse")
    assert result.stats["nodes-merged"] == 1
    assert op_types(model) == ["Constant", "Add", "Add"]
    assert_same_outputs(proto, to_proto(model), rtol=0, atol=0)


def test_different_output_counts_not_merged():
    proto = model_from_text(
        f"""{HEADER}
        g (float[N,4] x) => (float[N,4] y, bool[N,4] m) {{
            a = Dropout (x)
            b, m = Dropout (x)
            y = Add (a, b)
        }}"""
    )
    _, result = run_pass(proto, "cse")
    assert not result.modified


@pytest.mark.parametrize(
    "node",
    [
        "RandomNormalLike <seed = 1.0> (x)",
        "RandomUniformLike (x)",
        "Bernoulli (p)",
        "Dropout (x, r, t)",  # training mode
        "Dropout (x, r, tin)",  # training mode decided at run time
    ],
)
def test_nondeterministic_ops_not_merged(node):
    proto = model_from_text(
        f"""{HEADER}
        g (float[N,4] x, bool tin) => (float[N,4] y) {{
            r = Constant <value = float {{0.5}}> ()
            t = Constant <value = bool {{1}}> ()
            p = Sigmoid (x)
            a = {node}
            b = {node}
            y = Sub (a, b)
        }}"""
    )
    model, result = run_pass(proto, "cse")
    assert not result.modified
    assert result.stats["skipped-nondeterministic"] == 1
    assert len(op_types(model)) == 6


def test_inference_dropout_merged():
    proto = model_from_text(
        f"""{HEADER}
        g (float[N,4] x) => (float[N,4] y) {{
            r = Constant <value = float {{0.5}}> ()
            f = Constant <value = bool {{0}}> ()
            a = Dropout (x, r, f)
            b = Dropout (x, r, f)
            y = Add (a, b)
        }}"""
    )
    model, result = run_pass(proto, "cse")
    assert result.stats["nodes-merged"] == 1
    assert_same_outputs(proto, to_proto(model), rtol=0, atol=0)


def test_duplicate_output_that_is_graph_output_keeps_its_name():
    proto = model_from_text(
        f"""{HEADER}
        g (float[N,4] x) => (float[N,4] z, float[N,4] y) {{
            a = Relu (x)
            z = Neg (a)
            y = Relu (x)
        }}"""
    )
    model, result = run_pass(proto, "cse")
    assert result.stats["nodes-merged"] == 1
    assert [o.name for o in model.graph.outputs] == ["z", "y"]
    assert op_types(model) == ["Relu", "Neg"]  # nothing added: the kept Relu now writes 'y'
    assert_same_outputs(proto, to_proto(model), rtol=0, atol=0)
    check_idempotent(model, "cse")


def test_twins_that_are_both_graph_outputs_kept():
    proto = model_from_text(
        f"""{HEADER}
        g (float[N,4] x) => (float[N,4] a, float[N,4] b) {{
            a = Relu (x)
            b = Relu (x)
        }}"""
    )
    model, result = run_pass(proto, "cse")
    assert not result.modified
    assert result.stats["skipped-graph-outputs"] == 1
    assert [o.name for o in model.graph.outputs] == ["a", "b"]
    assert op_types(model) == ["Relu", "Relu"]


def test_merge_inside_if_branch_reading_outer_scope():
    then_b = "then_g () => (float[N,4] t) { p = Relu (x) q = Relu (x) t = Add (p, q) }"
    else_b = "else_g () => (float[N,4] e) { e = Neg (x) }"
    proto = _if_model(then_b, else_b)
    model, result = run_pass(proto, "cse")
    assert result.stats["nodes-merged"] == 1
    assert sorted(op_types(model)) == ["Add", "If", "Neg", "Relu"]
    after = to_proto(model)
    for cond in (True, False):
        feeds = dict(random_feeds(proto), c=np.array(cond))
        np.testing.assert_array_equal(ort_run(proto, feeds)[0], ort_run(after, feeds)[0])
    check_idempotent(model, "cse")


def test_branch_output_duplicate_keeps_branch_output_name():
    then_b = "then_g () => (float[N,4] t) { p = Relu (x) t = Relu (x) u = Add (p, t) }"
    else_b = "else_g () => (float[N,4] e) { e = Neg (x) }"
    proto = _if_model(then_b, else_b)
    model, result = run_pass(proto, "cse")
    assert result.stats["nodes-merged"] == 1
    then_graph = next(g for g in model.graphs() if g.name == "then_g")
    assert [o.name for o in then_graph.outputs] == ["t"]
    to_proto(model)


def test_identical_if_nodes_never_merged():
    body = "b () => (float[N,4] o) { o = Relu (x) }"
    proto = model_from_text(
        f"""{HEADER}
        g (float[N,4] x, bool c) => (float[N,4] y) {{
            a = If (c) <then_branch = {body}, else_branch = {body}>
            b = If (c) <then_branch = {body}, else_branch = {body}>
            y = Add (a, b)
        }}"""
    )
    model, result = run_pass(proto, "cse")
    assert not result.modified
    assert result.stats["skipped-control-flow"] == 1
    assert op_types(model).count("If") == 2


def test_merge_inside_function_and_deterministic_function_calls():
    proto = model_from_text(
        """<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
        g (float[N,4] x) => (float[N,4] y) {
            a = local.Twice (x)
            b = local.Twice (x)
            y = Add (a, b)
        }
        <domain: "local", opset_import: ["" : 17]>
        Twice (u) => (v) { p = Relu (u) q = Relu (u) v = Add (p, q) }"""
    )
    model, result = run_pass(proto, "cse")
    assert result.stats["nodes-merged"] == 2  # one call, one Relu in the body
    function = next(iter(model.functions.values()))
    assert [n.op_type for n in function] == ["Relu", "Add"]
    assert_same_outputs(proto, to_proto(model), rtol=0, atol=0)
    check_idempotent(model, "cse")


def test_calls_of_random_function_or_custom_op_not_merged():
    proto = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17, "local" : 1, "com.example" : 1]>
        g (float[N,4] x) => (float[N,4] y) {
            a = local.Noisy (x)
            b = local.Noisy (x)
            c = com.example.Mystery (x)
            d = com.example.Mystery (x)
            s = Add (a, b)
            t = Add (c, d)
            y = Add (s, t)
        }
        <domain: "local", opset_import: ["" : 17]>
        Noisy (u) => (v) { n = RandomNormalLike (u) v = Add (u, n) }"""
    )
    model, result = run_pass(proto, "cse")
    assert not result.modified
    assert result.stats["skipped-nondeterministic"] == 1
    assert result.stats["skipped-custom-domain"] == 1


# ---------------------------------------------------------------- the twin screen


def _twins(body: str) -> bool:
    import onnx_ir as ir

    from nnopt_graph.passes.sharing.cse import _may_have_twins

    proto = model_from_text(
        f"""{HEADER}
        g (float[2,4] x) => (float[2,4] y) <float[4] w = {{1.0, 2.0, 3.0, 4.0}}> {{ {body} }}"""
    )
    return _may_have_twins(ir.serde.deserialize_model(proto).graph)


def test_twin_screen_skips_a_chain():
    assert not _twins("a = Add (x, w) m = Mul (a, w) r = Relu (m) y = Add (r, w)")


@pytest.mark.parametrize(
    "body",
    [
        "a = Add (x, w) b = Add (w, x) y = Sub (a, b)",  # commutative: inputs in any order
        "a = Transpose <perm = [1, 0]> (x) b = Transpose (x) c = Transpose (a) y = Add (x, w)",
        "a = Relu (x) b = Relu (x) y = Sub (a, b)",
    ],
)
def test_twin_screen_lets_through_nodes_reading_the_same_inputs(body):
    assert _twins(body)


def test_nodes_that_differ_only_in_attributes_pass_the_screen_and_stay_apart():
    proto = model_from_text(
        f"""{HEADER}
        g (float[2,4] x) => (float[2,4] y) {{
            a = LeakyRelu <alpha = 0.1> (x)
            b = LeakyRelu <alpha = 0.2> (x)
            y = Sub (a, b)
        }}"""
    )
    model, result = run_pass(proto, "cse")
    assert not result.modified
    assert op_types(model).count("LeakyRelu") == 2

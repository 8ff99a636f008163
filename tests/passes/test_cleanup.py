"""Unit tests of the cleanup passes: positive and negative cases, subgraphs, idempotence."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper, numpy_helper
from passes_util import (
    assert_same_outputs,
    check_idempotent,
    model_from_text,
    op_types,
    run_pass,
    to_proto,
)

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def _if_model(then_body: str, else_body: str, out_type: str = "float[N,4]") -> onnx.ModelProto:
    return model_from_text(
        f"""{HEADER}
        g (float[N,4] x, bool c) => ({out_type} y) {{
            y = If (c) <then_branch = {then_body}, else_branch = {else_body}>
        }}"""
    )


# ---------------------------------------------------------------- lift-constants


def test_lift_constants_turns_constant_into_initializer():
    proto = model_from_text(
        f"""{HEADER}
        g (float[N,4] x) => (float[N,4] y) {{
            k = Constant <value = float[4] {{1.0, 2.0, 3.0, 4.0}}> ()
            y = Mul (x, k)
        }}"""
    )
    model, result = run_pass(proto, "lift-constants")
    assert result.stats["constants-lifted"] == 1 and result.modified
    assert "Constant" not in op_types(model)
    assert "k" in model.graph.initializers
    assert_same_outputs(proto, to_proto(model))
    check_idempotent(model, "lift-constants")


def test_lift_constants_inside_if_branch():
    then_b = "then_g () => (float[N,4] t) { k = Constant <value = float[4] {1.0,1.0,1.0,1.0}> () t = Add (x, k) }"
    else_b = "else_g () => (float[N,4] e) { e = Neg (x) }"
    proto = _if_model(then_b, else_b)
    model, result = run_pass(proto, "lift-constants")
    assert result.stats["constants-lifted"] == 1
    assert "Constant" not in op_types(model)
    after = to_proto(model)
    assert_same_outputs(proto, after)


def test_lift_constants_keeps_constant_that_is_graph_output():
    proto = model_from_text(
        f"""{HEADER}
        g (float[N,4] x) => (float[4] y) {{
            y = Constant <value = float[4] {{1.0, 2.0, 3.0, 4.0}}> ()
        }}"""
    )
    model, result = run_pass(proto, "lift-constants")
    assert not result.modified
    assert result.stats["skipped-constants-kept"] == 1
    assert op_types(model) == ["Constant"]


def test_lift_constants_leaves_functions_alone():
    proto = model_from_text(
        """<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
        g (float[N,4] x) => (float[N,4] y) { y = local.AddOne (x) }
        <domain: "local", opset_import: ["" : 17]>
        AddOne (a) => (b) { one = Constant <value = float {1.0}> () b = Add (a, one) }"""
    )
    model, result = run_pass(proto, "lift-constants")
    assert not result.modified
    assert result.stats["skipped-constants-in-functions"] == 1


# ---------------------------------------------------------------- eliminate-no-ops


def test_no_ops_removed():
    proto = model_from_text(
        f"""{HEADER}
        g (float[N,4] x) => (float[N,4] y) {{
            a = Identity (x)
            b = Dropout (a)
            c = Cast <to = 1> (b)
            d = Transpose <perm = [0, 1]> (c)
            y = Relu (d)
        }}"""
    )
    model, result = run_pass(proto, "eliminate-no-ops")
    assert result.stats["nodes-removed"] == 4
    assert op_types(model) == ["Relu"]
    assert_same_outputs(proto, to_proto(model))
    check_idempotent(model, "eliminate-no-ops")


def test_identity_feeding_output_keeps_output_name():
    proto = model_from_text(
        f"""{HEADER}
        g (float[N,4] x) => (float[N,4] y) {{ r = Relu (x) y = Identity (r) }}"""
    )
    model, result = run_pass(proto, "eliminate-no-ops")
    assert result.stats["nodes-removed"] == 1
    assert [o.name for o in model.graph.outputs] == ["y"]
    assert_same_outputs(proto, to_proto(model))


def test_identity_linking_input_to_output_is_kept():
    proto = model_from_text(f"{HEADER} g (float[N,4] x) => (float[N,4] y) {{ y = Identity (x) }}")
    model, result = run_pass(proto, "eliminate-no-ops")
    assert not result.modified and result.stats["skipped-output-links"] == 1
    assert op_types(model) == ["Identity"]


def test_identity_between_two_outputs_is_kept():
    proto = model_from_text(
        f"{HEADER} g (float[N,4] x) => (float[N,4] r, float[N,4] y) {{ r = Relu (x) y = Identity (r) }}"
    )
    model, result = run_pass(proto, "eliminate-no-ops")
    assert not result.modified
    assert [o.name for o in model.graph.outputs] == ["r", "y"]


@pytest.mark.parametrize(
    "node",
    [
        "y = Cast <to = 7> (x)",  # float -> int64 changes the values
        "y = Transpose <perm = [1, 0]> (x)",
    ],
)
def test_ops_that_compute_are_kept(node):
    out = "int64[N,4]" if "Cast" in node else "float[4,N]"
    proto = model_from_text(
        f"{HEADER} g (float[N,4] x) => ({out} y) {{ r = Relu (x) {node.replace('(x)', '(r)')} }}"
    )
    model, result = run_pass(proto, "eliminate-no-ops")
    assert not result.modified


def test_dropout_in_training_mode_or_with_used_mask_is_kept():
    proto = model_from_text(
        f"""{HEADER}
        g (float[N,4] x) => (float[N,4] y, bool[N,4] m) {{
            t = Constant <value = bool {{1}}> ()
            r = Constant <value = float {{0.5}}> ()
            a = Dropout (x, r, t)
            y, m = Dropout (a)
        }}"""
    )
    model, result = run_pass(proto, "eliminate-no-ops")
    assert not result.modified
    assert op_types(model).count("Dropout") == 2


def test_identity_in_subgraph_reading_outer_scope_is_kept():
    then_b = "then_g () => (float[N,4] t) { t = Identity (x) }"
    else_b = "else_g () => (float[N,4] e) { n = Neg (x) i = Identity (n) e = Relu (i) }"
    proto = _if_model(then_b, else_b)
    model, result = run_pass(proto, "eliminate-no-ops")
    # The else branch's inner Identity goes; the then branch's links outer x to an output.
    assert result.stats["nodes-removed"] == 1
    assert result.stats["skipped-output-links"] == 1
    assert [o.name for o in model.graph.outputs] == ["y"]
    assert model.graph.inputs[0].name == "x"
    assert_same_outputs(proto, to_proto(model))


# ---------------------------------------------------------------- fold-constants


def test_fold_constants_folds_constant_subexpressions():
    proto = model_from_text(
        f"""{HEADER}
        g (float[2,4] x) => (float[2,4] y) {{
            a = Constant <value = float[4] {{1.0, 2.0, 3.0, 4.0}}> ()
            b = Constant <value = float[4] {{0.5, 0.5, 0.5, 0.5}}> ()
            c = Mul (a, b)
            s = Shape (x)
            n = ReduceProd <keepdims = 0> (s)
            y = Add (x, c)
        }}"""
    )
    model, result = run_pass(proto, "fold-constants")
    assert result.stats["nodes-folded"] >= 1
    assert "Mul" not in op_types(model)
    assert_same_outputs(proto, to_proto(model))
    check_idempotent(model, "fold-constants")


def test_fold_constants_never_grows_the_model():
    big = np.arange(4, dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node(
                "Constant",
                [],
                ["shape"],
                value=numpy_helper.from_array(np.array([4096, 4], np.int64)),
            ),
            helper.make_node("Expand", ["w", "shape"], ["wide"]),
            helper.make_node("Add", ["x", "wide"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4096, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4096, 4])],
        [numpy_helper.from_array(big, "w")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(proto, full_check=True)
    model, result = run_pass(proto, "fold-constants")
    assert "Expand" in op_types(model)
    after = to_proto(model)
    assert after.ByteSize() <= proto.ByteSize() + 256
    assert_same_outputs(proto, after)


def test_fold_constants_leaves_inputs_dependent_nodes():
    proto = model_from_text(
        f"{HEADER} g (float[N,4] x) => (float[N,4] y) {{ r = Relu (x) y = Neg (r) }}"
    )
    model, result = run_pass(proto, "fold-constants")
    assert not result.modified
    assert op_types(model) == ["Relu", "Neg"]


def test_fold_constants_skips_custom_domain_ops():
    proto = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>
        g (float[N,4] x) => (float[N,4] y) {
            a = Constant <value = float[4] {1.0, 2.0, 3.0, 4.0}> ()
            b = com.example.Mystery (a)
            y = Add (x, b)
        }"""
    )
    model, result = run_pass(proto, "fold-constants")
    assert "Mystery" in op_types(model)
    assert result.stats["skipped-custom-domain-nodes"] == 1
    assert not result.modified


def test_fold_constants_inside_subgraph():
    then_b = "then_g () => (float[N,4] t) { a = Constant <value = float[4] {1.0,2.0,3.0,4.0}> () b = Neg (a) t = Add (x, b) }"
    else_b = "else_g () => (float[N,4] e) { e = Neg (x) }"
    proto = _if_model(then_b, else_b)
    model, result = run_pass(proto, "fold-constants")
    assert result.modified
    assert op_types(model).count("Neg") == 1
    assert_same_outputs(proto, to_proto(model))


# ---------------------------------------------------------------- fold-batchnorm


def _conv_bn(
    shared_weight: bool = False, extra_use: bool = False, gemm: bool = False
) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    c = 6
    inits = [
        numpy_helper.from_array((rng.random(c) + 0.5).astype(np.float32), "scale"),
        numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), "bias_bn"),
        numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), "mean"),
        numpy_helper.from_array((rng.random(c) + 0.5).astype(np.float32), "var"),
        numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), "b"),
    ]
    if gemm:
        inits.append(numpy_helper.from_array(rng.standard_normal((4, c)).astype(np.float32), "w"))
        nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["t"])]
        x_shape, y_shape = ["N", 4], ["N", c]
    else:
        inits.append(
            numpy_helper.from_array(rng.standard_normal((c, 3, 3, 3)).astype(np.float32), "w")
        )
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["t"], pads=[1, 1, 1, 1])]
        x_shape, y_shape = ["N", 3, 5, 5], ["N", c, 5, 5]
    nodes.append(
        helper.make_node("BatchNormalization", ["t", "scale", "bias_bn", "mean", "var"], ["y"])
    )
    outputs = [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, y_shape)]
    if shared_weight:
        nodes.append(helper.make_node("Conv", ["x", "w"], ["z"], pads=[1, 1, 1, 1]))
        outputs.append(helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, y_shape))
    if extra_use:
        nodes.append(helper.make_node("Relu", ["t"], ["z"]))
        outputs.append(helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, y_shape))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x_shape)],
        outputs,
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(proto, full_check=True)
    return proto


@pytest.mark.parametrize("gemm", [False, True])
def test_fold_batchnorm_into_conv_and_gemm(gemm):
    proto = _conv_bn(gemm=gemm)
    model, result = run_pass(proto, "fold-batchnorm")
    assert result.stats["batchnorms-folded"] == 1
    assert "BatchNormalization" not in op_types(model)
    assert_same_outputs(proto, to_proto(model), rtol=1e-4, atol=1e-4)
    check_idempotent(model, "fold-batchnorm")


@pytest.mark.parametrize("case", ["shared_weight", "extra_use"])
def test_fold_batchnorm_refuses_shared_weight_or_used_conv_output(case):
    proto = _conv_bn(**{case: True})
    model, result = run_pass(proto, "fold-batchnorm")
    assert not result.modified
    assert result.stats["skipped-batchnorms-kept"] == 1
    assert_same_outputs(proto, to_proto(model))


def test_fold_batchnorm_without_producer_conv_is_kept():
    proto = model_from_text(
        f"""{HEADER}
        g (float[N,2,3,3] x) => (float[N,2,3,3] y) <float[2] s = {{1.0, 2.0}}, float[2] b = {{0.0, 1.0}},
                                                   float[2] m = {{0.5, 0.5}}, float[2] v = {{1.0, 4.0}}> {{
            r = Relu (x)
            y = BatchNormalization (r, s, b, m, v)
        }}"""
    )
    model, result = run_pass(proto, "fold-batchnorm")
    assert not result.modified


# ---------------------------------------------------------------- eliminate-dead-code


def test_dead_code_removed_everywhere():
    then_b = "then_g () => (float[N,4] t) { dead = Neg (x) t = Relu (x) }"
    else_b = "else_g () => (float[N,4] e) { e = Neg (x) }"
    proto = _if_model(then_b, else_b)
    extra = onnx.parser.parse_graph(
        "g2 (float[N,4] x) => (float[N,4] z) <float[4] unused = {1.0,2.0,3.0,4.0}> { z = Sigmoid (x) }"
    )
    proto.graph.node.append(extra.node[0])
    proto.graph.initializer.append(extra.initializer[0])
    model, result = run_pass(proto, "eliminate-dead-code")
    assert result.stats["nodes-removed"] == 2  # Sigmoid in main graph, Neg in the branch
    assert result.stats["initializers-removed"] == 1
    assert sorted(op_types(model)) == ["If", "Neg", "Relu"]
    assert_same_outputs(proto, to_proto(model))
    check_idempotent(model, "eliminate-dead-code")


def test_dead_code_keeps_what_outputs_need():
    proto = model_from_text(
        f"{HEADER} g (float[N,4] x) => (float[N,4] y) {{ r = Relu (x) y = Neg (r) }}"
    )
    model, result = run_pass(proto, "eliminate-dead-code")
    assert not result.modified


# ---------------------------------------------------------------- sort-topologically


def test_sort_topologically_repairs_order():
    proto = model_from_text(
        f"{HEADER} g (float[N,4] x) => (float[N,4] y) {{ r = Relu (x) n = Neg (r) y = Abs (n) }}"
    )
    nodes = list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(reversed(nodes))
    model = ir.serde.deserialize_model(proto)
    from nnopt_graph.pipeline.base import PassContext
    from nnopt_graph.pipeline.grammar import PassSpec

    result = PassSpec.create("sort-topologically").instantiate().run(model, PassContext())
    assert result.modified
    assert op_types(model) == ["Relu", "Neg", "Abs"]
    to_proto(model)
    check_idempotent(model, "sort-topologically")


def test_sort_topologically_keeps_sorted_graph():
    proto = model_from_text(
        f"{HEADER} g (float[N,4] x) => (float[N,4] y) {{ r = Relu (x) y = Neg (r) }}"
    )
    _, result = run_pass(proto, "sort-topologically")
    assert not result.modified


# ---------------------------------------------------------------- infer-shapes


def test_infer_shapes_annotates_and_is_idempotent():
    proto = model_from_text(
        f"{HEADER} g (float[N,4] x) => (float[N,4] y) {{ r = Relu (x) y = Neg (r) }}"
    )
    model, result = run_pass(proto, "infer-shapes")
    assert result.modified
    relu_out = model.graph.node(0).outputs[0]
    assert relu_out.shape is not None and relu_out.shape[1] == 4
    check_idempotent(model, "infer-shapes")


def test_infer_shapes_tolerates_custom_ops():
    proto = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>
        g (float[N,4] x) => (float[N,4] y) { b = com.example.Mystery (x) y = Relu (b) }"""
    )
    model, result = run_pass(proto, "infer-shapes")
    assert op_types(model) == ["Mystery", "Relu"]


# ---------------------------------------------------------------- traceable output


def _named_conv_bn(gemm: bool = False) -> onnx.ModelProto:
    proto = _conv_bn(gemm=gemm)
    proto.graph.node[0].name = "exporter/host"
    proto.graph.node[1].name = "exporter/bn"
    return proto


@pytest.mark.parametrize("gemm", [False, True])
def test_fold_batchnorm_keeps_the_host_node_name(gemm):
    model, result = run_pass(_named_conv_bn(gemm), "fold-batchnorm")
    assert result.stats["batchnorms-folded"] == 1
    names = [n.name for n in model.graph]
    assert names == ["exporter/host"], names
    assert [o.name for n in model.graph for o in n.outputs] == ["y"]


def test_fold_batchnorm_unnamed_host_gets_no_borrowed_name():
    proto = _conv_bn()
    proto.graph.node[1].name = "exporter/bn"  # the Conv has no name
    model, _ = run_pass(proto, "fold-batchnorm")
    assert all(n.name != "exporter/bn" for n in model.graph)


def test_kept_batchnorm_keeps_both_names():
    proto = _conv_bn(extra_use=True)
    proto.graph.node[0].name, proto.graph.node[1].name = "c", "bn"
    model, result = run_pass(proto, "fold-batchnorm")
    assert not result.modified
    assert {"c", "bn"} <= {n.name for n in model.graph}


def _value_info_names(proto: onnx.ModelProto) -> set[str]:
    """value_info names of the main graph, less initializers (io.save writes none for them)."""
    inits = {i.name for i in proto.graph.initializer}
    return {v.name for v in proto.graph.value_info} - inits


def _unannotated_shape_model() -> onnx.ModelProto:
    return model_from_text(
        f"""{HEADER}
        g (float[N,4] x) => (float[N,4] y) <float[4] w = {{1.0, 2.0, 3.0, 4.0}}> {{
            s = Shape (x)
            a = Relu (x)
            b = Mul (a, w)
            y = Add (b, x)
        }}"""
    )


def test_fold_constants_adds_no_value_info():
    proto = _unannotated_shape_model()
    model, _ = run_pass(proto, "fold-constants")
    assert _value_info_names(to_proto(model)) == set()


def test_fold_constants_keeps_value_info_the_input_had():
    proto = _unannotated_shape_model()
    proto.graph.value_info.append(
        helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, ["N", 4])
    )
    model, _ = run_pass(proto, "fold-constants")
    out = to_proto(model)
    kept = {v.name: v for v in out.graph.value_info}
    assert _value_info_names(out) == {"a"}
    dims = kept["a"].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and dims[1].dim_value == 4


def test_infer_shapes_still_annotates_on_request():
    model, result = run_pass(_unannotated_shape_model(), "infer-shapes")
    assert result.modified
    assert {"a", "b"} <= _value_info_names(to_proto(model))


def test_fold_constants_inlined_branch_keeps_node_names():
    then_b = "then_g () => (float[N,4] t) { t = Relu (x) }"
    else_b = "else_g () => (float[N,4] e) { e = Neg (x) }"
    proto = model_from_text(
        f"""{HEADER}
        g (float[N,4] x) => (float[N,4] y) {{
            c = Constant <value = bool {{1}}> ()
            y = If (c) <then_branch = {then_b}, else_branch = {else_b}>
        }}"""
    )
    for node in proto.graph.node[1].attribute[0].g.node:
        node.name = "exporter/relu"
    model, result = run_pass(proto, "fold-constants")
    assert result.modified and op_types(model) == ["Relu"]
    assert [n.name for n in model.graph] == ["exporter/relu"]


def test_inlined_name_that_collides_is_not_restored():
    from nnopt_graph.passes.cleanup.simplify import _node_names, _restore_node_names

    model = ir.from_onnx_text(
        f"""{HEADER}
        g (float[N,4] x) => (float[N,4] y) {{ a = Relu (x) y = Neg (a) }}"""
    )
    first, second = list(model.graph)
    first.name, second.name = "one", "two"
    saved = _node_names(model)
    first.name = "prefix/one"
    second.name = "one"  # another node took the old name meanwhile
    assert _restore_node_names(saved) == 1  # only the second gets its name back
    assert (first.name, second.name) == ("prefix/one", "two")


def test_default_pipeline_output_has_no_new_value_info():
    from nnopt_graph.pipeline.grammar import Pipeline
    from nnopt_graph.pipeline.manager import PassManager

    proto = _unannotated_shape_model()
    model = ir.serde.deserialize_model(proto)
    PassManager(Pipeline.parse("default")).run(model)
    assert _value_info_names(to_proto(model)) == set()


def test_saved_file_has_no_value_info_for_initializers(tmp_path):
    from nnopt_graph.core.io import save

    model = ir.serde.deserialize_model(_unannotated_shape_model())
    assert model.graph.initializers["w"].type is not None
    save(model, tmp_path / "out.onnx")
    assert [v.name for v in onnx.load(tmp_path / "out.onnx").graph.value_info] == []
    assert model.graph.initializers["w"].type is not None  # the IR keeps it


def test_saved_file_has_no_typeless_value_info_for_folded_constants(tmp_path):
    """onnxscript's folder tags what it folds; the tag alone made a value_info with no type."""
    from nnopt_graph.core.io import save
    from nnopt_graph.pipeline.grammar import Pipeline
    from nnopt_graph.pipeline.manager import PassManager

    text = """<ir_version: 8, opset_import: ["" : 17]>
    g (float[2,3] x) => (float[2,3] y) {
        two = Constant <value = float[1] {2.0}> ()
        sq = Sqrt (two)
        y = Mul (x, sq)
    }"""
    model = ir.from_onnx_text(text)
    PassManager(Pipeline.parse("default")).run(model)
    (folded,) = model.graph.initializers.values()
    meta = dict(folded.metadata_props)
    assert meta, "the folder tagged the constant: the case this test is about"
    save(model, tmp_path / "out.onnx")
    assert [v.name for v in onnx.load(tmp_path / "out.onnx").graph.value_info] == []
    assert dict(folded.metadata_props) == meta  # the IR keeps the tag


def test_saved_file_keeps_value_info_of_intermediates(tmp_path):
    from nnopt_graph.core.io import save

    proto = _unannotated_shape_model()
    proto.graph.value_info.append(
        helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, ["N", 4])
    )
    save(ir.serde.deserialize_model(proto), tmp_path / "out.onnx")
    assert [v.name for v in onnx.load(tmp_path / "out.onnx").graph.value_info] == ["a"]


def test_fold_constants_lifts_the_constants_it_writes():
    """A folded Shape becomes an initializer, not a Constant node: a second run has nothing to do."""
    import onnx_ir as ir

    from nnopt_graph.pipeline.grammar import Pipeline
    from nnopt_graph.pipeline.manager import PassManager

    text = """<ir_version: 8, opset_import: ["" : 17]>
    g (float[2,3] x) => (float[2,3] y) { s = Shape (x) z = ConstantOfShape (s) y = Add (x, z) }"""
    model = ir.from_onnx_text(text)
    (record,) = PassManager(Pipeline.parse("fold-constants")).run(model)
    assert record.modified and record.stats["constants-lifted"] >= 1
    assert [n.op_type for n in model.graph if n.op_type == "Constant"] == []
    (again,) = PassManager(Pipeline.parse("fold-constants")).run(model)
    assert not again.modified, again.stats


def test_fold_constants_leaves_constants_it_did_not_write():
    import onnx_ir as ir

    from nnopt_graph.pipeline.grammar import Pipeline
    from nnopt_graph.pipeline.manager import PassManager

    text = """<ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] y) { c = Constant <value = float[2] {1.0, 2.0}> () y = Add (x, c) }"""
    model = ir.from_onnx_text(text)
    (record,) = PassManager(Pipeline.parse("fold-constants")).run(model)
    assert record.stats["constants-lifted"] == 0
    assert [n.op_type for n in model.graph] == ["Constant", "Add"]

"""The cheap screens that let cleanup passes skip their work: each must never skip a change.

A screen says "nothing to do" only where the full pass (or the library it calls) would
change nothing; these tests hold each screen against that pass on inline models (half
of them cases the screen must let through) and on the zoo.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from passes_util import model_from_text, op_types, run_pass

from models import zoo
from nnopt_graph.analysis.walk import STANDARD_DOMAINS, all_nodes
from nnopt_graph.passes.cleanup import screens

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def _folder_modifies(proto: onnx.ModelProto) -> bool:
    """Whether onnxscript's folder, run as fold-constants runs it, changes the model."""
    import onnxscript.optimizer

    model = ir.serde.deserialize_model(proto)
    return onnxscript.optimizer.fold_constants(model).modified


def _screen(proto: onnx.ModelProto) -> bool:
    model = ir.serde.deserialize_model(proto)
    nodes = list(all_nodes(model))
    custom = {id(n) for n in nodes if n.domain not in STANDARD_DOMAINS}
    return screens.folder_may_act(nodes, custom)


# ---------------------------------------------------------------- fold-constants


def test_folder_ops_are_onnxscripts_evaluators_but_add():
    from onnxscript.optimizer._constant_folding import registry

    registered = {op for domain, op in registry.op_evaluators if domain == ""}
    assert {domain for domain, _ in registry.op_evaluators} == {""}
    assert registered - {"Add"} == set(screens.FOLDER_OPS)


@pytest.mark.parametrize(
    "body",
    [
        "c = Mul (w, w) y = Add (x, c)",  # every input constant
        "s = Shape (x) y = Identity (x)",  # evaluated ops
        "r = Reshape (x, t) y = Relu (r)",  # Reshape to its own shape: an Identity
        # Neg's input is constant only once the folder has read the Constant (no inputs)
        "k = Constant <value = float[4] {1.0, 2.0, 3.0, 4.0}> () n = Neg (k) y = Add (x, n)",
    ],
)
def test_fold_screen_lets_through_what_folds(body):
    proto = model_from_text(
        f"""{HEADER}
        g (float[2,4] x) => (float[2,4] y)
        <float[4] w = {{1.0, 2.0, 3.0, 4.0}}, int64[2] t = {{2, 4}}> {{ {body} }}"""
    )
    assert _screen(proto)
    assert _folder_modifies(proto)


@pytest.mark.parametrize(
    "body",
    [
        "a = Add (x, w) m = Mul (a, w) y = Relu (m)",  # the benchmark chains' ops
        "a = Add (x, x) y = Sub (a, w)",
        "y = MatMul (x, v)",
    ],
)
def test_fold_screen_skips_what_cannot_fold(body):
    proto = model_from_text(
        f"""{HEADER}
        g (float[2,4] x) => (float[2,4] y)
        <float[4] w = {{1.0, 2.0, 3.0, 4.0}}, float[4,4] v = {{1.0, 0.0, 0.0, 0.0, 0.0, 1.0,
        0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0}}> {{ {body} }}"""
    )
    assert not _screen(proto)
    assert not _folder_modifies(proto)
    model, result = run_pass(proto, "fold-constants")
    assert not result.modified
    assert op_types(model) == op_types(proto)


def test_fold_screen_sees_subgraphs():
    proto = model_from_text(
        f"""{HEADER}
        g (float[N,4] x, bool c) => (float[N,4] y) <float[4] w = {{1.0, 2.0, 3.0, 4.0}}> {{
            y = If (c) <then_branch = t () => (float[N,4] a) {{ n = Neg (w) a = Mul (x, n) }},
                        else_branch = e () => (float[N,4] b) {{ b = Relu (x) }}>
        }}"""
    )
    assert _screen(proto)  # If has an evaluator; Neg(w) folds inside the branch too
    model, result = run_pass(proto, "fold-constants")
    assert result.modified
    assert "Neg" not in op_types(model)


def test_custom_domain_constant_node_does_not_open_the_screen():
    proto = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>
        g (float[N,4] x) => (float[N,4] y) <float[4] w = {1.0, 2.0, 3.0, 4.0}> {
            b = com.example.Mystery (w)
            y = Mul (x, b)
        }"""
    )
    assert not _screen(proto)
    _, result = run_pass(proto, "fold-constants")
    assert not result.modified and result.stats["skipped-custom-domain-nodes"] == 1


@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_fold_screen_never_skips_a_zoo_change(name):
    proto = zoo.ZOO[name]()
    if not _screen(proto):
        assert not _folder_modifies(proto)


def test_default_pipeline_on_a_chain_imports_no_onnxscript(tmp_path):
    src = tmp_path / "chain.onnx"
    onnx.save(
        model_from_text(
            f"""{HEADER}
            g (float[N,4] x) => (float[N,4] y) <float[4] w = {{1.0, 2.0, 3.0, 4.0}}> {{
                a = Add (x, w) m = Mul (a, w) y = Relu (m)
            }}"""
        ),
        src,
    )
    code = (
        "import sys; from nnopt_graph import optimize; "
        f"optimize({str(src)!r}, {str(tmp_path / 'out.onnx')!r}); "
        "print(sorted(m for m in sys.modules if m.startswith('onnxscript')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().splitlines()[-1] == "[]"


# ---------------------------------------------------------------- sort-topologically


def _sorted_by_onnx_ir(proto: onnx.ModelProto) -> bytes:
    import onnx_ir.passes.common as ir_passes

    model = ir.serde.deserialize_model(proto)
    ir_passes.TopologicalSortPass()(model)
    return ir.serde.serialize_model(model).SerializeToString()


def _after_pass(proto: onnx.ModelProto, name: str) -> bytes:
    model, _ = run_pass(proto, name)
    return ir.serde.serialize_model(model).SerializeToString()


def test_sort_screen_skips_a_sorted_graph():
    proto = model_from_text(
        f"""{HEADER}
        g (float[N,4] x) => (float[N,4] y) <float[4] w = {{1.0, 2.0, 3.0, 4.0}}> {{
            a = Add (x, w) b = Relu (x) y = Mul (a, b)
        }}"""
    )
    assert screens.already_sorted(ir.serde.deserialize_model(proto))
    assert _after_pass(proto, "sort-topologically") == _sorted_by_onnx_ir(proto)


def test_sort_screen_lets_through_a_node_before_its_producer():
    proto = model_from_text(
        f"{HEADER} g (float[N,4] x) => (float[N,4] y) {{ r = Relu (x) n = Neg (r) y = Abs (n) }}"
    )
    nodes = list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend([nodes[0], nodes[2], nodes[1]])
    model = ir.serde.deserialize_model(proto)
    assert not screens.already_sorted(model)
    _, result = run_pass(proto, "sort-topologically")
    assert result.modified and result.stats["nodes-moved"] == 2


def test_sort_screen_lets_through_subgraphs_and_unnamed_nodes():
    proto = model_from_text(
        f"""{HEADER}
        g (float[N,4] x, bool c) => (float[N,4] y) {{
            y = If (c) <then_branch = t () => (float[N,4] a) {{ a = Neg (x) }},
                        else_branch = e () => (float[N,4] b) {{ b = Relu (x) }}>
        }}"""
    )
    assert not screens.already_sorted(ir.serde.deserialize_model(proto))
    flat = model_from_text(f"{HEADER} g (float[N,4] x) => (float[N,4] y) {{ y = Relu (x) }}")
    model = ir.serde.deserialize_model(flat)
    assert screens.already_sorted(model)
    next(iter(model.graph)).name = None  # onnx-ir's sort would name it
    assert not screens.already_sorted(model)


@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_sort_pass_output_is_onnx_irs_on_the_zoo(name):
    proto = zoo.ZOO[name]()
    assert _after_pass(proto, "sort-topologically") == _sorted_by_onnx_ir(proto)


# ---------------------------------------------------------------- eliminate-dead-code


def _unused_removed_by_onnx_ir(proto: onnx.ModelProto) -> bytes:
    import onnx_ir.passes.common as ir_passes

    model = ir.serde.deserialize_model(proto)
    ir_passes.RemoveUnusedNodesPass()(model)
    return ir.serde.serialize_model(model).SerializeToString()


def _dead_code_screen(proto: onnx.ModelProto) -> bool:
    from nnopt_graph.analysis.walk import all_graphs

    model = ir.serde.deserialize_model(proto)
    return screens.nothing_unused(model, list(all_graphs(model)))


def test_dead_code_screen_skips_a_graph_where_everything_is_used():
    proto = model_from_text(
        f"""{HEADER}
        g (float[N,4] x) => (float[N,4] y, float[N,4] z) <float[4] w = {{1.0, 2.0, 3.0, 4.0}}> {{
            a = Add (x, w) y = Relu (a) z = Neg (a)
        }}"""
    )
    assert _dead_code_screen(proto)
    before = ir.serde.deserialize_model(proto)
    assert _unused_removed_by_onnx_ir(proto) == ir.serde.serialize_model(before).SerializeToString()
    _, result = run_pass(proto, "eliminate-dead-code")
    assert not result.modified


@pytest.mark.parametrize(
    "body",
    [
        "a = Add (x, w) dead = Neg (a) y = Relu (a)",  # a node nothing reads
        "y = Relu (x)",  # an initializer nothing reads
        "a, mask = Dropout (x) y = Relu (a)",  # an unused optional output
        "y = BatchNormalization <training_mode = 0> (x, s, b, b, s)",  # its attribute goes
    ],
)
def test_dead_code_screen_lets_through_what_onnx_ir_changes(body):
    proto = model_from_text(
        f"""{HEADER}
        g (float[2,4] x) => (float[2,4] y)
        <float[4] w = {{1.0, 2.0, 3.0, 4.0}}, float[4] s = {{1.0, 1.0, 1.0, 1.0}},
         float[4] b = {{0.0, 0.0, 0.0, 0.0}}> {{ {body} }}"""
    )
    assert not _dead_code_screen(proto)
    before = ir.serde.serialize_model(ir.serde.deserialize_model(proto)).SerializeToString()
    assert _unused_removed_by_onnx_ir(proto) != before


def test_dead_code_screen_lets_through_a_trailing_empty_input():
    proto = model_from_text(f"{HEADER} g (float[2,4] x) => (float[2,4] y) {{ y = Clip (x) }}")
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros((), np.float32), "lo"))
    proto.graph.node[0].input[:] = ["x", "lo", ""]
    onnx.checker.check_model(proto, full_check=True)
    assert not _dead_code_screen(proto)
    model, _ = run_pass(proto, "eliminate-dead-code")
    assert len(next(iter(model.graph)).inputs) == 2


@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_dead_code_screen_never_skips_a_zoo_change(name):
    proto = zoo.ZOO[name]()
    if _dead_code_screen(proto):
        before = ir.serde.serialize_model(ir.serde.deserialize_model(proto)).SerializeToString()
        assert _unused_removed_by_onnx_ir(proto) == before

"""Channel dependency groups: coupling through each op family, freezing, removal, subgraphs."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import onnx_ir.passes.common as ir_passes
import pytest
from channel_oracle import masked_copy, run, with_outputs

from nnopt_graph.analysis.channels import (
    ROLE_IN,
    ROLE_OUT,
    analyze_channels,
    apply_channel_removal,
    find_channel_groups,
)
from nnopt_graph.core.constants import const_array

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def _weights(**shapes: list[int]) -> str:
    """Initializers in ONNX text with seeded values, e.g. w1=[4,3,3,3]."""
    rng = np.random.default_rng(0)
    parts = []
    for name, shape in shapes.items():
        values = ", ".join(f"{v:.4f}" for v in rng.standard_normal(int(np.prod(shape))))
        dims = ",".join(str(d) for d in shape)
        parts.append(f"float[{dims}] {name} = {{{values}}}")
    return ", ".join(parts)


def _model(signature: str, inits: str, body: str, opset: int = 17) -> ir.Model:
    header = HEADER.replace("17", str(opset))
    text = f"{header}\ng {signature} <{inits}> {{\n{body}\n}}"
    proto = onnx.parser.parse_model(text)
    onnx.checker.check_model(proto, full_check=True)
    return ir.serde.deserialize_model(proto)


def _names(group) -> set[tuple[str, int]]:
    return {s.key for s in group.spaces}


def _check_removal(model: ir.Model, removals, feeds, rtol=1e-4):
    """Apply removals; the result must pass full_check and match the masked original."""
    original = model.clone()
    kept = {}
    for group, keep in removals:
        kept.update(apply_channel_removal(model, group, keep).kept)
    ir_passes.ShapeInferencePass(strict_mode=False)(model)
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto, full_check=True)
    masked = masked_copy(original, removals)
    names = sorted({k[0] for k in kept if k[0] in {v.name for n in model.graph for v in n.outputs}})
    got = run(with_outputs(model, names), feeds)
    want = run(with_outputs(masked, names), feeds)
    for out in model.graph.outputs:
        np.testing.assert_allclose(got[out.name], want[out.name], rtol=rtol, atol=1e-5)
    for (name, axis), idx in kept.items():
        if name in got:
            ref = np.take(want[name], idx, axis=axis)
            np.testing.assert_allclose(got[name], ref, rtol=rtol, atol=1e-5)
    return model


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


CHAIN = (
    "(float[N,3,6,6] x) => (float[N,2,6,6] y)",
    _weights(w1=[4, 3, 3, 3], b1=[4], w2=[2, 4, 1, 1]),
    """a = Conv <pads = [1,1,1,1]> (x, w1, b1)
       r = Relu (a)
       y = Conv (r, w2)""",
)


# ---------------------------------------------------------------- positive cases


def test_chain_group_couples_producer_bias_activation_and_consumer():
    model = _model(*CHAIN)
    groups = find_channel_groups(model)
    prunable = [g for g in groups if not g.frozen]
    assert len(prunable) == 1
    g = prunable[0]
    assert g.num_units == 4 and g.unit_width == 1
    assert {("w1", 0), ("b1", 0), ("a", 1), ("r", 1), ("w2", 1)} <= _names(g)
    assert [s.key for s in g.sources] == [("w1", 0)]
    assert [s.key for s in g.sinks] == [("w2", 1)]
    assert g.primary.key == ("a", 1)
    # The output group (w2's output channels) is frozen by the graph output.
    frozen = [grp for grp in groups if grp.frozen]
    assert len(frozen) == 1 and frozen[0].reason == "graph output"
    _check_removal(model, [(g, np.array([0, 2]))], {"x": _x([2, 3, 6, 6])})
    assert const_array(model.graph.initializers["w1"]).shape == (2, 3, 3, 3)
    assert const_array(model.graph.initializers["w2"]).shape == (2, 2, 1, 1)


def test_batchnorm_parameters_are_sliced():
    model = _model(
        "(float[N,3,4,4] x) => (float[N,2,4,4] y)",
        _weights(w1=[4, 3, 1, 1], s=[4], bb=[4], m=[4], w2=[2, 4, 1, 1])
        + ", float[4] v = {1.0, 2.0, 0.5, 1.5}",
        """a = Conv (x, w1)
           n = BatchNormalization (a, s, bb, m, v)
           y = Conv (n, w2)""",
    )
    g = [g for g in find_channel_groups(model) if not g.frozen][0]
    assert {("s", 0), ("bb", 0), ("m", 0), ("v", 0)} <= _names(g)
    assert g.space(model.graph.initializers["s"], 0).has_role("bn-scale")
    _check_removal(model, [(g, np.array([1, 3]))], {"x": _x([2, 3, 4, 4])})
    assert const_array(model.graph.initializers["v"]).tolist() == [2.0, 1.5]


def test_residual_add_couples_two_convs_into_one_group():
    model = _model(
        "(float[N,3,4,4] x) => (float[N,2,4,4] y)",
        _weights(w1=[4, 3, 1, 1], w2=[4, 4, 1, 1], w3=[2, 4, 1, 1]),
        """a = Conv (x, w1)
           r = Relu (a)
           b = Conv (r, w2)
           s = Add (a, b)
           y = Conv (s, w3)""",
    )
    groups = [g for g in find_channel_groups(model) if not g.frozen]
    # w1's outputs, w2's outputs and w3's inputs are one group of 4 units.
    residual = [g for g in groups if ("s", 1) in _names(g)]
    assert len(residual) == 1
    g = residual[0]
    assert g.num_units == 4
    assert {("w1", 0), ("w2", 0), ("w3", 1), ("w2", 1)} <= _names(g)
    assert len(g.sources) == 2
    _check_removal(model, [(g, np.array([0, 3]))], {"x": _x([2, 3, 4, 4])})


def test_concat_maps_each_input_at_its_offset():
    model = _model(
        "(float[N,3,4,4] x) => (float[N,2,4,4] y)",
        _weights(wa=[4, 3, 1, 1], wb=[6, 3, 1, 1], wc=[2, 10, 1, 1]),
        """a = Conv (x, wa)
           b = Conv (x, wb)
           c = Concat <axis = 1> (a, b)
           y = Conv (c, wc)""",
    )
    groups = [g for g in find_channel_groups(model) if not g.frozen]
    assert len(groups) == 1
    g = groups[0]
    assert g.num_units == 10
    units_a = g.space(model.graph.node(0).outputs[0], 1).unit_of
    units_b = g.space(model.graph.node(1).outputs[0], 1).unit_of
    units_c = g.space(model.graph.node(2).outputs[0], 1).unit_of
    assert units_c[:4].tolist() == units_a.tolist()
    assert units_c[4:].tolist() == units_b.tolist()
    keep = np.setdiff1d(np.arange(10), [units_a[1], units_b[0], units_b[5]])
    _check_removal(model, [(g, keep)], {"x": _x([2, 3, 4, 4])})
    assert const_array(model.graph.initializers["wa"]).shape[0] == 3
    assert const_array(model.graph.initializers["wb"]).shape[0] == 4
    assert const_array(model.graph.initializers["wc"]).shape[1] == 7


def test_split_sizes_are_rewritten():
    model = _model(
        "(float[N,3,4,4] x) => (float[N,2,4,4] y)",
        _weights(w1=[8, 3, 1, 1], wa=[2, 3, 1, 1], wb=[2, 5, 1, 1]) + ", int64[2] sp = {3, 5}",
        """a = Conv (x, w1)
           p, q = Split <axis = 1> (a, sp)
           u = Conv (p, wa)
           v = Conv (q, wb)
           y = Add (u, v)""",
    )
    g = [g for g in find_channel_groups(model) if ("a", 1) in _names(g)][0]
    assert g.num_units == 8 and [e.kind for e in g.edits] == ["split"]
    _check_removal(model, [(g, np.array([0, 1, 4, 6]))], {"x": _x([2, 3, 4, 4])})
    split = [n for n in model.graph if n.op_type == "Split"][0]
    assert const_array(split.inputs[1]).tolist() == [2, 2]


def test_slice_on_channel_axis_moves_its_bounds():
    model = _model(
        "(float[N,3,4,4] x) => (float[N,2,4,4] y)",
        _weights(w1=[8, 3, 1, 1], w2=[2, 4, 1, 1])
        + ", int64[1] st = {2}, int64[1] en = {6}, int64[1] ax = {1}",
        """a = Conv (x, w1)
           s = Slice (a, st, en, ax)
           y = Conv (s, w2)""",
    )
    g = [g for g in find_channel_groups(model) if ("a", 1) in _names(g)][0]
    assert g.num_units == 8
    # Keep channels 0, 3, 5, 7: the slice [2:6) now covers new indices [1:3).
    _check_removal(model, [(g, np.array([0, 3, 5, 7]))], {"x": _x([2, 3, 4, 4])})
    node = [n for n in model.graph if n.op_type == "Slice"][0]
    assert const_array(node.inputs[1]).tolist() == [1]
    assert const_array(node.inputs[2]).tolist() == [3]


def test_depthwise_conv_is_coupled_and_group_rewritten():
    model = _model(
        "(float[N,3,4,4] x) => (float[N,2,4,4] y)",
        _weights(w1=[6, 3, 1, 1], wd=[6, 1, 3, 3], bd=[6], w2=[2, 6, 1, 1]),
        """a = Conv (x, w1)
           d = Conv <group = 6, pads = [1,1,1,1]> (a, wd, bd)
           y = Conv (d, w2)""",
    )
    g = [g for g in find_channel_groups(model) if not g.frozen][0]
    assert g.num_units == 6 and ("wd", 0) in _names(g) and ("d", 1) in _names(g)
    _check_removal(model, [(g, np.array([1, 2, 5]))], {"x": _x([2, 3, 4, 4])})
    conv = [n for n in model.graph if n.op_type == "Conv"][1]
    assert conv.attributes["group"].as_int() == 3


def test_grouped_conv_keeps_group_structure():
    model = _model(
        "(float[N,3,4,4] x) => (float[N,2,4,4] y)",
        _weights(w1=[8, 3, 1, 1], wg=[8, 4, 1, 1], w2=[2, 8, 1, 1]),
        """a = Conv (x, w1)
           r = Relu (a)
           c = Conv <group = 2> (r, wg)
           y = Conv (c, w2)""",
    )
    g = [g for g in find_channel_groups(model) if not g.frozen][0]
    # A unit is a whole group: 4 input and 4 output channels.
    assert g.num_units == 2 and g.unit_width == 4
    _check_removal(model, [(g, np.array([1]))], {"x": _x([2, 3, 4, 4])})
    conv = [n for n in model.graph if n.op_type == "Conv"][1]
    assert conv.attributes["group"].as_int() == 1
    assert const_array(model.graph.initializers["wg"]).shape == (4, 4, 1, 1)


def test_flatten_into_gemm_removes_blocks():
    model = _model(
        "(float[N,3,2,2] x) => (float[N,3] y)",
        _weights(w1=[4, 3, 1, 1], wf=[3, 16], bf=[3]),
        """a = Conv (x, w1)
           f = Flatten <axis = 1> (a)
           y = Gemm <transB = 1> (f, wf, bf)""",
    )
    g = [g for g in find_channel_groups(model) if not g.frozen][0]
    assert g.num_units == 4
    assert (
        g.space(model.graph.node(1).outputs[0], 1).unit_of.tolist()
        == np.repeat(np.arange(4), 4).tolist()
    )
    _check_removal(model, [(g, np.array([0, 3]))], {"x": _x([2, 3, 2, 2])})
    assert const_array(model.graph.initializers["wf"]).shape == (3, 8)


def test_transpose_maps_channel_axis_to_matmul_rows():
    model = _model(
        "(float[N,3,4,4] x) => (float[N,4,4,5] y)",
        _weights(w1=[6, 3, 1, 1], wm=[6, 5]),
        """a = Conv (x, w1)
           t = Transpose <perm = [0,2,3,1]> (a)
           y = MatMul (t, wm)""",
    )
    g = [g for g in find_channel_groups(model) if not g.frozen][0]
    assert {("t", 3), ("wm", 0)} <= _names(g)
    assert g.space(model.graph.initializers["wm"], 0).has_role(ROLE_IN)
    _check_removal(model, [(g, np.array([0, 1, 4]))], {"x": _x([2, 3, 4, 4])})


def test_per_channel_constant_is_sliced_and_scalar_left_alone():
    model = _model(
        "(float[N,3,4,4] x) => (float[N,2,4,4] y)",
        _weights(w1=[4, 3, 1, 1], k=[4, 1, 1], w2=[2, 4, 1, 1]) + ", float two = {2.0}",
        """a = Conv (x, w1)
           m = Mul (a, k)
           d = Div (m, two)
           y = Conv (d, w2)""",
    )
    g = [g for g in find_channel_groups(model) if not g.frozen][0]
    assert ("k", 0) in _names(g) and ("two", 0) not in _names(g)
    _check_removal(model, [(g, np.array([2, 3]))], {"x": _x([2, 3, 4, 4])})
    assert const_array(model.graph.initializers["k"]).shape == (2, 1, 1)


def _attention(heads: int = 2, head_dim: int = 4) -> ir.Model:
    hidden = heads * head_dim
    return _model(
        f"(float[N,S,{hidden}] x) => (float[N,S,{hidden}] y)",
        _weights(
            wq=[hidden, hidden],
            wk=[hidden, hidden],
            wv=[hidden, hidden],
            bq=[hidden],
            wo=[hidden, hidden],
        )
        + f", int64[4] split = {{0, 0, {heads}, {head_dim}}}, int64[3] merge = {{0, 0, {hidden}}}",
        """q0 = MatMul (x, wq)
           q1 = Add (q0, bq)
           q2 = Reshape (q1, split)
           q = Transpose <perm = [0,2,1,3]> (q2)
           k0 = MatMul (x, wk)
           k1 = Reshape (k0, split)
           k = Transpose <perm = [0,2,3,1]> (k1)
           v0 = MatMul (x, wv)
           v1 = Reshape (v0, split)
           v = Transpose <perm = [0,2,1,3]> (v1)
           s = MatMul (q, k)
           p = Softmax <axis = -1> (s)
           c = MatMul (p, v)
           c1 = Transpose <perm = [0,2,1,3]> (c)
           c2 = Reshape (c1, merge)
           y = MatMul (c2, wo)""",
    )


def test_attention_heads_are_units_and_shape_constants_follow():
    model = _attention(heads=3, head_dim=4)
    analysis = analyze_channels(model, {"x": [2, 5, 12]})
    heads = [g for g in analysis.groups if ("q", 1) in _names(g)]
    assert len(heads) == 1
    g = heads[0]
    assert g.num_units == 3 and g.unit_width == 4 and not g.frozen
    assert {("wq", 1), ("wk", 1), ("wv", 1), ("wo", 0), ("bq", 0)} <= _names(g)
    assert sorted(e.kind for e in g.edits) == ["shape-entry"] * 4
    _check_removal(model, [(g, np.array([0, 2]))], {"x": _x([2, 5, 12])})
    shapes = [const_array(n.inputs[1]).tolist() for n in model.graph if n.op_type == "Reshape"]
    assert [0, 0, 2, 4] in shapes and [0, 0, 8] in shapes
    assert const_array(model.graph.initializers["wo"]).shape == (8, 12)


def test_groups_inside_an_if_branch_are_found_and_pruned():
    branch = "then_g () => (float[N,2,4,4] t) { a = Conv (x, w1) r = Relu (a) t = Conv (r, w2) }"
    other = "else_g () => (float[N,2,4,4] e) { e = Conv (x, w3) }"
    model = _model(
        "(float[N,3,4,4] x, bool c) => (float[N,2,4,4] y)",
        _weights(w1=[4, 3, 1, 1], w2=[2, 4, 1, 1], w3=[2, 3, 1, 1]),
        f"y = If (c) <then_branch = {branch}, else_branch = {other}>",
    )
    groups = [g for g in find_channel_groups(model) if not g.frozen]
    assert len(groups) == 1 and groups[0].graph.name == "then_g"
    apply_channel_removal(model, groups[0], np.array([0, 1]))
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto, full_check=True)
    for flag in (True, False):
        out = run(proto, {"x": _x([1, 3, 4, 4]), "c": np.array(flag)})
        assert out["y"].shape == (1, 2, 4, 4)


def test_shared_weight_couples_both_convs():
    model = _model(
        "(float[N,3,4,4] x, float[N,3,4,4] z) => (float[N,2,4,4] y)",
        _weights(w=[4, 3, 1, 1], w2=[2, 4, 1, 1], w3=[2, 4, 1, 1]),
        """a = Conv (x, w)
           b = Conv (z, w)
           u = Conv (a, w2)
           v = Conv (b, w3)
           y = Add (u, v)""",
    )
    groups = [g for g in find_channel_groups(model) if ("w", 0) in _names(g)]
    assert len(groups) == 1
    g = groups[0]
    assert g.num_units == 4 and {("a", 1), ("b", 1), ("w2", 1), ("w3", 1)} <= _names(g)
    _check_removal(
        model, [(g, np.array([1, 2]))], {"x": _x([2, 3, 4, 4]), "z": _x([2, 3, 4, 4], 1)}
    )


# ---------------------------------------------------------------- negative cases


def test_graph_output_freezes_group():
    model = _model(
        "(float[N,3,4,4] x) => (float[N,4,4,4] r, float[N,2,4,4] y)",
        _weights(w1=[4, 3, 1, 1], w2=[2, 4, 1, 1]),
        """a = Conv (x, w1)
           r = Relu (a)
           y = Conv (r, w2)""",
    )
    g = [g for g in find_channel_groups(model) if ("w1", 0) in _names(g)][0]
    assert g.frozen and g.reason == "graph output"
    with pytest.raises(ValueError, match="frozen"):
        apply_channel_removal(model, g, np.array([0]))


def test_custom_domain_consumer_freezes_group():
    proto = onnx.parser.parse_model(
        f"""<ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>
        g (float[N,3,4,4] x) => (float[N,4,4,4] y) <{_weights(w1=[4, 3, 1, 1])}> {{
            a = Conv (x, w1)
            y = com.example.Mystery (a)
        }}"""
    )
    model = ir.serde.deserialize_model(proto)
    groups = find_channel_groups(model)
    assert len(groups) == 1 and groups[0].frozen
    assert groups[0].reason == "unsupported op: com.example::Mystery"


@pytest.mark.parametrize(
    ("node", "reason"),
    [
        ("m = DepthToSpace <blocksize = 2> (a)", "unsupported op: DepthToSpace"),
        ("m = Softmax <axis = 1> (a)", "normalized axis: Softmax"),
        ("m = ReduceMean <axes = [1]> (a)", "reduced axis: ReduceMean"),
        ("m = LRN <size = 3> (a)", "unsupported op: LRN"),
    ],
)
def test_ops_mixing_channels_freeze_group(node, reason):
    model = _model(
        "(float[N,3,4,4] x) => (float[N,?,?,?] y)",
        _weights(w1=[4, 3, 1, 1]),
        f"""a = Conv (x, w1)
            {node}
            y = Identity (m)""",
    )
    g = [g for g in find_channel_groups(model) if ("w1", 0) in _names(g)][0]
    assert g.frozen and reason in g.frozen_reasons


def test_layer_norm_over_channels_freezes_but_not_over_other_axes():
    def build(axis: int) -> ir.Model:
        return _model(
            "(float[N,S,4] x) => (float[N,S,3] y)",
            _weights(w1=[4, 6], s=[6], w2=[6, 3]),
            f"""a = MatMul (x, w1)
                n = LayerNormalization <axis = {axis}> (a, s)
                y = MatMul (n, w2)""",
        )

    frozen = [g for g in find_channel_groups(build(-1)) if ("w1", 1) in _names(g)][0]
    assert frozen.frozen and "normalized axis: LayerNormalization" in frozen.frozen_reasons
    # Normalizing over the sequence axis leaves the channels independent.
    model = _model(
        "(float[N,5,4] x) => (float[N,5,3] y)",
        _weights(w1=[4, 6], s=[5], w2=[6, 3]),
        """a = MatMul (x, w1)
           t = Transpose <perm = [0,2,1]> (a)
           n = LayerNormalization <axis = -1> (t, s)
           u = Transpose <perm = [0,2,1]> (n)
           y = MatMul (u, w2)""",
    )
    free = [g for g in find_channel_groups(model) if ("w1", 1) in _names(g)][0]
    assert not free.frozen and ("n", 1) in _names(free)
    _check_removal(model, [(free, np.array([0, 2, 5]))], {"x": _x([2, 5, 4])})


def test_computed_reshape_shape_freezes_group():
    proto = onnx.parser.parse_model(
        f"""{HEADER}
        g (float[N,3,2,2] x) => (float[N,3] y)
        <{_weights(w1=[4, 3, 1, 1], wf=[16, 3])}, int64[1] zero = {{0}}, int64[1] minus = {{-1}}> {{
            a = Conv (x, w1)
            s = Shape (x)
            n = Gather <axis = 0> (s, zero)
            shp = Concat <axis = 0> (n, minus)
            f = Reshape (a, shp)
            y = MatMul (f, wf)
        }}"""
    )
    model = ir.serde.deserialize_model(proto)
    g = [g for g in find_channel_groups(model) if ("w1", 0) in _names(g)][0]
    assert g.frozen and "computed shape: Reshape" in g.frozen_reasons


def test_value_read_inside_subgraph_freezes_group():
    branch = "then_g () => (float[N,4,4,4] t) { t = Relu (a) }"
    other = "else_g () => (float[N,4,4,4] e) { e = Neg (a) }"
    model = _model(
        "(float[N,3,4,4] x, bool c) => (float[N,2,4,4] y)",
        _weights(w1=[4, 3, 1, 1], w2=[2, 4, 1, 1]),
        f"""a = Conv (x, w1)
            b = If (c) <then_branch = {branch}, else_branch = {other}>
            y = Conv (b, w2)""",
    )
    analysis = analyze_channels(model)
    g = [g for g in analysis.groups if ("w1", 0) in _names(g)][0]
    assert g.frozen and g.reason.startswith("subgraph boundary")
    assert analysis.stats["frozen-spaces-subgraph-boundary"] >= 1


def test_graph_input_channels_are_frozen_and_computed_weight_is_no_source():
    model = _model(
        "(float[N,3,4,4] x, float[4,3,1,1] w) => (float[N,4,4,4] y)",
        "float[1] unused = {0.0}",
        "y = Conv (x, w)",
    )
    assert find_channel_groups(model) == []


def test_broadcast_constant_along_other_axis_does_not_couple():
    model = _model(
        "(float[N,3,4,4] x) => (float[N,2,4,4] y)",
        _weights(w1=[4, 3, 1, 1], k=[1, 4, 4], w2=[2, 4, 1, 1]),
        """a = Conv (x, w1)
           m = Add (a, k)
           y = Conv (m, w2)""",
    )
    g = [g for g in find_channel_groups(model) if not g.frozen][0]
    assert ("k", 0) not in _names(g) and g.num_units == 4
    _check_removal(model, [(g, np.array([0, 1]))], {"x": _x([2, 3, 4, 4])})
    assert const_array(model.graph.initializers["k"]).shape == (1, 4, 4)


def test_removal_refuses_to_empty_a_space():
    model = _model(*CHAIN)
    g = [g for g in find_channel_groups(model) if not g.frozen][0]
    with pytest.raises(ValueError, match="empty"):
        apply_channel_removal(model, g, np.array([], dtype=np.int64))


def test_keeping_every_unit_changes_nothing():
    model = _model(*CHAIN)
    before = ir.serde.serialize_model(model).SerializeToString()
    g = [g for g in find_channel_groups(model) if not g.frozen][0]
    result = apply_channel_removal(model, g, np.arange(g.num_units))
    assert result.params_removed == 0 and result.units_removed == 0
    assert ir.serde.serialize_model(model).SerializeToString() == before


def test_analysis_does_not_modify_the_model():
    model = _attention()
    before = ir.serde.serialize_model(model).SerializeToString()
    analyze_channels(model, {"x": [1, 3, 8]})
    assert ir.serde.serialize_model(model).SerializeToString() == before


def test_functions_are_counted_as_skipped():
    proto = onnx.parser.parse_model(
        f"""<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
        g (float[N,3,4,4] x) => (float[N,2,4,4] y) <{_weights(w1=[2, 3, 1, 1])}> {{
            a = Conv (x, w1)
            y = local.Twice (a)
        }}
        <domain: "local", opset_import: ["" : 17]>
        Twice (p) => (q) {{ q = Add (p, p) }}"""
    )
    analysis = analyze_channels(ir.serde.deserialize_model(proto))
    assert analysis.stats["skipped-functions"] == 1
    assert all(g.frozen for g in analysis.groups)


def test_roles_name_sources_and_sinks():
    model = _model(*CHAIN)
    g = [g for g in find_channel_groups(model) if not g.frozen][0]
    source = g.space(model.graph.initializers["w1"], 0)
    sink = g.space(model.graph.initializers["w2"], 1)
    assert [r.role for r in source.roles] == [ROLE_OUT]
    assert [r.role for r in sink.roles] == [ROLE_IN]
    assert sink.roles[0].data[0].name == "r"


def test_gemm_without_transpose_and_row_bias():
    model = _model(
        "(float[N,5] x) => (float[N,3] y)",
        _weights(w1=[5, 6], c1=[1, 6], w2=[6, 3]),
        """a = Gemm (x, w1, c1)
           r = Relu (a)
           y = Gemm (r, w2)""",
    )
    g = [g for g in find_channel_groups(model) if not g.frozen][0]
    assert {("w1", 1), ("c1", 1), ("w2", 0)} <= _names(g)
    _check_removal(model, [(g, np.array([0, 4, 5]))], {"x": _x([4, 5])})
    assert const_array(model.graph.initializers["c1"]).shape == (1, 3)


def test_weights_in_constant_nodes_are_sliced():
    proto = onnx.parser.parse_model(
        f"""{HEADER}
        g (float[N,3,4,4] x) => (float[N,2,4,4] y) <{_weights(w2=[2, 4, 1, 1])}> {{
            w1 = Constant <value = float[4,3,1,1] {{{", ".join(["0.5", "-1.0", "0.25"] * 4)}}}> ()
            a = Conv (x, w1)
            i = Identity (a)
            d = Dropout (i)
            y = Conv (d, w2)
        }}"""
    )
    model = ir.serde.deserialize_model(proto)
    g = [g for g in find_channel_groups(model) if not g.frozen][0]
    assert g.num_units == 4 and ("w1", 0) in _names(g)
    _check_removal(model, [(g, np.array([1, 2]))], {"x": _x([2, 3, 4, 4])})
    constant = [n for n in model.graph if n.op_type == "Constant"][0]
    assert constant.attributes["value"].as_tensor().shape == (2, 3, 1, 1)


def test_a_handler_that_fails_freezes_instead_of_raising(monkeypatch):
    from nnopt_graph.analysis.channels import analyzer

    def broken(self, node, port, index, axis, key):
        raise ValueError("cannot read this node")

    monkeypatch.setattr(analyzer._Analyzer, "_unary", broken)
    groups = find_channel_groups(_model(*CHAIN))
    g = [g for g in groups if ("w1", 0) in _names(g)][0]
    assert g.frozen and "unsupported op: Relu (not followed)" in g.frozen_reasons

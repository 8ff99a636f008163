"""Helpers for pass tests: build from ONNX text, run a pass, compare under ORT."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from nnopt_graph.pipeline.base import PassContext, PassResult
from nnopt_graph.pipeline.grammar import PassSpec


def model_from_text(text: str) -> onnx.ModelProto:
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model, full_check=True)
    return model


def run_pass(proto: onnx.ModelProto, name: str, **options) -> tuple[ir.Model, PassResult]:
    model = ir.serde.deserialize_model(proto)
    result = PassSpec.create(name, **options).instantiate().run(model, PassContext())
    return model, result


def to_proto(model: ir.Model) -> onnx.ModelProto:
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def random_feeds(proto: onnx.ModelProto, seed: int = 0, **dims: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inits = {i.name for i in proto.graph.initializer}
    feeds = {}
    for value in proto.graph.input:
        if value.name in inits:
            continue
        tensor_type = value.type.tensor_type
        shape = [
            d.dim_value if d.dim_value else dims.get(d.dim_param, 2) for d in tensor_type.shape.dim
        ]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[value.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[value.name] = rng.integers(0, 3, shape).astype(dtype)
    return feeds


def ort_run(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, feeds)


def ort_outputs(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The outputs under ONNX Runtime's default optimizations (its fused kernels), quietly."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), options, ["CPUExecutionProvider"])
    return session.run(None, feeds)


def assert_same_outputs(
    before: onnx.ModelProto, after: onnx.ModelProto, seed: int = 0, rtol=1e-5, atol=1e-5, **dims
):
    feeds = random_feeds(before, seed, **dims)
    for a, b in zip(ort_run(before, feeds), ort_run(after, feeds), strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def op_types(model: ir.Model | onnx.ModelProto) -> list[str]:
    if isinstance(model, onnx.ModelProto):
        model = ir.serde.deserialize_model(model)
    return [n.op_type for n in ir.traversal.RecursiveGraphIterator(model.graph)]


def check_idempotent(model: ir.Model, name: str, **options) -> None:
    second = PassSpec.create(name, **options).instantiate().run(model, PassContext())
    assert not second.modified, f"second run of {name} changed the model: {second.stats}"


def in_an_if(inner: onnx.ModelProto) -> onnx.ModelProto:
    """``inner``'s nodes as the then-branch of an If on a ``flag`` input; else x passes.

    ``inner`` reads one input ``x`` and writes one output ``y`` of x's type; its
    initializers move to the main graph, so the branch reads them from the outer scope.
    """
    graph = inner.graph
    x = graph.input[0]
    then = onnx.helper.make_graph(list(graph.node), "then", [], list(graph.output))
    other = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["e"], name="pass")],
        "else",
        [],
        [onnx.helper.make_tensor_value_info("e", x.type.tensor_type.elem_type, None)],
    )
    other.output[0].type.CopyFrom(x.type)
    flag = onnx.helper.make_tensor_value_info("flag", onnx.TensorProto.BOOL, [])
    outer = onnx.helper.make_graph(
        [
            onnx.helper.make_node(
                "If", ["flag"], ["y"], name="if", then_branch=then, else_branch=other
            )
        ],
        "g",
        [x, flag],
        [graph.output[0]],
        initializer=list(graph.initializer),
    )
    model = onnx.helper.make_model(
        outer, opset_imports=list(inner.opset_import), ir_version=inner.ir_version
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def ffn_chain(
    seed: int,
    widths: list[int],
    *,
    din: int = 6,
    dout: int = 4,
    constant_units: int = 0,
    bias: bool = True,
    op: str = "MatMul",
) -> onnx.ModelProto:
    """x [N, din] -> (MatMul + Add -> Relu) per width -> MatMul + Add -> y [N, dout].

    Nodes are named ``block{i}.fc`` (``.bias``, ``.relu``) per hidden layer and ``head``.

    The first ``constant_units`` units of the first hidden layer read no input (zero
    weight column) and have bias 3: after Relu they are the constant 3 (mean 3, no
    variance). ``op='Gemm'`` makes every layer a Gemm with its bias as C.
    """
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x, d = "x", din
    for i, w in enumerate([*widths, dout]):
        wt = (rng.standard_normal([d, w]) / np.sqrt(d)).astype(np.float32)
        b = (rng.standard_normal([w]) * 0.1).astype(np.float32)
        if i == 0 and constant_units:
            wt[:, :constant_units] = 0
            b[:constant_units] = 3.0
        inits.append(numpy_helper.from_array(wt, f"w{i}"))
        last = i == len(widths)
        name = "head" if last else f"block{i}.fc"
        out = "y" if last else f"l{i}"
        if op == "Gemm":
            inits.append(numpy_helper.from_array(b, f"b{i}"))
            nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [out], name=name))
        elif bias:
            inits.append(numpy_helper.from_array(b, f"b{i}"))
            nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=name))
            nodes.append(helper.make_node("Add", [f"m{i}", f"b{i}"], [out], name=f"{name}.bias"))
        else:
            nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [out], name=name))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"h{i}"], name=f"{name}.relu"))
            x = f"h{i}"
        d = w
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", din])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", dout])],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(proto, full_check=True)
    return proto

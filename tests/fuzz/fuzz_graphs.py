"""Random ONNX graphs for the differential fuzz: zoo ops, a subgraph, shared weights.

A graph is a chain of blocks on ``x`` [2, C, 8, 8]; each block is one pattern the default
pipeline rewrites (BatchNorm after Conv, Identity/Dropout, Constant nodes, constant
subexpressions, duplicated weights, common subexpressions, dead code, an If) or leaves
alone (activations, Transpose pairs, Concat).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

BLOCKS = (
    "conv",
    "conv-shared",
    "conv-bn",
    "gemm-like",
    "relu",
    "sigmoid",
    "tanh",
    "add-const",
    "mul-const-dup",
    "identity",
    "dropout",
    "constant-node",
    "fold-chain",
    "transpose-pair",
    "cse-pair",
    "dead-branch",
    "concat-split",
    "if-branch",
)


class _Graph:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0
        self.conv_weights: dict[tuple[int, ...], str] = {}
        self.uses_cond = False

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def init(self, array: np.ndarray, prefix: str = "w") -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def node(self, op: str, inputs: Sequence[str], **attrs: object) -> str:
        out = self.name(op.lower() + "_")
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out + "_n", **attrs))
        return out

    def randn(self, *shape: int, scale: float = 0.5) -> np.ndarray:
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)


def _block(g: _Graph, kind: str, h: str, c: int) -> tuple[str, int]:
    """Apply one block to ``h`` (channels ``c``); returns the new value and channels."""
    if kind in ("conv", "conv-shared", "conv-bn"):
        out_c = c if kind == "conv-shared" else int(g.rng.choice([2, 4, 6]))
        k = int(g.rng.choice([1, 3]))
        shape = (out_c, c, k, k)
        if kind == "conv-shared" and shape in g.conv_weights:
            w = g.conv_weights[shape]  # the same initializer read twice
        else:
            w = g.init(g.randn(*shape, scale=1.0 / np.sqrt(c * k * k)))
            g.conv_weights[shape] = w
        b = g.init(g.randn(out_c), "b")
        y = g.node("Conv", [h, w, b], pads=[k // 2] * 4)
        if kind == "conv-bn":
            scale = g.init(1.0 + g.randn(out_c, scale=0.1), "s")
            bias = g.init(g.randn(out_c), "bb")
            mean = g.init(g.randn(out_c), "m")
            var = g.init(np.abs(g.randn(out_c)) + 0.5, "v")
            y = g.node("BatchNormalization", [y, scale, bias, mean, var], epsilon=1e-5)
        return y, out_c
    if kind == "gemm-like":  # MatMul over the last axis with a weight
        w = g.init(g.randn(8, 8, scale=0.35))
        return g.node("MatMul", [h, w]), c
    if kind in ("relu", "sigmoid", "tanh"):
        return g.node(kind.capitalize(), [h]), c
    if kind == "add-const":
        return g.node("Add", [h, g.init(g.randn(1, c, 1, 1), "a")]), c
    if kind == "mul-const-dup":  # two initializers with equal bytes: dedup shares them
        value = 1.0 + g.randn(1, c, 1, 1, scale=0.1)
        y = g.node("Mul", [h, g.init(value, "k")])
        return g.node("Mul", [y, g.init(value.copy(), "k")]), c
    if kind == "identity":
        return g.node("Identity", [h]), c
    if kind == "dropout":
        return g.node("Dropout", [h]), c
    if kind == "constant-node":
        value = numpy_helper.from_array(g.randn(1, c, 1, 1), "cv")
        const = g.node("Constant", [], value=value)
        return g.node("Add", [h, const]), c
    if kind == "fold-chain":  # (a * b) + a, all constant, then times h
        a = g.init(g.randn(1, c, 1, 1, scale=0.3), "fa")
        b = g.init(g.randn(1, c, 1, 1, scale=0.3), "fb")
        folded = g.node("Add", [g.node("Mul", [a, b]), a])
        return g.node("Add", [h, folded]), c
    if kind == "transpose-pair":
        t = g.node("Transpose", [h], perm=[0, 2, 3, 1])
        return g.node("Transpose", [t], perm=[0, 3, 1, 2]), c
    if kind == "cse-pair":
        return g.node("Add", [g.node("Relu", [h]), g.node("Relu", [h])]), c
    if kind == "dead-branch":
        g.node("Neg", [g.node("Exp", [h])])  # nothing reads it
        return h, c
    if kind == "concat-split":
        cat = g.node("Concat", [h, h], axis=1)
        return g.node("Slice", [cat, *_slice_inits(g, c)]), c
    if kind == "if-branch":  # the subgraph reads h and a weight from the outer graph
        g.uses_cond = True
        w = g.init(g.randn(1, c, 1, 1), "iw")
        then_out, else_out = g.name("then_"), g.name("else_")
        then_branch = helper.make_graph(
            [
                helper.make_node("Mul", [h, w], [then_out + "m"]),
                helper.make_node("Identity", [then_out + "m"], [then_out]),
            ],
            g.name("then_graph"),
            [],
            [helper.make_tensor_value_info(then_out, TensorProto.FLOAT, [2, c, 8, 8])],
        )
        else_branch = helper.make_graph(
            [helper.make_node("Neg", [h], [else_out])],
            g.name("else_graph"),
            [],
            [helper.make_tensor_value_info(else_out, TensorProto.FLOAT, [2, c, 8, 8])],
        )
        return (
            g.node("If", ["cond"], then_branch=then_branch, else_branch=else_branch),
            c,
        )
    raise ValueError(kind)


def _slice_inits(g: _Graph, c: int) -> list[str]:
    names = []
    for values in ([c], [2 * c], [1]):
        name = g.name("sl")
        g.inits.append(numpy_helper.from_array(np.array(values, np.int64), name))
        names.append(name)
    return names


def build(blocks: Sequence[str], seed: int, opset: int = 17) -> onnx.ModelProto:
    """A valid model: ``x`` [2, 4, 8, 8] (and ``cond`` when an If is drawn) -> ``y``."""
    g = _Graph(seed)
    h, c = "x", 4
    for kind in blocks:
        h, c = _block(g, kind, h, c)
    g.nodes.append(helper.make_node("Identity", [h], ["y"], name="output_n"))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 8, 8])]
    if g.uses_cond:
        inputs.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))
    graph = helper.make_graph(
        g.nodes,
        "fuzz",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, c, 8, 8])],
        initializer=g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def feeds(model: onnx.ModelProto, seed: int) -> list[dict[str, np.ndarray]]:
    """A few seeded feeds (both branches of an If)."""
    rng = np.random.default_rng(seed)
    names = [i.name for i in model.graph.input]
    out = []
    for flag in (True, False):
        feed = {"x": rng.standard_normal((2, 4, 8, 8)).astype(np.float32)}
        if "cond" in names:
            feed["cond"] = np.array(flag)
        out.append(feed)
    return out


graph_specs = st.tuples(
    st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=8),
    st.integers(min_value=0, max_value=2**31 - 1),
    st.sampled_from([13, 17, 18]),
)

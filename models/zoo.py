"""Synthetic float32 ONNX models (opset 17) with seeded random weights, for tests and benchmarks."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "IR_VERSION",
    "OPSET",
    "ZOO",
    "build_bert_encoder",
    "build_cnn",
    "build_control_flow",
    "build_mlp",
    "build_yolo_block",
    "default_input_shapes",
    "example_inputs",
]

OPSET = 17
IR_VERSION = 8
_PRODUCER = "nnopt-graph models.zoo"


class _Builder:
    """Collects nodes and initializers of one graph; names every tensor after its node."""

    def __init__(self, rng: np.random.Generator, prefix: str = "") -> None:
        self.rng = rng
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = set()

    def _unique(self, name: str) -> str:
        name = self.prefix + name
        if name in self._names:
            i = 1
            while f"{name}_{i}" in self._names:
                i += 1
            name = f"{name}_{i}"
        self._names.add(name)
        return name

    def init(self, name: str, array: np.ndarray) -> str:
        """Adds an initializer; returns its (unique) name."""
        name = self._unique(name)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(
        self,
        op_type: str,
        inputs: Sequence[str],
        *,
        name: str,
        **attrs: Any,
    ) -> str:
        """Adds a node with one output; returns the output name."""
        return self.op_multi(op_type, inputs, name=name, n_outputs=1, **attrs)[0]

    def op_multi(
        self,
        op_type: str,
        inputs: Sequence[str],
        *,
        name: str,
        n_outputs: int,
        **attrs: Any,
    ) -> list[str]:
        """Adds a node; returns its output names (``<node>.out`` or ``<node>.out<i>``)."""
        node_name = self._unique(name)
        if n_outputs == 1:
            outputs = [f"{node_name}.out"]
        else:
            outputs = [f"{node_name}.out{i}" for i in range(n_outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs, name=node_name, **attrs))
        return outputs

    def constant_node(self, name: str, array: np.ndarray) -> str:
        """Adds a Constant node holding ``array`` (as PaddlePaddle and TF exporters do)."""
        value = numpy_helper.from_array(np.asarray(array), f"{self.prefix}{name}.value")
        return self.op("Constant", [], name=name, value=value)

    def he_normal(self, shape: Sequence[int], fan_in: int) -> np.ndarray:
        """He-normal float32 weights: std = sqrt(2 / fan_in)."""
        return (self.rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(np.float32)

    def lecun_normal(self, shape: Sequence[int], fan_in: int) -> np.ndarray:
        """LeCun-normal float32 weights: std = sqrt(1 / fan_in)."""
        return (self.rng.standard_normal(shape) * math.sqrt(1.0 / fan_in)).astype(np.float32)

    def small(self, shape: Sequence[int], scale: float = 0.05) -> np.ndarray:
        """Small float32 values for biases and BN shifts."""
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)

    def conv(
        self,
        x: str,
        cin: int,
        cout: int,
        k: int,
        *,
        name: str,
        stride: int = 1,
        group: int = 1,
        bias: bool = False,
        weight_in_constant: bool = False,
    ) -> str:
        """Adds a square Conv with 'same' padding and He-normal weights."""
        fan_in = cin // group * k * k
        weight = self.he_normal([cout, cin // group, k, k], fan_in)
        if weight_in_constant:
            w = self.constant_node(f"{name}.weight", weight)
        else:
            w = self.init(f"{name}.weight", weight)
        inputs = [x, w]
        if bias:
            inputs.append(self.init(f"{name}.bias", self.small([cout])))
        pad = k // 2
        return self.op(
            "Conv",
            inputs,
            name=name,
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[pad, pad, pad, pad],
            dilations=[1, 1],
            group=group,
        )

    def batch_norm(self, x: str, c: int, *, name: str) -> str:
        """Adds an inference-mode BatchNormalization with plausible running statistics."""
        gamma = self.rng.uniform(0.5, 1.5, c).astype(np.float32)
        beta = self.small([c], 0.1)
        mean = self.small([c], 0.1)
        var = self.rng.uniform(0.5, 1.5, c).astype(np.float32)
        inputs = [
            x,
            self.init(f"{name}.weight", gamma),
            self.init(f"{name}.bias", beta),
            self.init(f"{name}.running_mean", mean),
            self.init(f"{name}.running_var", var),
        ]
        return self.op("BatchNormalization", inputs, name=name, epsilon=1e-5, momentum=0.9)

    def silu(self, x: str, *, name: str) -> str:
        """Adds SiLU as exporters write it: x * Sigmoid(x)."""
        s = self.op("Sigmoid", [x], name=f"{name}.sigmoid")
        return self.op("Mul", [x, s], name=f"{name}.mul")

    def conv_bn_act(
        self,
        x: str,
        cin: int,
        cout: int,
        k: int,
        *,
        name: str,
        act: str | None = "relu",
        stride: int = 1,
        group: int = 1,
        weight_in_constant: bool = False,
    ) -> str:
        """Adds Conv (no bias) + BatchNormalization + optional Relu or SiLU."""
        y = self.conv(
            x,
            cin,
            cout,
            k,
            name=f"{name}.conv",
            stride=stride,
            group=group,
            weight_in_constant=weight_in_constant,
        )
        y = self.batch_norm(y, cout, name=f"{name}.bn")
        if act == "relu":
            y = self.op("Relu", [y], name=f"{name}.relu")
        elif act == "silu":
            y = self.silu(y, name=f"{name}.silu")
        elif act is not None:
            raise ValueError(f"unknown activation {act!r}")
        return y

    def linear(self, x: str, fan_in: int, fan_out: int, *, name: str, init: str = "he") -> str:
        """Adds MatMul by a [fan_in, fan_out] weight, then Add of a bias."""
        if init == "he":
            weight = self.he_normal([fan_in, fan_out], fan_in)
        else:
            weight = self.lecun_normal([fan_in, fan_out], fan_in)
        y = self.op("MatMul", [x, self.init(f"{name}.weight", weight)], name=f"{name}.matmul")
        return self.op(
            "Add", [y, self.init(f"{name}.bias", self.small([fan_out]))], name=f"{name}.add"
        )

    def graph(
        self,
        name: str,
        inputs: Sequence[onnx.ValueInfoProto],
        outputs: Sequence[onnx.ValueInfoProto],
    ) -> onnx.GraphProto:
        """Makes the graph from what was added."""
        return helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.initializers)


def _vi(name: str, elem_type: int, shape: Sequence[int | str] | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


def _model(graph: onnx.GraphProto, doc: str) -> onnx.ModelProto:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name=_PRODUCER,
        doc_string=doc,
    )
    return model


def _rename_output(b: _Builder, tensor: str, new_name: str) -> None:
    """Renames the output ``tensor`` of the node producing it to ``new_name``."""
    for node in b.nodes:
        for i, out in enumerate(node.output):
            if out == tensor:
                node.output[i] = new_name
                return
    raise KeyError(tensor)


def build_cnn(seed: int = 0) -> onnx.ModelProto:
    """ResNet-style CNN on [N,3,32,32] images with 10 classes.

    Holds Conv+BN+Relu stems, two residual Adds, a two-branch Concat, a depthwise Conv
    (group=C), a grouped Conv (group=4), GlobalAveragePool, Flatten and Gemm; one Conv weight
    lives in a Constant node, and an Identity and an inference Dropout are there to clean up.

    Args:
        seed: Seed of the weights.

    Returns:
        The model: input ``input`` [N,3,32,32], output ``logits`` [N,10].
    """
    b = _Builder(np.random.default_rng(seed))
    h = b.conv_bn_act("input", 3, 16, 3, name="stem")  # [N,16,32,32]
    r = b.conv_bn_act(h, 16, 16, 3, name="block1.0", weight_in_constant=True)
    r = b.conv_bn_act(r, 16, 16, 3, name="block1.1", act=None)
    h = b.op("Add", [h, r], name="block1.add")
    h = b.op("Relu", [h], name="block1.relu")
    h = b.op("Identity", [h], name="block1.identity")
    h = b.conv_bn_act(h, 16, 32, 3, stride=2, name="down1")  # [N,32,16,16]
    left = b.conv_bn_act(h, 32, 16, 1, name="branch_a")
    right = b.conv_bn_act(h, 32, 16, 3, name="branch_b")
    h = b.op("Concat", [left, right], name="branches.concat", axis=1)  # [N,32,16,16]
    h = b.conv_bn_act(h, 32, 32, 3, group=32, name="depthwise")
    h = b.conv_bn_act(h, 32, 64, 3, stride=2, group=4, name="grouped")  # [N,64,8,8]
    r = b.conv_bn_act(h, 64, 64, 3, name="block2.0")
    r = b.conv_bn_act(r, 64, 64, 3, name="block2.1", act=None)
    h = b.op("Add", [h, r], name="block2.add")
    h = b.op("Relu", [h], name="block2.relu")
    h = b.op("GlobalAveragePool", [h], name="pool")  # [N,64,1,1]
    h = b.op("Flatten", [h], name="flatten", axis=1)  # [N,64]
    h = b.op("Dropout", [h], name="dropout")
    w = b.init("fc.weight", b.lecun_normal([10, 64], 64))
    bias = b.init("fc.bias", b.small([10]))
    logits = b.op("Gemm", [h, w, bias], name="fc", transB=1)
    _rename_output(b, logits, "logits")
    graph = b.graph(
        "cnn",
        [_vi("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [_vi("logits", TensorProto.FLOAT, ["N", 10])],
    )
    return _model(graph, "Synthetic ResNet-style CNN (nnopt-graph zoo 'cnn').")


def _bottleneck(b: _Builder, x: str, c: int, *, name: str) -> str:
    y = b.conv_bn_act(x, c, c, 3, act="silu", name=f"{name}.cv1")
    y = b.conv_bn_act(y, c, c, 3, act="silu", name=f"{name}.cv2")
    return b.op("Add", [x, y], name=f"{name}.add")


def build_yolo_block(seed: int = 0) -> onnx.ModelProto:
    """YOLOv8-like backbone slice and two detection heads on [N,3,64,64] images.

    Holds Conv+BN+SiLU (Sigmoid*Mul), a C2f block (Split on channels, two bottlenecks with
    shortcuts, Concat), an SPPF block (a chain of three MaxPools, Concat), a nearest Resize
    upsample (scales from a Constant node) concatenated with an earlier feature map, and
    two detection-head Convs.

    Args:
        seed: Seed of the weights.

    Returns:
        The model: input ``input`` [N,3,64,64]; outputs ``det_p3`` [N,18,16,16] and
        ``det_p4`` [N,18,8,8].
    """
    b = _Builder(np.random.default_rng(seed))
    h = b.conv_bn_act("input", 3, 16, 3, stride=2, act="silu", name="stem")  # [N,16,32,32]
    h = b.conv_bn_act(h, 16, 32, 3, stride=2, act="silu", name="down1")  # [N,32,16,16]
    # C2f
    h = b.conv_bn_act(h, 32, 32, 1, act="silu", name="c2f.cv1")
    split = b.init("c2f.split_sizes", np.array([16, 16], dtype=np.int64))
    y0, y1 = b.op_multi("Split", [h, split], name="c2f.split", n_outputs=2, axis=1)
    y2 = _bottleneck(b, y1, 16, name="c2f.m.0")
    y3 = _bottleneck(b, y2, 16, name="c2f.m.1")
    h = b.op("Concat", [y0, y1, y2, y3], name="c2f.concat", axis=1)  # [N,64,16,16]
    p3 = b.conv_bn_act(h, 64, 32, 1, act="silu", name="c2f.cv2")  # [N,32,16,16]
    h = b.conv_bn_act(p3, 32, 64, 3, stride=2, act="silu", name="down2")  # [N,64,8,8]
    # SPPF
    x = b.conv_bn_act(h, 64, 32, 1, act="silu", name="sppf.cv1")
    pools = [x]
    for i in range(3):
        pools.append(
            b.op(
                "MaxPool",
                [pools[-1]],
                name=f"sppf.pool{i}",
                kernel_shape=[5, 5],
                strides=[1, 1],
                pads=[2, 2, 2, 2],
            )
        )
    h = b.op("Concat", pools, name="sppf.concat", axis=1)  # [N,128,8,8]
    p4 = b.conv_bn_act(h, 128, 64, 1, act="silu", name="sppf.cv2")  # [N,64,8,8]
    # neck: upsample and concatenate with the C2f output
    scales = b.constant_node("up.scales", np.array([1.0, 1.0, 2.0, 2.0], dtype=np.float32))
    up = b.op(
        "Resize",
        [p4, "", scales],
        name="up.resize",
        mode="nearest",
        coordinate_transformation_mode="asymmetric",
        nearest_mode="floor",
    )  # [N,64,16,16]
    h = b.op("Concat", [up, p3], name="neck.concat", axis=1)  # [N,96,16,16]
    n3 = b.conv_bn_act(h, 96, 32, 3, act="silu", name="neck.cv")  # [N,32,16,16]
    # heads: 3 anchors x (4 box + 1 objectness + 1 class)
    det_p3 = b.conv(n3, 32, 18, 1, name="head_p3", bias=True)
    det_p4 = b.conv(p4, 64, 18, 1, name="head_p4", bias=True)
    _rename_output(b, det_p3, "det_p3")
    _rename_output(b, det_p4, "det_p4")
    graph = b.graph(
        "yolo_block",
        [_vi("input", TensorProto.FLOAT, ["N", 3, 64, 64])],
        [
            _vi("det_p3", TensorProto.FLOAT, ["N", 18, 16, 16]),
            _vi("det_p4", TensorProto.FLOAT, ["N", 18, 8, 8]),
        ],
    )
    return _model(graph, "Synthetic YOLOv8-like block (nnopt-graph zoo 'yolo-block').")


_VOCAB = 1000
_MAX_POSITIONS = 128
_HIDDEN = 64
_HEADS = 4
_FFN = 256


def _layer_norm(b: _Builder, x: str, *, name: str) -> str:
    gamma = b.init(f"{name}.weight", b.rng.uniform(0.8, 1.2, _HIDDEN).astype(np.float32))
    beta = b.init(f"{name}.bias", b.small([_HIDDEN], 0.02))
    return b.op("LayerNormalization", [x, gamma, beta], name=name, axis=-1, epsilon=1e-12)


def _encoder_layer(b: _Builder, h: str, mask: str, *, name: str) -> str:
    head_dim = _HIDDEN // _HEADS
    split_shape = b.init(f"{name}.split_shape", np.array([0, 0, _HEADS, head_dim], np.int64))
    merge_shape = b.init(f"{name}.merge_shape", np.array([0, 0, _HIDDEN], np.int64))

    def heads(kind: str, perm: list[int]) -> str:
        y = b.linear(h, _HIDDEN, _HIDDEN, name=f"{name}.attn.{kind}", init="lecun")
        y = b.op("Reshape", [y, split_shape], name=f"{name}.attn.{kind}.reshape")
        return b.op("Transpose", [y], name=f"{name}.attn.{kind}.transpose", perm=perm)

    q = heads("query", [0, 2, 1, 3])  # [N,4,S,16]
    k = heads("key", [0, 2, 3, 1])  # [N,4,16,S]
    v = heads("value", [0, 2, 1, 3])  # [N,4,S,16]
    scores = b.op("MatMul", [q, k], name=f"{name}.attn.scores")
    sqrt_d = b.init(f"{name}.attn.sqrt_d", np.array(math.sqrt(head_dim), np.float32))
    scores = b.op("Div", [scores, sqrt_d], name=f"{name}.attn.scale")
    scores = b.op("Add", [scores, mask], name=f"{name}.attn.mask_add")
    probs = b.op("Softmax", [scores], name=f"{name}.attn.softmax", axis=-1)
    ctx = b.op("MatMul", [probs, v], name=f"{name}.attn.context")  # [N,4,S,16]
    ctx = b.op("Transpose", [ctx], name=f"{name}.attn.context.transpose", perm=[0, 2, 1, 3])
    ctx = b.op("Reshape", [ctx, merge_shape], name=f"{name}.attn.context.reshape")  # [N,S,64]
    out = b.linear(ctx, _HIDDEN, _HIDDEN, name=f"{name}.attn.output", init="lecun")
    h = b.op("Add", [out, h], name=f"{name}.attn.residual")
    h = _layer_norm(b, h, name=f"{name}.attn.layer_norm")
    # FFN with Gelu written with Erf, as exporters targeting opset < 20 do
    f = b.linear(h, _HIDDEN, _FFN, name=f"{name}.ffn.up", init="lecun")
    sqrt2 = b.init(f"{name}.ffn.gelu.sqrt2", np.array(math.sqrt(2.0), np.float32))
    one = b.init(f"{name}.ffn.gelu.one", np.array(1.0, np.float32))
    half = b.init(f"{name}.ffn.gelu.half", np.array(0.5, np.float32))
    g = b.op("Div", [f, sqrt2], name=f"{name}.ffn.gelu.div")
    g = b.op("Erf", [g], name=f"{name}.ffn.gelu.erf")
    g = b.op("Add", [g, one], name=f"{name}.ffn.gelu.add")
    g = b.op("Mul", [f, g], name=f"{name}.ffn.gelu.mul")
    g = b.op("Mul", [g, half], name=f"{name}.ffn.gelu.mul_half")
    f = b.linear(g, _FFN, _HIDDEN, name=f"{name}.ffn.down", init="lecun")
    h = b.op("Add", [f, h], name=f"{name}.ffn.residual")
    return _layer_norm(b, h, name=f"{name}.ffn.layer_norm")


def build_bert_encoder(seed: int = 0) -> onnx.ModelProto:
    """BERT-style encoder: embeddings, 2 layers of hidden 64 with 4 heads, FFN 256, vocab 1000.

    Holds Gather embeddings with positions from Shape/Range, LayerNormalization, an additive
    attention mask from ``attention_mask``, Q/K/V MatMul+Add, Reshape/Transpose to heads,
    scaled MatMul, Softmax, the output projection, residual Adds, and an Erf-based Gelu.

    Args:
        seed: Seed of the weights.

    Returns:
        The model: inputs ``input_ids`` and ``attention_mask`` int64 [N,S] (S <= 128),
        output ``last_hidden_state`` [N,S,64].
    """
    b = _Builder(np.random.default_rng(seed))
    word = b.init(
        "embeddings.word", (b.rng.standard_normal([_VOCAB, _HIDDEN]) * 0.5).astype(np.float32)
    )
    pos_table = (b.rng.standard_normal([_MAX_POSITIONS, _HIDDEN]) * 0.1).astype(np.float32)
    pos_table_name = b.init("embeddings.position", pos_table)
    h = b.op("Gather", [word, "input_ids"], name="embeddings.word.gather", axis=0)  # [N,S,64]
    shape = b.op("Shape", ["input_ids"], name="embeddings.shape")
    seq_index = b.init("embeddings.seq_axis", np.array(1, np.int64))
    seq_len = b.op("Gather", [shape, seq_index], name="embeddings.seq_len", axis=0)
    start = b.init("embeddings.range_start", np.array(0, np.int64))
    step = b.init("embeddings.range_step", np.array(1, np.int64))
    positions = b.op("Range", [start, seq_len, step], name="embeddings.positions")  # [S]
    pos = b.op("Gather", [pos_table_name, positions], name="embeddings.position.gather", axis=0)
    h = b.op("Add", [h, pos], name="embeddings.add")
    h = _layer_norm(b, h, name="embeddings.layer_norm")
    # additive mask [N,1,1,S]: 0 where attended, -10000 where masked
    m = b.op("Cast", ["attention_mask"], name="mask.cast", to=TensorProto.FLOAT)
    one = b.init("mask.one", np.array(1.0, np.float32))
    m = b.op("Sub", [one, m], name="mask.invert")
    big = b.init("mask.min_value", np.array(-10000.0, np.float32))
    m = b.op("Mul", [m, big], name="mask.scale")
    axes = b.init("mask.axes", np.array([1, 2], np.int64))
    mask = b.op("Unsqueeze", [m, axes], name="mask.unsqueeze")
    for i in range(2):
        h = _encoder_layer(b, h, mask, name=f"encoder.layer.{i}")
    _rename_output(b, h, "last_hidden_state")
    graph = b.graph(
        "bert_encoder",
        [
            _vi("input_ids", TensorProto.INT64, ["N", "S"]),
            _vi("attention_mask", TensorProto.INT64, ["N", "S"]),
        ],
        [_vi("last_hidden_state", TensorProto.FLOAT, ["N", "S", _HIDDEN])],
    )
    return _model(graph, "Synthetic 2-layer BERT encoder (nnopt-graph zoo 'bert-encoder').")


def build_mlp(seed: int = 0) -> onnx.ModelProto:
    """MLP 64 -> 256 -> 256 -> 10 with Gemm, MatMul+Add and Relu.

    The second layer's weight is stored as [out, in] and fed through a Transpose, and its
    bias ``fc2.bias`` is a byte-identical copy of ``fc1.bias`` under another name.

    Args:
        seed: Seed of the weights.

    Returns:
        The model: input ``input`` [N,64], output ``logits`` [N,10].
    """
    b = _Builder(np.random.default_rng(seed))
    w1 = b.init("fc1.weight", b.he_normal([256, 64], 64))
    bias1 = b.small([256])
    h = b.op("Gemm", ["input", w1, b.init("fc1.bias", bias1)], name="fc1", transB=1)
    h = b.op("Relu", [h], name="relu1")
    w2 = b.init("fc2.weight", b.he_normal([256, 256], 256))
    w2t = b.op("Transpose", [w2], name="fc2.weight.transpose", perm=[1, 0])
    h = b.op("MatMul", [h, w2t], name="fc2.matmul")
    h = b.op("Add", [h, b.init("fc2.bias", bias1.copy())], name="fc2.add")
    h = b.op("Relu", [h], name="relu2")
    w3 = b.init("fc3.weight", b.lecun_normal([10, 256], 256))
    logits = b.op("Gemm", [h, w3, b.init("fc3.bias", b.small([10]))], name="fc3", transB=1)
    _rename_output(b, logits, "logits")
    graph = b.graph(
        "mlp",
        [_vi("input", TensorProto.FLOAT, ["N", 64])],
        [_vi("logits", TensorProto.FLOAT, ["N", 10])],
    )
    return _model(graph, "Synthetic MLP (nnopt-graph zoo 'mlp').")


def _then_branch(b: _Builder, h: str, proj_weight: np.ndarray) -> onnx.GraphProto:
    t = _Builder(b.rng, prefix="then.")
    w = t.init("weight", proj_weight.copy())  # byte-identical to the main graph's proj.weight
    y = t.op("MatMul", [h, w], name="matmul")
    y = t.op("Add", [y, t.init("bias", t.small([32]))], name="add")
    y = t.op("Relu", [y], name="relu")
    t.op("Neg", [h], name="dead_neg")  # dead: its output is never used
    out = t.op("Identity", [y], name="identity")
    return t.graph("then_body", [], [_vi(out, TensorProto.FLOAT, ["N", 32])])


def _else_branch(b: _Builder, h: str) -> onnx.GraphProto:
    e = _Builder(b.rng, prefix="else.")
    to_4d = e.init("to_4d", np.array([0, 32, 1, 1], np.int64))
    to_2d = e.init("to_2d", np.array([0, 32], np.int64))
    y = e.op("Reshape", [h, to_4d], name="reshape_4d")  # [N,32,1,1]
    y = e.conv(y, 32, 32, 1, name="conv", bias=True)
    y = e.op("Reshape", [y, to_2d], name="reshape_2d")
    y = e.op("Tanh", [y], name="tanh")
    e.op("Sigmoid", [h], name="dead_sigmoid")  # dead: its output is never used
    out = e.op("Identity", [y], name="identity")
    return e.graph("else_body", [], [_vi(out, TensorProto.FLOAT, ["N", 32])])


def _loop_body(b: _Builder) -> onnx.GraphProto:
    body = _Builder(b.rng, prefix="loop_body.")
    it, cond_in, state_in = "loop_body.iter", "loop_body.cond_in", "loop_body.state_in"
    y = body.linear(state_in, 32, 32, name="cell", init="lecun")
    y = body.op("Tanh", [y], name="tanh")
    y = body.op("Add", [state_in, y], name="residual")
    body.op("Mul", [state_in, state_in], name="dead_square")  # dead: its output is never used
    state_out = body.op("Identity", [y], name="state_identity")
    cond_out = body.op("Identity", [cond_in], name="cond_identity")
    return body.graph(
        "loop_body",
        [
            _vi(it, TensorProto.INT64, []),
            _vi(cond_in, TensorProto.BOOL, []),
            _vi(state_in, TensorProto.FLOAT, ["N", 32]),
        ],
        [
            _vi(cond_out, TensorProto.BOOL, []),
            _vi(state_out, TensorProto.FLOAT, ["N", 32]),
        ],
    )


def build_control_flow(seed: int = 0) -> onnx.ModelProto:
    """Model with an If (on ReduceSum(input) > 0) and a 3-trip Loop, each body with weights.

    The then-branch holds a MatMul whose weight is a byte-identical copy of the main
    graph's ``proj.weight``; the else-branch holds a 1x1 Conv; the Loop body does
    MatMul+Add+Tanh on a carried state. Each body has a dead node and an Identity.

    Args:
        seed: Seed of the weights.

    Returns:
        The model: input ``input`` [N,16], output ``output`` [N,8]. A positive sum of the
        input takes the then-branch, a negative one the else-branch.
    """
    b = _Builder(np.random.default_rng(seed))
    h = b.linear("input", 16, 32, name="embed")
    h = b.op("Relu", [h], name="embed.relu")  # [N,32]
    total = b.op("ReduceSum", ["input"], name="cond.sum", keepdims=0)
    zero = b.init("cond.zero", np.array(0.0, np.float32))
    cond = b.op("Greater", [total, zero], name="cond.greater")
    proj_weight = b.lecun_normal([32, 32], 32)
    then_graph = _then_branch(b, h, proj_weight)
    else_graph = _else_branch(b, h)
    y = b.op("If", [cond], name="branch", then_branch=then_graph, else_branch=else_graph)
    y = b.op("MatMul", [y, b.init("proj.weight", proj_weight)], name="proj.matmul")
    y = b.op("Add", [y, b.init("proj.bias", b.small([32]))], name="proj.add")
    trips = b.init("loop.trip_count", np.array(3, np.int64))
    keep_going = b.init("loop.cond", np.array(True))
    y = b.op("Loop", [trips, keep_going, y], name="loop", body=_loop_body(b))
    out = b.linear(y, 32, 8, name="head", init="lecun")
    _rename_output(b, out, "output")
    graph = b.graph(
        "control_flow",
        [_vi("input", TensorProto.FLOAT, ["N", 16])],
        [_vi("output", TensorProto.FLOAT, ["N", 8])],
    )
    return _model(graph, "Synthetic If/Loop model (nnopt-graph zoo 'control-flow').")


ZOO: dict[str, Callable[[], onnx.ModelProto]] = {
    "cnn": build_cnn,
    "yolo-block": build_yolo_block,
    "bert-encoder": build_bert_encoder,
    "mlp": build_mlp,
    "control-flow": build_control_flow,
}

_DEFAULT_SHAPES: dict[str, dict[str, list[int]]] = {
    "cnn": {"input": [2, 3, 32, 32]},
    "yolo-block": {"input": [2, 3, 64, 64]},
    "bert-encoder": {"input_ids": [2, 16], "attention_mask": [2, 16]},
    "mlp": {"input": [2, 64]},
    "control-flow": {"input": [2, 16]},
}


def default_input_shapes(name: str) -> dict[str, list[int]]:
    """Concrete input shapes for a zoo model (batch N=2, sequence S=16).

    Args:
        name: A key of ``ZOO``.

    Returns:
        A fresh dict from input name to shape.

    Raises:
        KeyError: ``name`` is not in the zoo.
    """
    if name not in _DEFAULT_SHAPES:
        raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(ZOO)}")
    return {k: list(v) for k, v in _DEFAULT_SHAPES[name].items()}


def example_inputs(
    name: str, seed: int = 0, shapes: dict[str, list[int]] | None = None
) -> dict[str, np.ndarray]:
    """Seeded valid inputs for a zoo model.

    Image-like (4-D) floats are uniform in [0, 1), other floats standard normal;
    ``input_ids`` are token ids below the vocabulary size; ``attention_mask`` is all ones
    except the last quarter of the last sample's positions.

    Args:
        name: A key of ``ZOO``.
        seed: Seed of the values.
        shapes: Input shapes (default: ``default_input_shapes(name)``).

    Returns:
        A dict from input name to array, ready for ``InferenceSession.run``.
    """
    shapes = shapes if shapes is not None else default_input_shapes(name)
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for input_name, shape in shapes.items():
        if input_name == "input_ids":
            feeds[input_name] = rng.integers(0, _VOCAB, size=shape, dtype=np.int64)
        elif input_name == "attention_mask":
            mask = np.ones(shape, dtype=np.int64)
            masked = shape[-1] // 4
            if masked:
                mask[-1, -masked:] = 0
            feeds[input_name] = mask
        elif len(shape) == 4:
            feeds[input_name] = rng.random(shape, dtype=np.float32)
        else:
            feeds[input_name] = rng.standard_normal(shape).astype(np.float32)
    return feeds

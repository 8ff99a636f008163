"""Per-channel Mul / Add by constants after a Conv, folded into its weights and bias.

PaddleOCR's PP-LCNet exports follow most Convs with a "learnable affine block", a scalar
``y * a + b``: two kernels per Conv that ONNX Runtime runs as such, and that keep
quantize-int8's QuantizeLinear away from the Conv. ``Conv(x, W, B) * k + b`` is
``Conv(x, W * k, B * k + b)`` when ``k`` and ``b`` are constant per output channel: the
same fold as BatchNormalization's. With fuse-hardswish, rapidocr-det runs its float
graph in 0.77 of its time and rapidocr-rec in 0.67-0.68 (interleaved side runs); 56 of
their nodes go. The weights change by rounding, which compounds in deep networks
(relative L2 error 3.8e-6 on rapidocr-det's outputs, a third of the lossless bound), so
the pass is lossy and guarded, in the target-cpu preset rather than the default.
"""

from __future__ import annotations

__all__ = ["FoldConvAffinePass"]

import numpy as np
import onnx_ir as ir

from nnopt_graph.analysis.walk import STANDARD_DOMAINS
from nnopt_graph.core.annotations import annotations_not_added
from nnopt_graph.core.constants import const_array
from nnopt_graph.core.names import NameScope
from nnopt_graph.pipeline.base import Pass, PassContext, PassResult, register_pass


def _constant(value: ir.Value | None) -> np.ndarray | None:
    """The value's array when it is an initializer (the pass drops it once unused)."""
    return const_array(value) if value is not None and value.is_initializer() else None


def _per_channel(array: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """``array`` as one number per output channel of a rank-``rank`` Conv output, or None.

    It must broadcast against ``[N, C, *spatial]`` without touching N or the spatial axes:
    a scalar, or a shape that is all ones but for C on axis 1.
    """
    if array.size == 1:
        return np.full(channels, array.reshape(-1)[0], np.float64)
    if array.ndim > rank or array.ndim < rank - 1:
        return None
    shape = (1,) * (rank - array.ndim) + tuple(array.shape)
    if shape[1] != channels or any(d != 1 for i, d in enumerate(shape) if i != 1):
        return None
    return array.reshape(channels).astype(np.float64)


def _affine_chain(
    conv: ir.Node, channels: int, rank: int
) -> tuple[list[ir.Node], np.ndarray, np.ndarray]:
    """The Mul / Add nodes after ``conv`` that fold, and their combined scale and shift."""
    scale, shift = np.ones(channels), np.zeros(channels)
    chain: list[ir.Node] = []
    value = conv.outputs[0]
    while not value.is_graph_output() and len(value.uses()) == 1:
        user, _ = next(iter(value.uses()))
        if user.op_type not in ("Mul", "Add") or user.domain not in STANDARD_DOMAINS:
            break
        others = [v for v in user.inputs if v is not value]
        if len(user.inputs) != 2 or len(others) != 1 or user.graph is not conv.graph:
            break
        array = _constant(others[0])
        if array is None or array.dtype.kind != "f":
            break
        factor = _per_channel(array, channels, rank)
        if factor is None:
            break
        if user.op_type == "Mul":
            scale, shift = scale * factor, shift * factor
        else:
            shift = shift + factor
        chain.append(user)
        value = user.outputs[0]
    return chain, scale, shift


def _fold(conv: ir.Node, names: NameScope) -> int:
    """Fold the affine chain after one Conv into it; how many nodes went."""
    if conv.op_type != "Conv" or conv.domain not in STANDARD_DOMAINS or conv.graph is None:
        return 0
    inputs = list(conv.inputs)
    weight_in = inputs[1] if len(inputs) > 1 else None
    weight = _constant(weight_in)
    bias_in = inputs[2] if len(inputs) > 2 else None
    bias = _constant(bias_in)
    if weight_in is None or weight is None or weight.dtype.kind != "f" or weight.ndim < 3:
        return 0
    if bias_in is not None and bias is None:
        return 0  # a computed bias
    channels, rank = weight.shape[0], weight.ndim
    chain, scale, shift = _affine_chain(conv, channels, rank)
    if not chain:
        return 0
    base = bias.astype(np.float64) if bias is not None else np.zeros(channels)
    new_weight = (weight.astype(np.float64) * scale.reshape((-1,) + (1,) * (rank - 1))).astype(
        weight.dtype
    )
    new_bias = (base * scale + shift).astype(weight.dtype)
    graph = conv.graph
    w_value = ir.Value(name=names(f"{weight_in.name}_affine"), const_value=ir.tensor(new_weight))
    b_value = ir.Value(
        name=names(f"{conv.name or 'conv'}_affine_bias"), const_value=ir.tensor(new_bias)
    )
    for value, array in ((w_value, new_weight), (b_value, new_bias)):
        value.type = ir.TensorType(ir.DataType.from_numpy(weight.dtype))
        value.shape = ir.Shape(array.shape)
        graph.register_initializer(value)
    conv.replace_input_with(1, w_value)
    if bias_in is None:
        conv.resize_inputs(3)
    conv.replace_input_with(2, b_value)
    stale = [weight_in, bias_in] + [v for n in chain for v in n.inputs]
    last: ir.Value = chain[-1].outputs[0]
    out: ir.Value = conv.outputs[0]
    ir.convenience.replace_all_uses_with(last, out, replace_graph_outputs=True)
    name, last.name = last.name, None
    out.name = name
    out.type, out.shape = last.type or out.type, last.shape or out.shape
    graph.remove(chain, safe=True)
    for old in stale:  # the old weights and the folded constants, where nothing else reads them
        owner = old.graph if old is not None else None
        if old is not None and old.is_initializer() and owner is not None:
            if not old.uses() and not old.is_graph_output() and old.name:
                owner.initializers.pop(old.name, None)
    return len(chain)


@register_pass
class FoldConvAffinePass(Pass):
    """Constant per-channel Mul/Add after a Conv folded into it (rounding-level change)."""

    name = "fold-conv-affine"
    lossy = True

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Fold every Conv's chain, in every graph."""
        names = NameScope.for_model(model)
        folded = convs = 0
        with annotations_not_added(model):
            for graph in model.graphs():
                for node in list(graph):
                    removed = _fold(node, names)
                    folded += removed
                    convs += removed > 0
        return PassResult({"affine-nodes-folded": folded, "convs-changed": convs})

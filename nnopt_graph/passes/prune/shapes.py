"""Reshape targets computed from the input's own dims, rewritten as constants with copies."""

from __future__ import annotations

__all__ = ["fold_copied_reshape_dims"]

import logging

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as ir_passes

from nnopt_graph.core.constants import const_array

logger = logging.getLogger(__name__)


def _copied_dim(value: ir.Value, source: ir.Value) -> int | None:
    """Axis ``i`` when ``value`` is ``[Shape(source)[i]]`` (Unsqueeze of a Gather), else None."""
    node = value.producer()
    if node is None:
        return None
    if node.op_type == "Unsqueeze":
        axes = node.attributes.get("axes")
        axes_v = list(axes.as_ints()) if axes is not None else None
        if axes_v is None and len(node.inputs) > 1:
            array = const_array(node.inputs[1])
            axes_v = None if array is None else [int(a) for a in array.ravel()]
        if axes_v != [0] or node.inputs[0] is None:
            return None
        node = node.inputs[0].producer()
        scalar = True
    else:
        scalar = False
    if node is None or node.op_type != "Gather" or node.attributes.get_int("axis", 0) != 0:
        return None
    index = const_array(node.inputs[1])
    if index is None or index.size != 1 or (index.ndim == 0) != scalar:
        return None
    shape = node.inputs[0].producer() if node.inputs[0] is not None else None
    if shape is None or shape.op_type != "Shape" or shape.inputs[0] is not source:
        return None
    if shape.attributes.get("start") is not None or shape.attributes.get("end") is not None:
        return None
    axis = int(index.ravel()[0])
    return axis if axis >= 0 else None


def fold_copied_reshape_dims(model: ir.Model) -> int:
    """Rewrite ``Reshape(x, Concat([Shape(x)[i]]..., consts))`` as ``Reshape(x, const)``.

    PyTorch exports of attention (``x.size()[:-1] + (heads, head_dim)``) compute the
    target from the input's own dims; an entry that copies dim ``i`` at position ``i`` is
    exactly a 0 in a constant target (``allowzero=0``). The constant target lets channel
    analysis follow heads through the Reshape; the Shape/Gather nodes left unused are
    removed. Main graph only. Returns the number of Reshapes rewritten.
    """
    count = 0
    for node in list(model.graph):
        if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx"):
            continue
        if node.attributes.get_int("allowzero", 0) or len(node.inputs) < 2:
            continue
        x, target = node.inputs[0], node.inputs[1]
        concat = target.producer() if target is not None else None
        if x is None or concat is None or concat.op_type != "Concat":
            continue
        if concat.attributes.get_int("axis", 0) != 0:
            continue
        entries: list[int] = []
        for value in concat.inputs:
            if value is None:
                break
            array = const_array(value)
            if array is not None and array.ndim == 1 and array.dtype == np.int64:
                if (array == 0).any():
                    break  # a literal 0 already means "copy": keep positions exact
                entries.extend(int(a) for a in array)
                continue
            axis = _copied_dim(value, x)
            if axis is None or axis != len(entries):
                break
            entries.append(0)
        else:
            shape = ir.Value(name=f"{node.name or 'reshape'}_target_folded")
            shape.const_value = ir.tensor(np.array(entries, np.int64))
            shape.shape = ir.Shape([len(entries)])
            shape.type = ir.TensorType(ir.DataType.INT64)
            model.graph.register_initializer(shape)
            node.replace_input_with(1, shape)
            count += 1
            logger.info("prune: Reshape '%s' target folded to %s", node.name, entries)
    if count:
        ir_passes.RemoveUnusedNodesPass()(model)
    return count

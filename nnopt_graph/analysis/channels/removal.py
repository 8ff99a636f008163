"""Removing the chosen units of channel groups: constants sliced, the handlers' edits replayed."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from nnopt_graph.analysis.channels.model import (
    ChannelEdit,
    ChannelGroup,
    RemovalResult,
    _Key,
)
from nnopt_graph.core.constants import const_array, is_constant, set_constant
from nnopt_graph.core.names import NameScope

logger = logging.getLogger(__name__)


def set_node_const_input(
    node: ir.Node, index: int, array: np.ndarray, suffix: str = "pruned"
) -> None:
    """Give ``node`` a constant input ``index`` holding ``array``.

    The constant is changed in place when ``node`` is its only reader; otherwise (or
    when the input is missing) a new initializer is created for this node alone, so
    other readers of a shared constant keep their values.
    """
    graph = node.graph
    assert isinstance(graph, ir.Graph), "constant inputs are only rewritten in graphs"
    old = node.inputs[index] if index < len(node.inputs) else None
    if (
        old is not None
        and is_constant(old)
        and len(old.uses()) == 1
        and not old.is_graph_output()
        and (old.is_initializer() or old.producer() is not None)
    ):
        set_constant(old, array)
        return
    base = (
        f"{old.name}_{suffix}"
        if old is not None and old.name
        else f"{node.name or node.op_type}_{index}"
    )
    name = NameScope.for_graph(graph)(base)
    value = ir.Value(name=name, const_value=ir.tensor(np.ascontiguousarray(array), name=name))
    value.shape = ir.Shape(array.shape)
    value.dtype = ir.DataType.from_numpy(array.dtype)
    graph.register_initializer(value)
    if index >= len(node.inputs):
        node.resize_inputs(index + 1)
    node.replace_input_with(index, value)
    if old is not None and old.is_initializer() and not old.uses() and not old.is_graph_output():
        if graph.initializers.get(old.name or "") is old:
            graph.initializers.pop(old.name or "")


def _apply_edit(edit: ChannelEdit, kept: dict[_Key, np.ndarray], sizes: dict[_Key, int]) -> None:
    node = edit.node
    if edit.kind == "conv-group":
        group, cin = edit.data
        new_cin = len(kept[edit.spaces[0]])
        node.attributes["group"] = ir.AttrInt64("group", group * new_cin // cin)
    elif edit.kind == "shape-entry":
        array = const_array(node.inputs[edit.input_index])
        assert array is not None
        array = array.copy()
        flat = array.reshape(-1)
        if flat[edit.position] > 0:
            flat[edit.position] = len(kept[edit.spaces[0]])
        set_node_const_input(node, edit.input_index, array)
    elif edit.kind == "split":
        new_sizes = np.array(
            [len(kept[k]) if k in kept else sizes[k] for k in edit.spaces], dtype=np.int64
        )
        split_input = node.inputs[1] if len(node.inputs) > 1 else None
        if split_input is not None:
            set_node_const_input(node, 1, new_sizes)
        elif "split" in node.attributes:
            node.attributes["split"] = ir.AttrInt64s("split", new_sizes.tolist())
        else:
            if "num_outputs" in node.attributes:
                del node.attributes["num_outputs"]
            graph = node.graph
            assert graph is not None
            opset = graph.opset_imports.get("", 0) if isinstance(graph, ir.Graph) else 0
            if opset and opset < 13:
                node.attributes["split"] = ir.AttrInt64s("split", new_sizes.tolist())
            else:
                set_node_const_input(node, 1, new_sizes)
    elif edit.kind == "slice":
        in_key, out_key = edit.spaces
        start = edit.data[0]
        in_kept = kept[in_key] if in_key in kept else np.arange(sizes[in_key])
        out_count = len(kept[out_key]) if out_key in kept else sizes[out_key]
        new_start = int(np.sum(in_kept < start))
        for index, value in ((1, new_start), (2, new_start + out_count)):
            array = const_array(node.inputs[index])
            assert array is not None
            array = array.copy()
            array.reshape(-1)[edit.position] = value
            set_node_const_input(node, index, array)
    else:  # pragma: no cover
        raise ValueError(f"unknown edit {edit.kind}")


def apply_channel_removal(
    model: ir.Model, group: ChannelGroup, keep_units: Sequence[int] | np.ndarray
) -> RemovalResult:
    """Remove every unit of ``group`` not in ``keep_units``, consistently everywhere.

    Constants (weights, biases, BN parameters, per-channel constants) are sliced along
    their axis; Reshape/Resize/Expand shape constants, Split sizes, Slice bounds and
    Conv ``group`` are rewritten; activations get their new dim in the shape annotation.
    Shared shape constants are copied before they change. Tensors are replaced, never
    written to, so clones of the model sharing them keep the old values. Run ONNX shape
    inference afterwards to refresh other annotations.

    Args:
        model: the model holding the group (modified in place).
        group: a group from ``find_channel_groups`` on this model, not yet applied.
        keep_units: the unit indices to keep; must include every frozen unit and leave
            every space at least one index.

    Returns:
        The kept indices of each space, keyed by (value name, axis), and counts.

    Raises:
        ValueError: a frozen unit would be removed, or a space would become empty.
    """
    del model  # the group holds the values and nodes it rewrites
    keep_mask = np.zeros(group.num_units, dtype=bool)
    keep_mask[np.asarray(list(keep_units), dtype=np.int64)] = True
    if (group.unit_frozen & ~keep_mask).any():
        raise ValueError(f"group '{group.name}': frozen units cannot be removed")
    kept: dict[_Key, np.ndarray] = {}
    sizes: dict[_Key, int] = {}
    for space in group.spaces:
        k = (id(space.value), space.axis)
        idx = np.nonzero(keep_mask[space.unit_of])[0]
        if len(idx) == 0:
            raise ValueError(
                f"group '{group.name}': '{space.name}' axis {space.axis} would be empty"
            )
        kept[k] = idx
        sizes[k] = space.size
    params = 0
    if keep_mask.all():
        return RemovalResult({s.key: kept[(id(s.value), s.axis)] for s in group.spaces}, 0, 0)
    for space in group.spaces:
        idx = kept[(id(space.value), space.axis)]
        if len(idx) == space.size:
            continue
        if space.is_constant:
            array = const_array(space.value)
            assert array is not None
            new = np.take(array, idx, axis=space.axis)
            params += int(array.size - new.size)
            set_constant(space.value, new)
        elif space.value.shape is not None:
            dims = list(space.value.shape)
            if space.axis < len(dims):
                dims[space.axis] = len(idx)
                space.value.shape = ir.Shape(dims)
    for edit in group.edits:
        _apply_edit(edit, kept, sizes)
    units = int(group.num_units - keep_mask.sum())
    logger.info(
        "channels: group '%s' %d -> %d units", group.name, group.num_units, group.num_units - units
    )
    return RemovalResult({s.key: kept[(id(s.value), s.axis)] for s in group.spaces}, params, units)

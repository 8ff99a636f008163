"""Test oracle for channel removal: the original model with the removed channels masked.

Removing units of a group must leave every kept channel with the value it has in the
original model when the removed channels' contributions are zeroed at their sinks (the
weights that contract over the channel axis). ``masked_copy`` builds that reference.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from nnopt_graph.analysis.channels import ROLE_IN, ChannelGroup
from nnopt_graph.core.constants import const_array


def _values_by_name(model: ir.Model) -> dict[str, ir.Value]:
    out: dict[str, ir.Value] = {}
    for graph in model.graphs():
        for value in graph.initializers.values():
            out[value.name] = value
        for node in graph:
            for value in node.outputs:
                if value.name:
                    out[value.name] = value
    return out


def masked_copy(model: ir.Model, removals: list[tuple[ChannelGroup, np.ndarray]]) -> ir.Model:
    """A clone of ``model`` (the unpruned original of the groups) with sink weights of
    removed units set to zero. ``removals`` pairs each group with its kept unit indices."""
    clone = model.clone()
    by_name = _values_by_name(clone)
    for group, keep_units in removals:
        removed = np.ones(group.num_units, dtype=bool)
        removed[np.asarray(keep_units, dtype=np.int64)] = False
        for space in group.spaces:
            if not space.has_role(ROLE_IN):
                continue
            idx = np.nonzero(removed[space.unit_of])[0]
            if not len(idx):
                continue
            value = by_name[space.name]
            array = const_array(value).copy()
            index = [slice(None)] * array.ndim
            index[space.axis] = idx
            array[tuple(index)] = 0
            tensor = ir.tensor(array, name=value.name)
            producer = value.producer()
            if producer is not None and producer.op_type == "Constant":
                producer.attributes["value"] = ir.AttrTensor("value", tensor)
            else:
                value.const_value = tensor
    return clone


def with_outputs(model: ir.Model, names: list[str]) -> onnx.ModelProto:
    """A serialized clone with the named main-graph values added as outputs."""
    clone = model.clone()
    by_name = {v.name: v for n in clone.graph for v in n.outputs}
    for name in names:
        value = by_name[name]
        if value not in clone.graph.outputs:
            clone.graph.outputs.append(value)
    return ir.serde.serialize_model(clone)


def run(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run under ORT without graph optimizations; outputs by name."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def kept_activation_names(groups: list[ChannelGroup], model: ir.Model) -> list[str]:
    """Main-graph activations that belong to a group (to compare at kept indices)."""
    main = {id(v) for n in model.graph for v in n.outputs}
    names = []
    for group in groups:
        for space in group.spaces:
            if not space.is_constant and id(space.value) in main and space.name not in names:
                names.append(space.name)
    return names

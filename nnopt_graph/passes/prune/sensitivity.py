"""Sensitivity of a model to one group's removal: masked clones, worst-sample cosine."""

from __future__ import annotations

__all__ = ["masked_clone", "run_outputs"]

from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_ir as ir

from nnopt_graph.analysis.channels import ROLE_IN, ChannelGroup
from nnopt_graph.core.constants import const_array, set_constant
from nnopt_graph.runtime.data import Dataset

if TYPE_CHECKING:
    from nnopt_graph.runtime.services import RuntimeServices


def run_outputs(
    runtime: RuntimeServices, model: ir.Model, dataset: Dataset
) -> list[list[np.ndarray]]:
    """The model's outputs, per sample, in its output order."""
    return [list(outputs.values()) for [outputs] in runtime.outputs([model], dataset)]


def masked_clone(model: ir.Model, group: ChannelGroup, keep: np.ndarray) -> ir.Model:
    """A clone whose sink weights read zeros for the removed units.

    It computes what removal without refit computes, without rewriting the graph.
    """
    clone = model.clone()
    by_name = dict(clone.graph.initializers)
    by_name.update({v.name: v for n in clone.graph for v in n.outputs if v.name})
    removed = np.ones(group.num_units, dtype=bool)
    removed[keep] = False
    for space in group.spaces:
        if not space.is_constant or not space.has_role(ROLE_IN):
            continue
        idx = np.nonzero(removed[space.unit_of])[0]
        value = by_name.get(space.name)
        array = const_array(value)
        if value is None or array is None or not len(idx):
            continue
        array = array.copy()
        index: list[Any] = [slice(None)] * array.ndim
        index[space.axis] = idx
        array[tuple(index)] = 0
        set_constant(value, array)
    return clone

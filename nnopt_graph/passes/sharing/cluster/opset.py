"""Raising a model's opset for per-axis/int4 DequantizeLinear, when nothing changes meaning."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import onnx
import onnx.defs
import onnx_ir as ir

from nnopt_graph.passes.sharing.cluster.constants import (
    _IR_FOR_OPSET,
    _ONNX_DOMAINS,
    _SEMANTIC_CHANGES,
)

logger = logging.getLogger(__name__)


def _schema(op: str, version: int) -> onnx.defs.OpSchema | None:
    try:
        return onnx.defs.get_schema(op, version, "")
    except onnx.defs.SchemaError:
        return None


def _formal(params: Sequence[Any], index: int) -> Any:
    """The formal parameter at ``index`` (the last one when it is variadic)."""
    if index < len(params):
        return params[index]
    if params and params[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
        return params[-1]
    return None


def _step_problem(node: ir.Node, old: onnx.defs.OpSchema, new: onnx.defs.OpSchema) -> str | None:
    """Why ``node`` does not mean the same under ``new`` as under ``old``, or None."""
    op, version = node.op_type, new.since_version
    if new.deprecated:
        return f"{op} is deprecated at opset {version}"
    if op in _SEMANTIC_CHANGES and old.since_version < _SEMANTIC_CHANGES[op] <= version:
        return f"{op} changes meaning at opset {_SEMANTIC_CHANGES[op]}"
    n_in, n_out = len(node.inputs), len(node.outputs)
    if not new.min_input <= n_in <= new.max_input or not new.min_output <= n_out <= new.max_output:
        return f"{op} with {n_in} inputs and {n_out} outputs is invalid at opset {version}"
    if op == "BatchNormalization" and version == 14 and n_out != 1:
        return "BatchNormalization with training outputs changes at opset 14"
    if op == "Split" and version == 18 and n_in < 2:
        return "Split without a 'split' input needs 'num_outputs' at opset 18"
    if op == "Resize" and version == 13:
        mode = node.attributes.get("coordinate_transformation_mode")
        if isinstance(mode, ir.Attr) and mode.as_string() == "tf_half_pixel_for_nn":
            return "Resize mode tf_half_pixel_for_nn is gone at opset 13"
    for index in range(n_in):
        before, after = _formal(old.inputs, index), _formal(new.inputs, index)
        if before is None or after is None:
            return f"{op} input {index} has no formal parameter at opset {version}"
        renamed = before.name != after.name and (op, version) != ("BatchNormalization", 14)
        if renamed or not set(before.types) <= set(after.types):
            return f"{op} input {index} changes at opset {version}"
    for name, attr in node.attributes.items():
        formal = new.attributes.get(name)
        if (
            formal is None
            or not isinstance(attr, ir.Attr)
            or getattr(formal.type, "name", None) != attr.type.name  # INT, INTS, TENSOR, ...
        ):
            return f"{op} attribute '{name}' changes at opset {version}"
    for name, formal in old.attributes.items():
        if name in node.attributes:
            continue
        later = new.attributes.get(name)
        if later is None:
            return f"{op} attribute '{name}' is gone at opset {version}"
        if formal.default_value.SerializeToString() != later.default_value.SerializeToString():
            return f"{op} default of '{name}' changes at opset {version}"
    for name, formal in new.attributes.items():
        if formal.required and name not in node.attributes:
            return f"{op} needs attribute '{name}' at opset {version}"
    return None


def _node_upgrade_problem(node: ir.Node, old: int, new: int) -> str | None:
    schema = _schema(node.op_type, old)
    if schema is None:
        return f"{node.op_type} is unknown at opset {old}"
    for version in range(old + 1, new + 1):
        later = _schema(node.op_type, version)
        if later is None:
            return f"{node.op_type} is unknown at opset {version}"
        if later.since_version != schema.since_version:
            problem = _step_problem(node, schema, later)
            if problem:
                return problem
            schema = later
    return None


def _default_opset(model: ir.Model) -> int:
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))


def upgrade_blockers(model: ir.Model, version: int) -> list[str]:
    """Why raising the model's default-domain opset to ``version`` could change it ([] if safe).

    Safe means: every default-domain node of the main graph and its subgraphs keeps its
    signature (inputs, outputs, attribute names, types and defaults, accepted types) at
    each schema version up to ``version``, and no op changes meaning there with the same
    signature (Softmax at 13, GroupNormalization at 21, ...). Models with local functions
    that import the default domain are not raised (their imports would disagree).
    """
    old = _default_opset(model)
    if version <= old:
        return []
    problems: list[str] = []
    for function in model.functions.values():
        if any(d in function.opset_imports for d in _ONNX_DOMAINS):
            problems.append(f"function '{function.name}' imports the default domain")
    checked: set[tuple[Any, ...]] = set()
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.domain not in _ONNX_DOMAINS:
            continue
        # Nodes that look alike to the check get the same answer: check one of each.
        mode = node.attributes.get("coordinate_transformation_mode")
        key = (
            node.op_type,
            len(node.inputs),
            len(node.outputs),
            tuple(sorted((k, int(a.type)) for k, a in node.attributes.items())),
            mode.value if isinstance(mode, ir.Attr) else None,
        )
        if key in checked:
            continue
        checked.add(key)
        problem = _node_upgrade_problem(node, old, version)
        if problem and problem not in problems:
            problems.append(problem)
    return problems


def _raise_opset(model: ir.Model, version: int) -> None:
    key = "ai.onnx" if "" not in model.opset_imports and "ai.onnx" in model.opset_imports else ""
    model.opset_imports[key] = version
    model.ir_version = max(model.ir_version or 0, _IR_FOR_OPSET[version])

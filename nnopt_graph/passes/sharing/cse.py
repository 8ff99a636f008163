"""Common subexpression elimination in every graph, subgraph and function."""

from __future__ import annotations

__all__ = ["COMMUTATIVE_OPS", "NONDETERMINISTIC_OPS", "EliminateCommonSubexpressionsPass"]

import collections
import logging
import struct
from collections.abc import Hashable, Sequence

import numpy as np
import onnx_ir as ir

from nnopt_graph.analysis.walk import STANDARD_DOMAINS, all_graphs
from nnopt_graph.core.constants import constant_bool
from nnopt_graph.passes.sharing.tensor_bytes import tensor_digest, tensors_equal
from nnopt_graph.pipeline.base import Pass, PassContext, PassResult, register_pass

logger = logging.getLogger(__name__)

# ONNX ops whose result does not depend on the order of their inputs.
COMMUTATIVE_OPS = frozenset(
    {
        "Add",
        "Mul",
        "Max",
        "Min",
        "Sum",
        "Mean",
        "And",
        "Or",
        "Xor",
        "Equal",
        "BitwiseAnd",
        "BitwiseOr",
        "BitwiseXor",
    }
)
# ONNX ops that may give a different result each time they run.
NONDETERMINISTIC_OPS = frozenset(
    {
        "RandomNormal",
        "RandomUniform",
        "RandomNormalLike",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
    }
)

_Key = tuple[Hashable, ...]


class _UnsupportedAttributeError(Exception):
    """An attribute this pass does not compare (sparse tensors, subgraphs)."""


def _is_onnx(node: ir.Node) -> bool:
    return node.domain in ("", "ai.onnx")


def _nondeterministic(node: ir.Node) -> bool:
    if not _is_onnx(node):
        return False
    if node.op_type in NONDETERMINISTIC_OPS:
        return True
    if node.op_type == "Dropout":
        training = node.inputs[2] if len(node.inputs) > 2 else None
        return constant_bool(training) is not False
    return False


def _has_subgraph(node: ir.Node) -> bool:
    return any(
        isinstance(a, ir.Attr) and a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
        for a in node.attributes.values()
    )


def _tensor_key(tensor: ir.TensorProtocol) -> Hashable:
    return (tensor.dtype, tuple(tensor.shape), tensor_digest(tensor))


def _attr_key(attr: ir.Attr, ignore_graphs: bool = False) -> Hashable:
    """A hashable form of an attribute that is equal exactly when the attributes are.

    Floats are compared by their bits (0.0 and -0.0 differ; a NaN equals itself).

    Raises:
        _UnsupportedAttributeError: a graph or sparse tensor attribute.
    """
    if attr.is_ref():
        return ("ref", attr.ref_attr_name, attr.type)
    kind, value = attr.type, attr.value
    if kind == ir.AttributeType.FLOAT:
        return (kind, struct.pack("<f", value))
    if kind == ir.AttributeType.FLOATS:
        return (kind, np.asarray(value, dtype=np.float32).tobytes())
    if kind in (ir.AttributeType.INTS, ir.AttributeType.STRINGS):
        return (kind, tuple(value))
    if kind in (ir.AttributeType.INT, ir.AttributeType.STRING):
        return (kind, value)
    if kind == ir.AttributeType.TENSOR:
        return (kind, _tensor_key(value))
    if kind == ir.AttributeType.TENSORS:
        return (kind, tuple(_tensor_key(t) for t in value))
    if kind in (ir.AttributeType.TYPE_PROTO, ir.AttributeType.TYPE_PROTOS):
        return (kind, str(value))
    if ignore_graphs and kind in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
        return (kind,)
    raise _UnsupportedAttributeError(kind)


def _tensor_attrs_equal(a: ir.Node, b: ir.Node) -> bool:
    """Confirm byte for byte the tensor attributes whose digests matched."""
    for name, attr in a.attributes.items():
        other = b.attributes[name]
        if attr.is_ref() or other.is_ref():
            continue
        if attr.type == ir.AttributeType.TENSOR:
            if not tensors_equal(attr.as_tensor(), other.as_tensor()):
                return False
        elif attr.type == ir.AttributeType.TENSORS:
            pairs = zip(attr.as_tensors(), other.as_tensors(), strict=True)
            if not all(tensors_equal(x, y) for x, y in pairs):
                return False
    return True


def _node_key(node: ir.Node, ignore_graphs: bool = False) -> _Key:
    """What makes two nodes compute the same values (bodies aside with ``ignore_graphs``).

    Raises:
        _UnsupportedAttributeError: the node has an attribute this pass does not compare.
    """
    inputs: Sequence[int | None] = [id(v) if v is not None else None for v in node.inputs]
    if _is_onnx(node) and node.op_type in COMMUTATIVE_OPS and None not in inputs:
        inputs = sorted(inputs)  # type: ignore[type-var]
    attributes = tuple(
        sorted((name, _attr_key(attr, ignore_graphs)) for name, attr in node.attributes.items())
    )
    domain = "" if node.domain == "ai.onnx" else node.domain
    return (domain, node.op_type, node.overload, len(node.outputs), tuple(inputs), attributes)


def _may_have_twins(graph: ir.Graph | ir.Function) -> bool:
    """Whether two nodes of ``graph`` read the same inputs with the same op (False: none do).

    Twins agree on every part of ``_node_key`` but the attributes, and so do the nodes
    whose skips are counted; where no two nodes agree even on that, the full keys (and
    the attribute digests in them) need not be computed.
    """
    seen: set[tuple[object, ...]] = set()
    for node in graph:
        inputs: Sequence[int | None] = [id(v) if v is not None else None for v in node.inputs]
        if node.op_type in COMMUTATIVE_OPS and _is_onnx(node) and None not in inputs:
            inputs = sorted(inputs)  # type: ignore[type-var]
        domain = "" if node.domain == "ai.onnx" else node.domain
        key = (domain, node.op_type, node.overload, len(node.outputs), tuple(inputs))
        if key in seen:
            return True
        seen.add(key)
    return False


def _output_slots(model: ir.Model) -> dict[int, list[tuple[ir.Graph | ir.Function, int]]]:
    """Where each value is listed as an output, in any graph or function."""
    slots: dict[int, list[tuple[ir.Graph | ir.Function, int]]] = collections.defaultdict(list)
    for graph in all_graphs(model):
        for index, value in enumerate(graph.outputs):
            slots[id(value)].append((graph, index))
    return slots


def _local_functions(model: ir.Model) -> dict[tuple[str, str, str], ir.Function]:
    return {f.identifier(): f for f in model.functions.values()}


class _Run:
    """State of one run over one model."""

    def __init__(self, model: ir.Model) -> None:
        self.functions = _local_functions(model)
        self.slots = _output_slots(model)
        self.stats: collections.Counter[str] = collections.Counter()
        self._opaque: dict[tuple[str, str, str], str | None] = {}

    def _function_opaque(self, identifier: tuple[str, str, str]) -> str | None:
        """Why calls of a model-local function may not be merged (None: they may)."""
        if identifier not in self._opaque:
            self._opaque[identifier] = "custom-domain"  # until proven otherwise; guards recursion
            function = self.functions[identifier]
            reasons = (
                self._opaque_reason(n) for n in ir.traversal.RecursiveGraphIterator(function)
            )
            self._opaque[identifier] = next((r for r in reasons if r is not None), None)
        return self._opaque[identifier]

    def _opaque_reason(self, node: ir.Node) -> str | None:
        """Why the op's results may differ between two runs, or cannot be known."""
        if _nondeterministic(node):
            return "nondeterministic"
        if node.domain not in STANDARD_DOMAINS:
            identifier = node.op_identifier()
            if identifier not in self.functions:
                return "custom-domain"
            return self._function_opaque(identifier)
        return None

    def _why_not(self, node: ir.Node) -> str | None:
        """The reason a node may not be merged with its twin, or None."""
        if not node.outputs:
            return "no-outputs"
        if _has_subgraph(node):
            return "control-flow"
        return self._opaque_reason(node)

    def eliminate(self, graph: ir.Graph | ir.Function) -> None:
        """Merge each node into an earlier identical one, in graph order."""
        if not _may_have_twins(graph):
            return
        seen: dict[_Key, ir.Node] = {}
        blocked: dict[_Key, str] = {}
        for node in list(graph):
            reason = self._why_not(node)
            try:
                key = _node_key(node, ignore_graphs=reason == "control-flow")
            except _UnsupportedAttributeError:
                key, reason = None, reason or "unsupported-attribute"
            if reason is not None:
                # Count a skip only where an identical-looking node exists.
                if key is not None:
                    if key in blocked:
                        self.stats[f"skipped-{reason}"] += 1
                        logger.debug(
                            "kept %s '%s' despite a twin: %s", node.op_type, node.name, reason
                        )
                    blocked[key] = reason
                continue
            assert key is not None
            kept = seen.get(key)
            if kept is None or not _tensor_attrs_equal(kept, node):
                seen.setdefault(key, node)
                continue
            if self._merge(graph, kept, node):
                self.stats["nodes-merged"] += 1
                logger.info("merged %s '%s' into '%s'", node.op_type, node.name, kept.name)

    def _merge(self, graph: ir.Graph | ir.Function, kept: ir.Node, node: ir.Node) -> bool:
        """Make users of ``node`` read ``kept`` and drop ``node``; False if it must stay.

        Graph outputs keep their names and nothing is added: when a duplicate's output is
        a graph output, the kept node's output takes over its name and place; when both
        are graph outputs (or the output belongs to another scope), the pair is left.
        """
        for old, new in zip(node.outputs, kept.outputs, strict=True):
            old_slots = self.slots.get(id(old), [])
            if not old_slots:
                continue
            if self.slots.get(id(new)) or any(g is not graph for g, _ in old_slots):
                self.stats["skipped-graph-outputs"] += 1
                logger.debug(
                    "kept %s '%s': its output and its twin's are graph outputs",
                    node.op_type,
                    node.name,
                )
                return False
        for old, new in zip(node.outputs, kept.outputs, strict=True):
            old_slots = self.slots.pop(id(old), [])
            if not old_slots:
                continue
            name = old.name
            old.name = None
            new.name = name
            if old.type is not None:
                new.type = old.type
            if old.shape is not None:
                new.shape = old.shape
            for owner, index in old_slots:
                owner.outputs[index] = new
            self.slots[id(new)] = old_slots
        ir.convenience.replace_all_uses_with(list(node.outputs), list(kept.outputs))
        graph.remove(node, safe=True)
        return True


@register_pass
class EliminateCommonSubexpressionsPass(Pass):
    """Merge nodes that compute the same values from the same inputs, in every graph."""

    name = "cse"

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Merge identical nodes in the main graph, its subgraphs and the functions.

        Written here rather than using onnx-ir's CommonSubexpressionEliminationPass,
        which only visits the main graph (not If/Loop/Scan bodies or functions), does not
        normalize the inputs of commutative ops, treats Bernoulli and training-mode
        Dropout as deterministic, and inserts an Identity node when a duplicate's output
        is a graph output. Nodes with subgraphs (If/Loop/Scan) are never merged; the
        nodes inside them are. Outer graphs go first, so their merges reach inner ones.
        """
        state = _Run(model)
        for graph in list(all_graphs(model)):
            state.eliminate(graph)
        stats = {
            "nodes-merged": 0,
            "skipped-graph-outputs": 0,
            "skipped-nondeterministic": 0,
            "skipped-control-flow": 0,
            "skipped-custom-domain": 0,
            "skipped-unsupported-attribute": 0,
        }
        stats.update(state.stats)
        return PassResult(stats)

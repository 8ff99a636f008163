"""Lossless weight sharing: merge identical weights in all scopes, derive exact transforms."""

# The three stages of one pass (identical bytes, then exact transposes / negations /
# scalar multiples, then moving a shared weight to the common scope) work on the same
# per-run state (_Run: digests, scopes, fresh names). Streaming tensor bytes (hashing,
# equality; cse.py uses them too) is tensor_bytes.py; the transform tests are transforms.py.

from __future__ import annotations

__all__ = [
    "DeduplicateWeightsOptions",
    "DeduplicateWeightsPass",
    "tensor_digest",
    "tensors_equal",
]

import collections
import dataclasses
import functools
import logging
from collections.abc import Iterable

import numpy as np
import onnx_ir as ir

from nnopt_graph.core.constants import constant_of_node
from nnopt_graph.core.tensor_size import tensor_dims, tensor_dtype, tensor_nbytes
from nnopt_graph.passes.sharing.tensor_bytes import tensor_digest, tensors_equal
from nnopt_graph.passes.sharing.transforms import (
    _is_transpose,
    _multiset_signature,
    _pattern_signature,
    _scale_between,
)
from nnopt_graph.pipeline.base import Pass, PassContext, PassResult, register_pass

logger = logging.getLogger(__name__)

# Float dtypes that the exact transforms handle (numpy and ONNX Runtime compute them alike).
_TRANSFORM_DTYPES = frozenset({ir.DataType.FLOAT16, ir.DataType.FLOAT, ir.DataType.DOUBLE})
# Candidate pairs tried per signature group before giving up (keeps pathological models linear).
_MAX_BASES_PER_GROUP = 8
_TRANSFORM_STATS = ("transposes-shared", "negations-shared", "multiples-shared")
_STATS = (
    "tensors-merged",
    "bytes-saved",
    *_TRANSFORM_STATS,
    "skipped-graph-input-initializers",
    "skipped-graph-output-weights",
    "skipped-transforms-too-small",
)


# ---------------------------------------------------------------- scopes and weights


class _Scopes:
    """The tree of graphs (main graph and nested If/Loop/Scan bodies) and the names in use."""

    def __init__(self, model: ir.Model) -> None:
        self.parent: dict[int, ir.Graph | None] = {}
        self.depth: dict[int, int] = {}
        self.graphs: list[ir.Graph] = []
        self._names: collections.Counter[str] | None = None
        # Values listed as an output of any graph, which must keep their identity.
        self.output_ids: set[int] = set()
        self._walk(model.graph, None)

    @property
    def names(self) -> collections.Counter[str]:
        """How many values of all graphs hold each name (see ``count_names``)."""
        self.count_names()
        assert self._names is not None
        return self._names

    def count_names(self) -> None:
        """Count the names in use, once: before the first change to the model.

        Names of values removed later stay counted, so fresh names never reuse them.
        """
        if self._names is None:
            self._names = collections.Counter()
            for graph in self.graphs:
                for value in [*graph.inputs, *graph.initializers.values()]:
                    if value.name:
                        self._names[value.name] += 1
                for node in graph:
                    for value in node.outputs:
                        if value.name:
                            self._names[value.name] += 1

    def _walk(self, graph: ir.Graph, parent: ir.Graph | None) -> None:
        self.parent[id(graph)] = parent
        self.depth[id(graph)] = 0 if parent is None else self.depth[id(parent)] + 1
        self.graphs.append(graph)
        self.output_ids.update(id(v) for v in graph.outputs)
        for node in graph:
            if not node.attributes:
                continue
            for attr in node.attributes.values():
                if not isinstance(attr, ir.Attr):
                    continue
                if attr.type == ir.AttributeType.GRAPH:
                    self._walk(attr.as_graph(), graph)
                elif attr.type == ir.AttributeType.GRAPHS:
                    for sub in attr.as_graphs():
                        self._walk(sub, graph)

    def common(self, graphs: Iterable[ir.Graph]) -> ir.Graph:
        """The closest graph that encloses all of ``graphs``."""
        result: ir.Graph | None = None
        for graph in graphs:
            if result is None:
                result = graph
                continue
            a, b = result, graph
            while self.depth[id(a)] > self.depth[id(b)]:
                a = self.parent[id(a)]  # type: ignore[assignment]
            while self.depth[id(b)] > self.depth[id(a)]:
                b = self.parent[id(b)]  # type: ignore[assignment]
            while a is not b:
                a, b = self.parent[id(a)], self.parent[id(b)]  # type: ignore[assignment]
            result = a
        assert result is not None
        return result

    def fresh_name(self, base: str, *, held: bool) -> str:
        """A model-wide unique value name: ``base`` itself when free.

        Args:
            base: the wanted name.
            held: the value being named holds ``base`` now (counted once already).
        """
        if self.names[base] <= (1 if held else 0):
            if not held:
                self.names[base] += 1
            return base
        i = 1
        while self.names[f"{base}__{i}"]:
            i += 1
        if held:
            self.names[base] -= 1
        name = f"{base}__{i}"
        self.names[name] += 1
        return name


@dataclasses.dataclass
class _Weight:
    """A constant tensor the model reads: an initializer, or a Constant node's ``value``."""

    value: ir.Value
    graph: ir.Graph
    node: ir.Node | None
    tensor: ir.TensorProtocol
    pinned: str | None = None  # why it must stay as it is
    removed: bool = False

    @property
    def name(self) -> str:
        return self.value.name or "<unnamed>"

    # Computed once: a loaded tensor builds a new Shape (and DataType) on every access.
    @functools.cached_property
    def shape(self) -> tuple[int, ...]:
        return tensor_dims(self.tensor)

    @functools.cached_property
    def dtype(self) -> ir.DataType:
        return tensor_dtype(self.tensor)

    @functools.cached_property
    def nbytes(self) -> int:
        return tensor_nbytes(self.tensor, self.shape)


def _collect(scopes: _Scopes) -> list[_Weight]:
    """Every weight of the main graph and its subgraphs, in a stable order."""
    weights = []
    for graph in scopes.graphs:
        for value in graph.initializers.values():
            if value.const_value is None:
                continue
            weight = _Weight(value, graph, None, value.const_value)
            if value.is_graph_input():
                weight.pinned = "graph-input"
            elif id(value) in scopes.output_ids:
                weight.pinned = "graph-output"
            weights.append(weight)
        for node in graph:
            tensor = constant_of_node(node)
            if tensor is None:
                continue
            weight = _Weight(node.outputs[0], graph, node, tensor)
            if id(node.outputs[0]) in scopes.output_ids:
                weight.pinned = "graph-output"
            weights.append(weight)
    return weights


def _remove(weight: _Weight) -> None:
    """Drop a weight whose uses were all redirected."""
    if weight.node is None:
        assert weight.value.name is not None
        weight.graph.initializers.pop(weight.value.name)
    else:
        weight.graph.remove(weight.node, safe=True)
    weight.removed = True


def _move_to(weight: _Weight, scope: ir.Graph, scopes: _Scopes) -> None:
    """Make ``weight`` an initializer of ``scope``, which encloses its graph (in place)."""
    if weight.node is None and weight.graph is scope:
        return
    old_name = weight.name
    if weight.node is None:
        value = weight.value
        weight.graph.initializers.pop(old_name)
        value.name = scopes.fresh_name(old_name, held=True)
    else:
        value = ir.Value(
            name=scopes.fresh_name(old_name, held=True),
            type=ir.TensorType(weight.tensor.dtype),
            shape=ir.Shape(weight.shape),
            const_value=weight.tensor,
        )
        weight.value.replace_all_uses_with(value)
        weight.graph.remove(weight.node, safe=True)
    if value.type is None:
        value.type = ir.TensorType(weight.tensor.dtype)
    if value.shape is None:
        value.shape = ir.Shape(weight.shape)
    scope.initializers.add(value)
    where = "the main graph" if scopes.parent[id(scope)] is None else f"graph '{scope.name}'"
    logger.info("moved weight '%s' to %s as initializer '%s'", old_name, where, value.name)
    weight.value, weight.graph, weight.node = value, scope, None


def _serialized_size(node: ir.Node, extra: ir.TensorProtocol | None) -> int:
    """Bytes the new node (and its new scalar constant) add to the file."""
    size = ir.serde.serialize_node(node).ByteSize()
    if extra is not None:
        size += ir.serde.serialize_tensor(extra).ByteSize()
    return size


# ---------------------------------------------------------------- the pass


@dataclasses.dataclass(frozen=True)
class DeduplicateWeightsOptions:
    """Options of dedup.

    Attributes:
        transforms: also share 2-D float weights that are an exact transpose, negation
            or scalar multiple of another, through a Transpose, Neg or Mul node.
    """

    transforms: bool = True


class _Run:
    """State of one run of the pass over one model."""

    def __init__(self, model: ir.Model) -> None:
        self.model = model
        self.scopes = _Scopes(model)
        self.stats: collections.Counter[str] = collections.Counter()
        # id -> (tensor, digest); holding the tensor keeps its id from being reused.
        self._digests: dict[int, tuple[ir.TensorProtocol, bytes]] = {}
        self._skips_counted: set[int] = set()
        # The weights as last collected, while no merge has moved or removed one since.
        self._weights: list[_Weight] | None = None

    def rescan(self) -> None:
        """Walk the model again after changes made outside ``_merge``."""
        self.scopes = _Scopes(self.model)
        self._weights = None

    def weights(self) -> list[_Weight]:
        """Every weight, in ``_collect``'s order (collected again only after a change)."""
        if self._weights is None:
            self._weights = _collect(self.scopes)
        return self._weights

    def digest(self, tensor: ir.TensorProtocol, nbytes: int | None = None) -> bytes:
        key = id(tensor)
        if key not in self._digests:
            self._digests[key] = (tensor, tensor_digest(tensor, nbytes))
        return self._digests[key][1]

    # -------------------------------------------------------- byte-identical weights

    def merge_identical(self) -> None:
        """Merge every group of byte-identical weights into one, in their common scope.

        Only tensors whose dtype and shape occur more than once are hashed at all;
        equal digests are confirmed by a byte comparison before anything is merged.
        """
        by_meta: dict[tuple[ir.DataType, tuple[int, ...]], list[_Weight]] = collections.defaultdict(
            list
        )
        for weight in self.weights():
            by_meta[(weight.dtype, weight.shape)].append(weight)
        for group in by_meta.values():
            if len(group) < 2:
                continue
            by_digest: dict[bytes, list[_Weight]] = collections.defaultdict(list)
            for weight in group:
                by_digest[self.digest(weight.tensor, weight.nbytes)].append(weight)
            for same in by_digest.values():
                if len(same) < 2:
                    continue
                classes: list[list[_Weight]] = []
                for weight in same:
                    for members in classes:
                        if tensors_equal(members[0].tensor, weight.tensor):
                            members.append(weight)
                            break
                    else:
                        if classes:
                            logger.debug(
                                "weights '%s' and '%s': same hash, different bytes",
                                classes[0][0].name,
                                weight.name,
                            )
                        classes.append([weight])
                for members in classes:
                    if len(members) > 1:
                        self._merge(members)

    def _count_skip(self, weight: _Weight) -> None:
        if id(weight.value) in self._skips_counted:
            return
        self._skips_counted.add(id(weight.value))
        key = (
            "skipped-graph-input-initializers"
            if weight.pinned == "graph-input"
            else "skipped-graph-output-weights"
        )
        self.stats[key] += 1

    def _merge(self, members: list[_Weight]) -> None:
        free = [w for w in members if not w.pinned]
        for weight in members:
            if weight.pinned:
                self._count_skip(weight)
                logger.debug(
                    "kept weight '%s' although it has a copy: it is a %s",
                    weight.name,
                    weight.pinned,
                )
        if len(free) < 2:
            return
        self.scopes.count_names()  # before anything changes
        self._weights = None  # weights move and go: collect them again next time
        scope = self.scopes.common(w.graph for w in free)
        keep = next((w for w in free if w.node is None and w.graph is scope), None)
        if keep is None:
            # No copy lives in the common scope as an initializer: lift the first one there.
            keep = free[0]
            _move_to(keep, scope, self.scopes)
        rest = [w for w in free if w is not keep]
        for weight in rest:
            weight.value.replace_all_uses_with(keep.value)
            _remove(weight)
            self.stats["tensors-merged"] += 1
            self.stats["bytes-saved"] += weight.nbytes
            logger.info(
                "merged weight '%s' into '%s' (%d bytes)",
                weight.name,
                keep.name,
                weight.nbytes,
            )

    # -------------------------------------------------------- exact transforms

    def share_transforms(self) -> None:
        """Replace weights that are a transpose, negation or scalar multiple of another.

        Candidates are grouped by cheap streamed signatures before any pair is compared:
        transposes by (dtype, sorted shape, order-independent hash of the elements);
        negations and multiples by (dtype, shape, hash of the zero pattern and of the
        signs up to a global flip). Only members of one group are compared exactly.
        Multiples go first: a weight they derive from can still become a transpose.
        """
        candidates = [
            w
            for w in self.weights()
            if not w.pinned and w.dtype in _TRANSFORM_DTYPES and len(w.shape) == 2 and w.nbytes
        ]
        by_shape: dict[tuple[object, ...], list[_Weight]] = collections.defaultdict(list)
        for weight in candidates:
            by_shape[(weight.dtype, weight.shape)].append(weight)
        for group in by_shape.values():
            if len(group) < 2:
                continue
            by_pattern: dict[tuple[bytes, bytes], list[_Weight]] = collections.defaultdict(list)
            for weight in group:
                signature = _pattern_signature(weight.tensor)
                if signature is None:
                    logger.debug(
                        "weight '%s' holds NaN or infinity: no multiple sharing", weight.name
                    )
                    continue
                by_pattern[signature].append(weight)
            for same in by_pattern.values():
                self._pair_up(same, "Mul")

        by_pair: dict[tuple[object, ...], list[_Weight]] = collections.defaultdict(list)
        for weight in candidates:
            if weight.removed:
                continue
            by_pair[(weight.dtype, tuple(sorted(weight.shape)))].append(weight)
        for group in by_pair.values():
            if len(group) < 2:
                continue
            by_multiset: dict[int, list[_Weight]] = collections.defaultdict(list)
            for weight in group:
                by_multiset[_multiset_signature(weight.tensor)].append(weight)
            for same in by_multiset.values():
                self._pair_up(same, "Transpose")

    def _pair_up(self, group: list[_Weight], kind: str) -> None:
        """Within a signature group, derive each weight from an earlier one where exact."""
        if len(group) < 2:
            return
        self.scopes.count_names()  # before anything changes
        bases: list[_Weight] = []
        for weight in group:
            matched = False
            for base in bases:
                outcome = self._try_derive(base, weight, kind)
                if outcome == "no" and kind == "Mul":
                    # s * base == weight may not be exact while weight / s == base is;
                    # then the base (and what was derived from it) reads this weight.
                    outcome = self._try_derive(weight, base, kind)
                if outcome != "no":
                    matched = True
                    break
            bases = [b for b in bases if not b.removed]
            if (not matched or not weight.removed) and len(bases) < _MAX_BASES_PER_GROUP:
                bases.append(weight)

    def _try_derive(self, base: _Weight, other: _Weight, kind: str) -> str:
        """Replace ``other`` by a node computing it from ``base`` where exact and smaller.

        Returns:
            "done" when replaced, "too-small" when exact but not worth a node, else "no".
        """
        scale: np.generic | None = None
        attributes: list[ir.Attr] = []
        if kind == "Transpose":
            if not _is_transpose(base.tensor, other.tensor):
                return "no"
            op, stat, attributes = "Transpose", "transposes-shared", [ir.AttrInt64s("perm", [1, 0])]
        else:
            scale = _scale_between(base.tensor, other.tensor)
            if scale is None:
                return "no"
            if scale == -1:
                op, stat, scale = "Neg", "negations-shared", None
            else:
                op, stat = "Mul", "multiples-shared"
        graph = other.graph
        scale_value = self._find_scalar(scale, graph) if scale is not None else None
        scale_tensor = None
        if scale is not None and scale_value is None:
            scale_tensor = ir.tensor(np.asarray(scale), name=f"{other.name}_scale")
        probe_inputs = [ir.Value(name=base.name)]
        if scale is not None:
            probe_inputs.append(ir.Value(name=f"{other.name}_scale"))
        probe = ir.Node(
            "",
            op,
            probe_inputs,
            attributes,
            outputs=[ir.Value(name=other.name)],
            name=f"{other.name}_{op}",
        )
        added = _serialized_size(probe, scale_tensor)
        if added >= other.tensor.nbytes:
            logger.debug(
                "weight '%s' is %s of '%s', kept: a %s node adds %d bytes, it has %d",
                other.name,
                op,
                base.name,
                op,
                added,
                other.tensor.nbytes,
            )
            self.stats["skipped-transforms-too-small"] += 1
            return "too-small"
        # The base must be visible from the derived weight's graph, and an initializer:
        # a Constant node could come after the place the new node goes.
        _move_to(base, self.scopes.common([base.graph, graph]), self.scopes)
        if scale_tensor is not None:
            scale_tensor.name = self.scopes.fresh_name(f"{other.name}_scale", held=False)
            scale_value = ir.Value(
                name=scale_tensor.name,
                type=ir.TensorType(scale_tensor.dtype),
                shape=ir.Shape([]),
                const_value=scale_tensor,
            )
            graph.initializers.add(scale_value)
        inputs = [base.value] + ([scale_value] if scale_value is not None else [])
        output = ir.Value(type=ir.TensorType(other.tensor.dtype), shape=ir.Shape(other.shape))
        node = ir.Node("", op, inputs, attributes, outputs=[output], name=f"{other.name}_{op}")
        name = other.name
        other.value.replace_all_uses_with(output)
        _remove(other)
        output.name = name
        if len(graph):
            graph.insert_before(graph[0], node)
        else:
            graph.append(node)
        saved = other.tensor.nbytes - (scale_tensor.nbytes if scale_tensor is not None else 0)
        self.stats[stat] += 1
        self.stats["bytes-saved"] += saved
        logger.info("weight '%s' is now %s of '%s' (%d bytes saved)", name, op, base.name, saved)
        return "done"

    def _find_scalar(self, scale: np.generic, graph: ir.Graph) -> ir.Value | None:
        """An existing scalar initializer equal to ``scale`` that ``graph`` can read."""
        data = np.asarray(scale).tobytes()
        dtype = ir.DataType.from_numpy(np.asarray(scale).dtype)
        scope: ir.Graph | None = graph
        while scope is not None:
            for value in scope.initializers.values():
                tensor = value.const_value
                if (
                    tensor is not None
                    and not value.is_graph_input()
                    and tensor.dtype == dtype
                    and tuple(tensor.shape) == ()
                    and tensor.tobytes() == data
                ):
                    return value
            scope = self.scopes.parent[id(scope)]
        return None


@register_pass
class DeduplicateWeightsPass(Pass):
    """Share identical weights across all graphs, and exact transposes/negations/multiples."""

    name = "dedup"
    Options = DeduplicateWeightsOptions

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Merge byte-identical weights, then (option ``transforms``) derive exact transforms.

        Written here rather than using onnx-ir's DeduplicateInitializersPass or
        DeduplicateHashedInitializersPass: those work graph by graph, so copies held in
        two If branches (merged models) stay copies; they skip Constant-node weights and
        load each tensor whole to hash it. This pass lifts a shared weight to the closest
        graph enclosing all its users and streams external data in chunks.
        Functions are left alone: they cannot read weights from outside themselves.
        """
        stats = dict.fromkeys(_STATS, 0)
        stats["skipped-function-constants"] = sum(
            1
            for function in model.functions.values()
            for node in ir.traversal.RecursiveGraphIterator(function)
            if constant_of_node(node) is not None
        )
        if model.ir_version is not None and model.ir_version < 4:
            # Before IR 4 every initializer must also be a graph input: nothing may move.
            logger.debug("dedup skipped: IR version %d < 4", model.ir_version)
            stats["skipped-old-ir-version"] = 1
            return PassResult(stats)
        state = _Run(model)
        state.merge_identical()
        if self.options.transforms:
            state.share_transforms()
            if any(state.stats[k] for k in _TRANSFORM_STATS):
                # New scalar constants may equal weights elsewhere: merge them too, so a
                # second run finds nothing left to do.
                state.rescan()
                state.merge_identical()
        stats.update(state.stats)
        return PassResult(stats)

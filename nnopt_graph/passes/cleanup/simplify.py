"""Lossless cleanup passes that the other passes rely on."""

from __future__ import annotations

__all__ = [
    "EliminateDeadCodePass",
    "EliminateNoOpsPass",
    "FoldBatchNormPass",
    "FoldConstantsPass",
    "InferShapesPass",
    "LiftConstantsPass",
    "SortTopologicallyPass",
]

import dataclasses
import logging

import onnx_ir as ir
import onnx_ir.passes.common as ir_passes

from nnopt_graph.analysis.walk import (
    STANDARD_DOMAINS,
    all_graphs,
    all_nodes,
    count_nodes,
    model_graphs,
)
from nnopt_graph.core.annotations import annotations_kept
from nnopt_graph.core.constants import constant_bool
from nnopt_graph.passes.cleanup.screens import (
    already_sorted,
    drop_stale_uses,
    folder_may_act,
    nothing_unused,
    opsets_may_go,
)
from nnopt_graph.pipeline.base import Pass, PassContext, PassResult, register_pass

logger = logging.getLogger(__name__)


def _node_names(model: ir.Model) -> dict[int, tuple[ir.Node, str | None]]:
    return {id(n): (n, n.name) for g in all_graphs(model) for n in g}


def _restore_node_names(saved: dict[int, tuple[ir.Node, str | None]]) -> int:
    """Give nodes a rewrite renamed (inlined from a branch, say) their old names back.

    A name is restored only where no other node of the node's graph holds it.
    Returns how many names were restored.
    """
    restored = 0
    by_graph: dict[int, set[str]] = {}
    for node, old in saved.values():
        graph = node.graph
        if graph is None or not old or node.name == old:
            continue
        taken = by_graph.get(id(graph))
        if taken is None:
            taken = by_graph[id(graph)] = {n.name for n in graph if n.name}
        if old in taken:
            continue
        taken.discard(node.name or "")
        node.name = old
        taken.add(old)
        restored += 1
    return restored


def _initializer_count(model: ir.Model) -> int:
    return sum(len(g.initializers) for g in model_graphs(model))


def _initializer_tensors(model: ir.Model) -> dict[int, tuple[ir.Value, ir.TensorProtocol]]:
    """Each initializer holding a tensor, by value id (a cheap snapshot: no sizes)."""
    return {
        id(v): (v, v.const_value)
        for g in model_graphs(model)
        for v in g.initializers.values()
        if v.const_value is not None
    }


def _bytes_dropped(
    before: dict[int, tuple[ir.Value, ir.TensorProtocol]],
    after: dict[int, tuple[ir.Value, ir.TensorProtocol]],
) -> int:
    """Bytes of the initializer tensors in ``before`` minus those in ``after``.

    Only tensors that differ are sized: an initializer still holding the same tensor
    counts on both sides.
    """

    def unchanged(key: int, entry: tuple[ir.Value, ir.TensorProtocol], other: dict) -> bool:
        match = other.get(key)
        return match is not None and match[0] is entry[0] and match[1] is entry[1]

    gone = sum(e[1].nbytes for k, e in before.items() if not unchanged(k, e, after))
    new = sum(e[1].nbytes for k, e in after.items() if not unchanged(k, e, before))
    return gone - new


def _count_op(model: ir.Model, op_type: str) -> int:
    return sum(1 for n in all_nodes(model) if n.op_type == op_type and n.domain in STANDARD_DOMAINS)


class _LiftConstants(ir_passes.LiftConstantsToInitializersPass):
    """onnx-ir's lifting, but a Constant it cannot convert (sparse_value) is skipped, not fatal."""

    def _constant_node_attribute_to_tensor(self, node, attr_name, attr_value, initializer_name):  # type: ignore[no-untyped-def]
        try:
            return super()._constant_node_attribute_to_tensor(
                node, attr_name, attr_value, initializer_name
            )
        except ValueError:
            logger.debug("Constant %s: attribute %s cannot be lifted", node.name, attr_name)
            return None


@register_pass
class LiftConstantsPass(Pass):
    """Turn Constant nodes into initializers so every weight is seen as a weight."""

    name = "lift-constants"

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Lift Constant nodes of the main graph and subgraphs (functions cannot hold weights)."""
        function_nodes = [
            n for f in model.functions.values() for n in ir.traversal.RecursiveGraphIterator(f)
        ]
        in_functions = sum(1 for n in function_nodes if n.op_type == "Constant")
        if not any(n.op_type == "Constant" for g in model_graphs(model) for n in g):
            # Nothing for onnx-ir's lifting to look at (it reads only Constant nodes).
            kept = sum(
                1
                for n in function_nodes
                if n.op_type == "Constant" and n.domain in STANDARD_DOMAINS
            )
            return PassResult(
                {
                    "constants-lifted": 0,
                    "skipped-constants-in-functions": in_functions,
                    "skipped-constants-kept": kept - in_functions,
                }
            )
        before = _count_op(model, "Constant")
        _LiftConstants(lift_all_constants=True, size_limit=0)(model)
        after = _count_op(model, "Constant")
        return PassResult(
            {
                "constants-lifted": before - after,
                "skipped-constants-in-functions": in_functions,
                "skipped-constants-kept": after - in_functions,
            }
        )


def _is_graph_output_anywhere(value: ir.Value) -> bool:
    return value.is_graph_output()


def _bypass(node: ir.Node, source: ir.Value, result: ir.Value) -> bool:
    """Make users of ``result`` read ``source`` instead and drop ``node``; False if unsafe.

    Written here rather than using onnx-ir's IdentityEliminationPass, which renames an
    outer-scope or graph-output value when the Identity feeds a subgraph output.
    """
    graph = node.graph
    assert graph is not None
    if not result.is_graph_output():
        result.replace_all_uses_with(source)
        graph.remove(node, safe=True)
        return True
    producer = source.producer()
    if (
        producer is None
        or producer.graph is not graph
        or source.is_graph_output()
        or source.is_graph_input()
        or source.is_initializer()
    ):
        return False
    ir.convenience.replace_all_uses_with(result, source, replace_graph_outputs=True)
    name = result.name
    result.name = None
    source.name = name
    if source.type is None:
        source.type = result.type
    if source.shape is None:
        source.shape = result.shape
    graph.remove(node, safe=True)
    return True


_NO_OP_TYPES = frozenset({"Identity", "Dropout", "Cast", "Transpose"})


def _no_op_source(node: ir.Node) -> ir.Value | None:
    """The input a node passes through unchanged, or None when it computes something."""
    if node.domain not in STANDARD_DOMAINS or not node.inputs or node.inputs[0] is None:
        return None
    x = node.inputs[0]
    op = node.op_type
    if op == "Identity":
        return x
    if op == "Dropout":
        training = constant_bool(node.inputs[2] if len(node.inputs) > 2 else None)
        mask_used = len(node.outputs) > 1 and (
            node.outputs[1].uses() or node.outputs[1].is_graph_output()
        )
        return x if training is False and not mask_used else None
    if op == "Cast":
        to = node.attributes.get("to")
        if to is not None and x.dtype is not None and x.dtype == ir.DataType(to.as_int()):
            return x
        return None
    if op == "Transpose":
        perm = node.attributes.get("perm")
        if perm is not None and list(perm.as_ints()) == list(range(len(perm.as_ints()))):
            return x
        return None
    return None


@register_pass
class EliminateNoOpsPass(Pass):
    """Remove Identity, inference Dropout, same-type Cast and identity Transpose nodes."""

    name = "eliminate-no-ops"

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Bypass every no-op node, in all graphs and functions."""
        removed = kept = 0
        for graph in list(all_graphs(model)):
            for node in [n for n in graph if n.op_type in _NO_OP_TYPES]:
                source = _no_op_source(node)
                if source is None:
                    continue
                if _bypass(node, source, node.outputs[0]):
                    removed += 1
                    logger.info("removed no-op %s '%s'", node.op_type, node.name)
                else:
                    kept += 1
                    logger.debug(
                        "kept %s '%s': it links a graph input/output", node.op_type, node.name
                    )
        return PassResult({"nodes-removed": removed, "skipped-output-links": kept})


@dataclasses.dataclass(frozen=True)
class FoldConstantsOptions:
    """Options of fold-constants."""

    max_input_elements: int = dataclasses.field(
        default=1 << 24, metadata={"range": (1, None, True, True)}
    )
    small_output_elements: int = dataclasses.field(
        default=64, metadata={"range": (0, None, True, True)}
    )
    max_rounds: int = dataclasses.field(default=4, metadata={"range": (1, None, True, True)})


_SHAPE_READERS = frozenset({"Shape", "Size"})


@register_pass
class FoldConstantsPass(Pass):
    """Fold nodes whose inputs are all constant, never growing the model."""

    name = "fold-constants"
    Options = FoldConstantsOptions

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Fold with onnxscript's folder; big outputs only when they replace their inputs.

        An output above ``small-output-elements`` is stored only if it is no larger than
        the constant inputs it makes dead (onnxscript's size compensation), so folding
        never grows the weights by more than a few shape-sized constants.
        """
        # One walk of the model for every count taken before folding.
        nodes = list(all_nodes(model))
        local = {(f.domain, f.name) for f in model.functions.values()}
        custom = {
            id(n)
            for n in nodes
            if n.domain not in STANDARD_DOMAINS and (n.domain, n.op_type) not in local
        }
        stats = {
            "nodes-folded": 0,
            "constants-lifted": 0,
            "bytes-saved": 0,
            "skipped-custom-domain-nodes": len(custom),
        }
        if not folder_may_act(nodes, custom):
            logger.debug("fold-constants: no node the folder could change")
            return PassResult(stats)
        import onnxscript.optimizer

        names = _node_names(model)
        constants_before = sum(
            1 for n in nodes if n.op_type == "Constant" and n.domain in STANDARD_DOMAINS
        )
        before_nodes = len(nodes) - constants_before
        initializers_before = _initializer_tensors(model)
        # Shapes that full inference derives let more Shape/Gather chains fold; repeat
        # until nothing folds so that a second run of the pass finds nothing to do.
        # Whole-model inference only pays where an op reads shapes (Shape, Size): the
        # folder infers node by node itself. It costs a full serialize/infer/merge.
        full_inference = any(
            n.op_type in _SHAPE_READERS and n.domain in STANDARD_DOMAINS for n in nodes
        )
        del nodes
        modified = False
        with annotations_kept(model):
            for _ in range(self.options.max_rounds):
                if full_inference:
                    ir_passes.ShapeInferencePass(strict_mode=False)(model)
                folded = onnxscript.optimizer.fold_constants(
                    model,
                    input_size_limit=self.options.max_input_elements,
                    output_size_limit=self.options.small_output_elements,
                    should_fold=lambda node: False if id(node) in custom else None,
                )
                if not folded.modified:
                    break
                modified = True
                ir_passes.RemoveUnusedNodesPass()(model)
        if not modified:  # nothing folded: the counts taken before still hold
            return PassResult(stats)
        # The folder prefixes the names of nodes it inlines from a constant-condition If.
        _restore_node_names(names)
        constants_after = _count_op(model, "Constant")
        after_nodes = count_nodes(model) - constants_after
        # The folder writes what it computes (a folded Shape, say) as Constant nodes: make
        # them initializers like lift-constants did before, so a second run finds nothing.
        lifted = 0
        if constants_after > constants_before:
            lifted = LiftConstantsPass().run(model, context).stats["constants-lifted"]
        saved = _bytes_dropped(initializers_before, _initializer_tensors(model))
        stats.update(
            {
                "nodes-folded": max(before_nodes - after_nodes, 0),
                "constants-lifted": max(lifted, 0),
                "bytes-saved": max(saved, 0),
            }
        )
        return PassResult(stats)


_BN_HOSTS = frozenset({"Conv", "ConvTranspose", "Gemm"})


@register_pass
class FoldBatchNormPass(Pass):
    """Fold inference BatchNormalization into the Conv, ConvTranspose or Gemm before it."""

    name = "fold-batchnorm"

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Apply onnxscript's BatchNormalization fusion rules everywhere.

        The fused node takes the name of the Conv, ConvTranspose or Gemm it replaces (the
        rules would name it ``node_Conv_<n>``); its output keeps the BatchNormalization's.
        """
        before = _count_op(model, "BatchNormalization")
        if not before:  # nothing for the rules to match: skip their walk of every node
            return PassResult({"batchnorms-folded": 0, "skipped-batchnorms-kept": 0})
        from onnxscript.rewriter import RewriteRuleSet
        from onnxscript.rewriter.rules.common import (
            fuse_batchnorm_into_conv_rule,
            fuse_batchnorm_into_conv_transpose_rule,
            fuse_batchnorm_into_gemm_rule,
        )

        # BatchNormalization output -> name of the node it may be folded into.
        fold_into: dict[str, str] = {}
        old_nodes: set[int] = set()
        for node in all_nodes(model):
            old_nodes.add(id(node))
            if node.op_type != "BatchNormalization" or not node.inputs or node.inputs[0] is None:
                continue
            producer = node.inputs[0].producer()
            if producer is not None and producer.op_type in _BN_HOSTS and producer.name:
                if node.outputs[0].name:
                    fold_into[node.outputs[0].name] = producer.name
        rules = RewriteRuleSet(
            [
                fuse_batchnorm_into_conv_rule,
                fuse_batchnorm_into_conv_transpose_rule,
                fuse_batchnorm_into_gemm_rule,
            ]
        )
        rules.apply_to_model(model)
        for node in all_nodes(model):
            if id(node) in old_nodes or node.op_type not in _BN_HOSTS or not node.outputs:
                continue
            name = fold_into.get(node.outputs[0].name or "")
            if name is not None:
                node.name = name
        after = _count_op(model, "BatchNormalization")
        return PassResult({"batchnorms-folded": before - after, "skipped-batchnorms-kept": after})


@register_pass
class EliminateDeadCodePass(Pass):
    """Remove nodes, initializers, functions and opsets that no output depends on."""

    name = "eliminate-dead-code"

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Run onnx-ir's unused-node, -function and -opset removal."""
        funcs = len(model.functions)
        graphs = list(all_graphs(model))
        drop_stale_uses(graphs)
        nodes = inits = 0
        removed = False
        if not nothing_unused(model, graphs):
            nodes, inits = count_nodes(model), _initializer_count(model)
            removed = ir_passes.RemoveUnusedNodesPass()(model).modified
        # The other two walk every node; skip them where they cannot remove anything.
        if model.functions:
            ir_passes.RemoveUnusedFunctionsPass()(model)
        if opsets_may_go(model):
            ir_passes.RemoveUnusedOpsetsPass()(model)
        return PassResult(
            {
                # Unmodified, onnx-ir's pass removed no node and no initializer.
                "nodes-removed": nodes - count_nodes(model) if removed else 0,
                "initializers-removed": inits - _initializer_count(model) if removed else 0,
                "functions-removed": funcs - len(model.functions),
            }
        )


def _node_order(model: ir.Model) -> list[list[int]]:
    return [[id(n) for n in g] for g in all_graphs(model)]


@register_pass
class SortTopologicallyPass(Pass):
    """Order nodes so each comes after the producers of its inputs."""

    name = "sort-topologically"

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Run onnx-ir's stable topological sort."""
        if already_sorted(model):
            return PassResult({"nodes-moved": 0})
        before = _node_order(model)
        ir_passes.TopologicalSortPass()(model)
        after = _node_order(model)
        moved = sum(
            sum(1 for a, b in zip(x, y, strict=True) if a != b)
            for x, y in zip(before, after, strict=True)
        )
        return PassResult({"nodes-moved": moved})


def _shape_signature(model: ir.Model) -> dict[int, tuple[object, object]]:
    signature: dict[int, tuple[object, object]] = {}
    for graph in model_graphs(model):
        for node in graph:
            for value in node.outputs:
                shape = tuple(value.shape) if value.shape is not None else None
                signature[id(value)] = (value.dtype, shape)
    return signature


@register_pass
class InferShapesPass(Pass):
    """Annotate values with the types and shapes ONNX shape inference derives."""

    name = "infer-shapes"

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Run ONNX shape inference (non-strict: custom ops stay unannotated)."""
        before = _shape_signature(model)
        ir_passes.ShapeInferencePass(strict_mode=False)(model)
        after = _shape_signature(model)
        changed = sum(1 for key, sig in after.items() if before.get(key) != sig)
        return PassResult({"values-annotated": changed})

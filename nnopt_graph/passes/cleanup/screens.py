"""Cheap screens for the cleanup passes: proofs that a library step would change nothing.

Each answers "could onnx-ir's (or onnxscript's) step change this model?" in one walk,
so a pass skips the step, and its own walks and imports, on models where it cannot
act (most of them: generated and exported graphs are usually clean already). The
screens err towards running the step; tests hold each against the step it skips.
"""

from __future__ import annotations

__all__ = [
    "FOLDER_OPS",
    "already_sorted",
    "drop_stale_uses",
    "folder_may_act",
    "nothing_unused",
    "opsets_may_go",
]

import onnx_ir as ir

from nnopt_graph.analysis.walk import all_graphs

# onnxscript's folder (run without its own shape inference) changes a node in two ways
# only: a partial evaluator registered for its op, or evaluating it when every input is
# constant. These are the ops of its evaluator registry (a test checks the list against
# it) but Add, whose evaluator never replaces a node: it only records shape values for
# the other evaluators.
FOLDER_OPS = frozenset(
    """Abs Cast CastLike Concat ConcatFromSequence Dropout Expand Gather Identity If Reshape
    SequenceAt SequenceConstruct Shape Size SplitToSequence Squeeze""".split()
)


def folder_may_act(nodes: list[ir.Node], custom: set[int]) -> bool:
    """Whether onnxscript's folder could change any of ``nodes`` (False: it cannot).

    A cheap screen that spares the folder's walk, and importing onnxscript, on models
    where nothing folds: no node of an op it has an evaluator for, and no node of an
    ONNX domain whose inputs are all constant (one without inputs counts as such).
    """
    for node in nodes:
        if node.op_type in FOLDER_OPS:
            return True
        if id(node) in custom:
            continue  # the pass tells the folder to leave these alone
        if all(v is None or v.const_value is not None for v in node.inputs):
            return True
    return False


def drop_stale_uses(graphs: list[ir.Graph | ir.Function]) -> None:
    """Disconnect uses by nodes that are no longer part of the model (``graphs``: all of it).

    Rewrites (onnxscript's folder of a constant-condition If among them) can leave a
    removed node, or a whole dropped branch, still registered as a user of live values;
    onnx-ir's unused-node pass would then keep those values and their producers alive.
    """
    live = {id(g) for g in graphs}

    def drop(value: ir.Value) -> None:
        for use in list(value.uses()):
            graph = use.node.graph
            if graph is None or id(graph) not in live:
                use.node.replace_input_with(use.idx, None)

    for graph in graphs:
        values: list[ir.Value] = list(graph.inputs)
        if isinstance(graph, ir.Graph):
            values.extend(graph.initializers.values())
        values.extend(out for node in graph for out in node.outputs)
        for value in values:
            for use in value.uses():
                user_graph = use.node.graph
                if user_graph is None or id(user_graph) not in live:
                    drop(value)
                    break


def nothing_unused(model: ir.Model, graphs: list[ir.Graph | ir.Function]) -> bool:
    """Whether onnx-ir's unused-node pass would change nothing (False: it may).

    It removes nodes none of whose outputs is used or a graph output, initializers of
    the main graph that nothing uses, trailing empty inputs, unused optional outputs, and
    an inference BatchNormalization's ``training_mode``: with every output used and none
    of the rest present, there is nothing for it to do. Stale uses must be dropped first.
    """
    for graph in graphs:
        outputs = {id(v) for v in graph.outputs}
        for node in graph:
            if node.op_type == "BatchNormalization" or (node.inputs and node.inputs[-1] is None):
                return False
            for out in node.outputs:
                if not out.uses() and id(out) not in outputs:
                    return False
    main = model.graph
    boundary = {id(v) for v in main.inputs} | {id(v) for v in main.outputs}
    return all(v.uses() or id(v) in boundary for v in main.initializers.values())


def opsets_may_go(model: ir.Model) -> bool:
    """Whether onnx-ir's unused-opset pass could remove an import of this model.

    It always keeps the default domain, and in the main graph the domains of functions.
    """
    keep = {"", *(f.domain for f in model.functions.values())}
    if not set(model.graph.opset_imports) <= keep:
        return True
    return any(not set(f.opset_imports) <= {""} for f in model.functions.values())


def already_sorted(model: ir.Model) -> bool:
    """Whether onnx-ir's sort would leave the model as it is (False: it may not).

    Without subgraphs, its stable sort keeps an order in which every node comes after
    the producers of its inputs; it also names unnamed nodes and outputs, so those too
    must be absent. Graphs with subgraphs are left to the sort itself.
    """
    graphs = list(all_graphs(model))
    if len(graphs) != 1 + len(model.functions):
        return False
    for graph in graphs:
        done: set[int] = set()
        for node in graph:
            if node.name is None or any(o.name is None for o in node.outputs):
                return False
            for value in node.inputs:
                producer = value.producer() if value is not None else None
                if producer is not None and id(producer) not in done:
                    return False
            done.add(id(node))
    return True

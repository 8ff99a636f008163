"""The If branch every calibration sample takes, quantized as if it were the main graph.

Exported models put whole networks inside an If on a configuration input (silero-vad:
its 16 kHz and 8 kHz networks, chosen by ``sr``). ONNX Runtime hands out only main-graph
values, so calibration could not see inside, and quantize-int8 left such models float.
When every calibration sample takes the same branch of a main-graph If, the pass works on
a copy where that branch's nodes stand in the main graph in the If's place (``inline``),
and the result goes back into the branch (``restore``). An If inside a taken branch is
followed the same way. The other branch stays float (no calibration data reached it), but
reads the quantized form of the main-graph tensors the pass quantized, so that ONNX Runtime
can still fuse their producers. The job's guard measures the restored model.
"""

from __future__ import annotations

__all__ = ["Inlined", "inline", "restore", "taken_branches", "with_taken_branches"]

import collections
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx_ir as ir

from nnopt_graph.analysis.walk import STANDARD_DOMAINS
from nnopt_graph.passes.quantize.common import calibration_data, commit
from nnopt_graph.pipeline.base import PassContext, PassResult

logger = logging.getLogger(__name__)

_BRANCHES = {True: "then_branch", False: "else_branch"}


@dataclasses.dataclass
class Inlined:
    """One If whose taken branch now stands in the main graph.

    Nodes and values by name, not object: the pass replaces the graph with a quantized copy.
    """

    name: str
    condition: str
    attributes: list[ir.Attr]  # both branches; the taken one emptied
    branch: ir.Graph  # the taken branch, to refill
    branch_nodes: set[str]  # names of the nodes that came from it
    main_nodes: set[str]  # names of the main graph's own nodes
    bridges: list[str]  # Identity nodes: branch output i -> the If's output i


def taken_branches(model: ir.Model, data: Any, capture: Callable[..., int]) -> dict[str, str]:
    """Main-graph If nodes whose condition is the same on every calibration sample.

    Returns If name -> the branch attribute taken; empty when capturing fails.
    """
    conditions: dict[str, ir.Node] = {}
    for node in model.graph:
        if node.op_type != "If" or node.domain not in STANDARD_DOMAINS or not node.name:
            continue
        cond = node.inputs[0] if node.inputs else None
        if cond is not None and cond.name and cond.producer() is not None:
            conditions.setdefault(cond.name, node)
    if not conditions:
        return {}
    seen: dict[str, set[bool]] = collections.defaultdict(set)

    def on_batch(batch: dict[str, np.ndarray]) -> None:
        for name, value in batch.items():
            seen[name].add(bool(np.asarray(value).reshape(-1)[0]))

    try:
        capture(model, sorted(conditions), data, on_batch)
    except Exception as exc:  # advisory: the branches then stay float
        logger.debug("capturing If conditions failed: %s", exc)
        return {}
    return {
        node.name or "": _BRANCHES[next(iter(seen[cond]))]
        for cond, node in conditions.items()
        if len(seen.get(cond, ())) == 1
    }


def _branch_fits(branch: ir.Graph, used: set[str]) -> bool:
    """Every node and used value named, none shared with the main graph; outputs its own."""
    producers = [v.producer() for v in branch.outputs]
    if any(p is None or p.graph is not branch for p in producers):
        return False  # an output no node of the branch makes: nothing to put back
    for node in branch:
        if not node.name or node.name in used:
            return False
        for value in node.outputs:
            if value.name in used or (not value.name and (value.uses() or value.is_graph_output())):
                return False
    return not any(name in used for name in branch.initializers)


def inline(model: ir.Model, branches: dict[str, str]) -> list[Inlined]:
    """Put each named If's taken branch in its place in ``model`` (changed in place)."""
    graph = model.graph
    done: list[Inlined] = []
    for node in list(graph):
        branch_name = branches.get(node.name or "")
        if node.op_type != "If" or branch_name is None:
            continue
        attr = node.attributes.get(branch_name)
        branch = attr.as_graph() if attr is not None else None
        if branch is None or not _branch_fits(branch, _main_names(graph)):
            logger.debug("If '%s': its branch cannot stand in the main graph", node.name)
            continue
        if len(branch.outputs) != len(node.outputs) or any(v is None for v in node.inputs[:1]):
            continue
        main_nodes = {n.name for n in graph if n.name}
        for name, value in list(branch.initializers.items()):
            branch.initializers.pop(name)
            graph.register_initializer(value)
        moved = list(branch)
        branch.remove(moved)
        graph.insert_before(node, moved)
        outputs = list(branch.outputs)
        branch.outputs.clear()
        bridges = [
            ir.node("Identity", [out], name=f"{node.name}/{branch_name}/output_{i}")
            for i, out in enumerate(outputs)
        ]
        graph.insert_before(node, bridges)
        for old, bridge in zip(node.outputs, bridges, strict=True):
            _take_over(old, bridge.outputs[0])
        condition = node.inputs[0].name if node.inputs[0] is not None else None
        attributes = list(node.attributes.values())
        graph.remove(node, safe=True)
        done.append(
            Inlined(
                node.name or "",
                condition or "",
                attributes,
                branch,
                {n.name for n in moved if n.name},
                main_nodes,
                [b.name or "" for b in bridges],
            )
        )
    return done


def _main_names(graph: ir.Graph) -> set[str]:
    """Node and value names of the main graph itself (not of its subgraphs)."""
    names = {v.name for v in graph.inputs if v.name} | set(graph.initializers)
    names.update(n.name for n in graph if n.name)
    names.update(v.name for n in graph for v in n.outputs if v.name)
    return names


def _take_over(old: ir.Value, new: ir.Value) -> None:
    """``new`` replaces ``old`` everywhere, graph outputs included, under its name."""
    new.type, new.shape = old.type, old.shape
    ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=True)
    name, old.name = old.name, None
    new.name = name


def _branch_side(
    graph: ir.Graph, item: Inlined, bridge_nodes: list[ir.Node]
) -> list[ir.Node] | None:
    """The main-graph nodes that go back into the branch, in order; None if they cannot.

    The branch's own nodes go back, and so do the pass's new nodes (Quantize/Dequantize,
    weight Dequantize) that read a value of the branch or feed only the branch. Nothing
    left in the main graph may read a branch value except the bridges.
    """
    bridges = {id(b) for b in bridge_nodes}
    side = {id(n) for n in graph if n.name in item.branch_nodes}
    new = [
        n
        for n in graph
        if id(n) not in side and id(n) not in bridges and n.name not in item.main_nodes
    ]
    changed = True
    while changed:
        changed = False
        for node in new:
            if id(node) in side:
                continue
            reads = any(v is not None and id(v.producer()) in side for v in node.inputs)
            users = [u for o in node.outputs for u, _ in o.uses()]
            feeds_only = bool(users) and all(id(u) in side for u in users)
            feeds_only = feeds_only and not _quantizes_main_value(node, side)
            feeds_only = feeds_only and not any(o.is_graph_output() for o in node.outputs)
            if reads or feeds_only:
                side.add(id(node))
                changed = True
    for node in graph:
        if id(node) in side or id(node) in bridges:
            continue
        if any(v is not None and id(v.producer()) in side for v in node.inputs):
            return None
    return [n for n in graph if id(n) in side]


def _quantizes_main_value(node: ir.Node, side: set[int]) -> bool:
    """A QuantizeLinear of a main-graph value: it stays beside that value's producer.

    ONNX Runtime fuses Conv (+ Relu) + QuantizeLinear into QLinearConv only when both
    stand in one graph; the Dequantize that feeds the branch goes in with the branch.
    """
    if node.op_type != "QuantizeLinear" or not node.inputs or node.inputs[0] is None:
        return False
    producer = node.inputs[0].producer()
    return producer is not None and id(producer) not in side


def _dequantize_in_untaken(graph: ir.Graph, item: Inlined) -> None:
    """The untaken branches read the quantized form of the values the pass quantized.

    They still read those values in float. ONNX Runtime then sees a second consumer of a
    Conv's float output, beside its QuantizeLinear, and leaves that Conv float with its
    weights dequantized on every run (silero-vad's decoder If). Each such read now goes
    through a DequantizeLinear of the main graph's quantized value, inside the branch.
    Only node outputs: the calibration saw those tensors whatever the branch; a graph
    input the untaken branch reads may range differently there (another sample rate).
    """
    quantizers = {
        n.inputs[0].name: n
        for n in graph
        if n.op_type == "QuantizeLinear"
        and n.inputs
        and n.inputs[0] is not None
        and n.inputs[0].producer() is not None
    }
    if not quantizers:
        return
    taken = {id(item.branch)}
    for attr in item.attributes:
        if attr.type != ir.AttributeType.GRAPH or id(attr.as_graph()) in taken:
            continue
        branch = attr.as_graph()
        own = _names_within(branch)
        added: dict[str, ir.Value] = {}
        for node in list(ir.traversal.RecursiveGraphIterator(branch)):
            for i, value in enumerate(node.inputs):
                name = value.name if value is not None else None
                if name is None or name in own or name not in quantizers:
                    continue
                if name not in added:
                    added[name] = _dequantize_first(branch, quantizers[name], attr.name)
                node.replace_input_with(i, added[name])


def _names_within(branch: ir.Graph) -> set[str]:
    """Every value name a branch (or a graph inside it) defines itself."""
    names = {v.name for v in branch.inputs if v.name} | set(branch.initializers)
    for node in ir.traversal.RecursiveGraphIterator(branch):
        names.update(v.name for v in node.outputs if v.name)
        if node.graph is not None:
            names.update(node.graph.initializers)
    return names


def _dequantize_first(branch: ir.Graph, quantize: ir.Node, branch_name: str) -> ir.Value:
    """A DequantizeLinear of ``quantize``'s output at the top of ``branch``; its output."""
    name = f"{quantize.outputs[0].name}_{branch_name}_dequantized"
    node = ir.node(
        "DequantizeLinear",
        [quantize.outputs[0], *quantize.inputs[1:]],
        {a.name: a for a in quantize.attributes.values() if a.name == "axis"},
        name=f"{quantize.name}/{branch_name}/dequantize",
    )
    node.outputs[0].name = name
    source = quantize.inputs[0]
    if source is not None:
        node.outputs[0].type, node.outputs[0].shape = source.type, source.shape
    if len(branch):
        branch.insert_before(next(iter(branch)), node)
    else:
        branch.append(node)
    return node.outputs[0]


def restore(model: ir.Model, inlined: list[Inlined]) -> ir.Model | None:
    """The model with the inlined branches back in their If nodes; None if they cannot go.

    The untaken branches still refer to values of the graph before the pass; a
    serialization round trip links them to the quantized graph's by name.
    """
    graph = model.graph
    for item in reversed(inlined):
        nodes_by_name = {n.name: n for n in graph if n.name}
        bridges = [nodes_by_name.get(name) for name in item.bridges]
        values = {v.name: v for n in graph for v in n.outputs if v.name}
        values.update({v.name: v for v in graph.inputs if v.name})
        condition = values.get(item.condition)
        if condition is None or any(b is None for b in bridges):
            return None
        bridge_nodes = [b for b in bridges if b is not None]
        nodes = _branch_side(graph, item, bridge_nodes)
        if nodes is None:
            logger.debug("If '%s': the quantized branch cannot go back", item.name)
            return None
        outputs = [b.inputs[0] for b in bridge_nodes]
        node = ir.node(
            "If",
            [condition],
            {a.name: a for a in item.attributes},
            num_outputs=len(bridge_nodes),
            name=item.name,
        )
        bridge_ids = {id(b) for b in bridge_nodes}
        bridge_outs = {id(b.outputs[0]) for b in bridge_nodes}
        first_user = next(
            (
                n
                for n in graph
                if id(n) not in bridge_ids
                and any(v is not None and id(v) in bridge_outs for v in n.inputs)
            ),
            None,
        )
        if first_user is None:
            graph.append(node)
        else:
            graph.insert_before(first_user, node)
        for bridge, out in zip(bridge_nodes, node.outputs, strict=True):
            _take_over(bridge.outputs[0], out)
        graph.remove(bridge_nodes, safe=True)
        graph.remove(nodes)
        item.branch.extend(nodes)
        item.branch.outputs.extend(v for v in outputs if v is not None)
        _dequantize_in_untaken(graph, item)
    return ir.serde.deserialize_model(ir.serde.serialize_model(model))


_MAX_DEPTH = 4  # nested Ifs followed (silero-vad: a shape test inside the rate's branch)


def _levels(model: ir.Model, data: Any, capture: Callable[..., int]) -> list[dict[str, str]]:
    """The taken branches, level by level.

    An If inside a taken branch is found once that branch stands in the main graph (on a
    scratch copy).
    """
    probe = model.clone()
    levels: list[dict[str, str]] = []
    seen: set[str] = set()
    for _ in range(_MAX_DEPTH):
        level = {k: v for k, v in taken_branches(probe, data, capture).items() if k not in seen}
        seen.update(level)
        if not level or not inline(probe, level):
            break
        levels.append(level)
    return levels


def with_taken_branches(
    quantize: Callable[[ir.Model, PassContext], PassResult],
    model: ir.Model,
    context: PassContext,
    samples: int,
    cache: Any,
) -> PassResult:
    """``quantize`` the model, with the branches all calibration samples take inlined.

    The branches are found once per job: back-off attempts reuse ``cache.branches``
    (one dict per nesting level).
    """
    if context.target == "cuda" or not any(n.op_type == "If" for n in model.graph):
        return quantize(model, context)
    if cache.branches is None:
        data = calibration_data(model, context, samples)
        cache.branches = _levels(model, data, context.runtime.capture)
    work = model.clone()
    inlined: list[Inlined] = []
    for level in cache.branches:
        inlined += inline(work, level)
    if not inlined:
        return quantize(model, context)
    result = quantize(work, context)
    every = {k: v for level in cache.branches for k, v in level.items()}
    taken = {item.name: every[item.name] for item in inlined}
    result.decisions.append(
        {
            "if-branches": "quantized inlined: the branch every calibration sample takes "
            "(the other stays float)",
            "taken": taken,
        }
    )
    if not result.modified:
        return result
    restored = restore(work, inlined)
    if restored is None:
        result.stats = {"nodes-quantized": 0, "skipped-branch-not-restorable": len(taken)}
        result.notes.append("int8 kept float: the quantized If branch could not go back")
        return result
    commit(model, restored)
    return result

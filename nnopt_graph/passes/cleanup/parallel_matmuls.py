"""MatMuls that read the same input, merged into one wide MatMul and a Split.

Transformer exports compute an attention's query, key and value as three MatMul + bias
Add pairs on one hidden state. ONNX Runtime's CPU EP runs each as its own small GEMM and
its own Add; one MatMul over the concatenated weights, one Add over the concatenated
biases and a Split compute the same numbers in three kernels instead of six. Each output
element is the same dot product as before, and ONNX Runtime's CPU GEMM reduces it in the
same order, so the outputs are bit-identical (bench/results/parallel_matmuls.md). In
float, merged against unmerged in one interleaved run: minilm 0.950 of its latency on a
35-token sentence, 0.985-0.990 at 70 tokens, 0.988-0.993 padded to 128; the zoo
bert-encoder 0.988-0.990. In front of --target cpu's dynamic int8, which then quantizes
the shared input once instead of three times and takes every projection: minilm
0.895-0.909 at 35 tokens, 0.959-0.963 at 128; the zoo bert 0.950-0.970.

ONNX Runtime fuses the separate projections of an attention itself on CUDA (its
Attention fusion looks for them apart), so the pass stands in the target-cpu preset,
not in the default one. ONNX Runtime's CPU optimizer has no such merge, and
onnxoptimizer's experimental ``fuse_qkv`` only takes an input read by exactly three
MatMuls without biases, which a BERT layer's hidden state (also read by the residual
Add) never is: hence this pass.
"""

from __future__ import annotations

__all__ = ["MergeParallelMatMulsPass"]

import dataclasses

import numpy as np
import onnx_ir as ir

from nnopt_graph.analysis.walk import STANDARD_DOMAINS, opset_version
from nnopt_graph.core.annotations import annotations_not_added
from nnopt_graph.core.constants import add_initializer, const_array, drop_if_unused
from nnopt_graph.core.names import NameScope
from nnopt_graph.pipeline.base import Pass, PassContext, PassResult, register_pass

_MIN_OPSET = 11  # Split takes a negative axis
_SIZES_INPUT_OPSET = 13  # Split reads its sizes from an input (an attribute before)


@dataclasses.dataclass(eq=False)
class _Member:
    """One MatMul of a group, with the bias Add that only it feeds, if any."""

    matmul: ir.Node
    weight: np.ndarray
    add: ir.Node | None = None
    bias: np.ndarray | None = None

    @property
    def out(self) -> ir.Value:
        """The value the merged graph must still produce."""
        return (self.add or self.matmul).outputs[0]


def _owned_constant(value: ir.Value | None) -> np.ndarray | None:
    """The array of an initializer only one node reads (merging it frees it), or None."""
    if value is None or not value.is_initializer() or value.is_graph_input():
        return None
    if value.is_graph_output() or len(value.uses()) != 1:
        return None
    return const_array(value)


def _bias(matmul: ir.Node, weight: np.ndarray) -> tuple[ir.Node, np.ndarray] | None:
    """The Add of a constant bias ([..., 1, N]) that alone reads the MatMul's output."""
    out = matmul.outputs[0]
    if out.is_graph_output() or len(out.uses()) != 1:
        return None
    add, index = next(iter(out.uses()))
    if add.op_type != "Add" or add.domain not in STANDARD_DOMAINS or len(add.inputs) != 2:
        return None
    if add.graph is not matmul.graph:
        return None
    bias = _owned_constant(add.inputs[1 - index])
    if bias is None or bias.dtype != weight.dtype or bias.ndim == 0:
        return None
    if bias.shape[-1] != weight.shape[1] or any(d != 1 for d in bias.shape[:-1]):
        return None
    return add, bias


def _member(node: ir.Node) -> _Member | None:
    """The node as a group member: a float MatMul by a 2-D weight only it reads."""
    if node.op_type != "MatMul" or node.domain not in STANDARD_DOMAINS or len(node.inputs) != 2:
        return None
    x = node.inputs[0]
    weight = _owned_constant(node.inputs[1])
    if x is None or const_array(x) is not None or weight is None or weight.ndim != 2:
        return None
    if weight.dtype.kind != "f" or weight.shape[1] == 0:
        return None
    member = _Member(node, weight)
    found = _bias(node, weight)
    if found is not None:
        member.add, member.bias = found
    return member


def _groups(graph: ir.Graph) -> list[list[_Member]]:
    """Members of one graph that can merge: same input, dtype and bias form; two or more."""
    groups: dict[tuple[int, str, int | None], list[_Member]] = {}
    for node in graph:
        member = _member(node)
        if member is None:
            continue
        x = node.inputs[0]
        rank = member.bias.ndim if member.bias is not None else None
        groups.setdefault((id(x), member.weight.dtype.str, rank), []).append(member)
    return [group for group in groups.values() if len(group) > 1]


def _merge(graph: ir.Graph, group: list[_Member], names: NameScope, opset: int) -> None:
    """Replace the group by MatMul(x, [W1 W2 ...]) (+ Add) and a Split on the last axis."""
    first = group[0].matmul
    x = first.inputs[0]
    assert x is not None
    base = x.name or "x"
    weight = np.concatenate([m.weight for m in group], axis=1)
    widths = np.array([m.weight.shape[1] for m in group], np.int64)
    matmul = ir.node(
        "MatMul",
        [x, add_initializer(graph, names, f"{base}/merged_weight", weight)],
        name=names(f"{base}/merged_matmul"),
    )
    nodes = [matmul]
    wide = matmul.outputs[0]
    wide.name = names(f"{base}/merged_matmul_out")
    if group[0].bias is not None:
        bias = np.concatenate([m.bias for m in group if m.bias is not None], axis=-1)
        add = ir.node(
            "Add",
            [wide, add_initializer(graph, names, f"{base}/merged_bias", bias)],
            name=names(f"{base}/merged_add"),
        )
        nodes.append(add)
        wide = add.outputs[0]
        wide.name = names(f"{base}/merged_add_out")
    if opset >= _SIZES_INPUT_OPSET:
        inputs = [wide, add_initializer(graph, names, f"{base}/merged_split", widths)]
        attributes: dict[str, int | list[int]] = {"axis": -1}
    else:
        inputs, attributes = [wide], {"axis": -1, "split": [int(w) for w in widths]}
    split = ir.node(
        "Split",
        inputs,
        attributes=attributes,
        num_outputs=len(group),
        name=names(f"{base}/merged_split"),
    )
    nodes.append(split)
    graph.insert_before(first, nodes)
    stale: list[ir.Value | None] = []
    for member, new in zip(group, split.outputs, strict=True):
        old = member.out
        ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=True)
        name, old.name = old.name, None
        new.name = name
        new.type, new.shape = old.type, old.shape
        stale.append(member.matmul.inputs[1])
        if member.add is not None:
            stale.extend(member.add.inputs)
    graph.remove([n for m in group for n in (m.add, m.matmul) if n is not None], safe=True)
    for value in stale:  # the old weights and biases, which nothing reads any more
        if value is not None and value.graph is not None:
            drop_if_unused(value.graph, value)


@register_pass
class MergeParallelMatMulsPass(Pass):
    """MatMuls (+ bias Add) reading one input merged into one MatMul and a Split (CPU)."""

    name = "merge-parallel-matmuls"

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Merge every group, in every graph."""
        stats = {"matmuls-merged": 0, "groups-merged": 0}
        opset = opset_version(model)
        names = NameScope.for_model(model)
        decisions = []
        with annotations_not_added(model):
            for graph in model.graphs():
                for group in _groups(graph):
                    if opset < _MIN_OPSET:
                        stats["skipped-opset-before-11"] = 1
                        break
                    x = group[0].matmul.inputs[0]
                    decisions.append(
                        {
                            "merged": [m.matmul.name for m in group],
                            "input": x.name if x is not None else None,
                            "widths": [int(m.weight.shape[1]) for m in group],
                            "bias": group[0].bias is not None,
                        }
                    )
                    _merge(graph, group, names, opset)
                    stats["matmuls-merged"] += len(group)
                    stats["groups-merged"] += 1
        return PassResult(stats, decisions)

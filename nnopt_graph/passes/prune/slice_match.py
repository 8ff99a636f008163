"""The post-LN residual chain of a BERT-style encoder, as slice-hidden rewrites it."""

# Matched, never guessed: every LayerNormalization of the main graph must sit on one chain
# in which each LayerNorm after the first reads Add(previous LayerNorm's output, block
# output), the block output being a MatMul with a constant weight (plus a constant bias
# Add). Anything else (pre-LN, decomposed LayerNorm, shared or exported intermediates on
# the residual path) is a reason, and the pass leaves the model unchanged.

from __future__ import annotations

__all__ = ["Chain", "Reader", "Residual", "Stream", "match_chain"]

import dataclasses
from typing import Any

import numpy as np
import onnx_ir as ir

from nnopt_graph.analysis.walk import STANDARD_DOMAINS
from nnopt_graph.core.constants import const_array
from nnopt_graph.passes.prune.reconstruct import bias_add


@dataclasses.dataclass(eq=False)
class Reader:
    """A MatMul reading a stream with a constant [d, n] weight (its rows get rotated)."""

    node: ir.Node
    bias: tuple[ir.Node, int, np.ndarray] | None
    out_features: int


@dataclasses.dataclass(eq=False)
class Residual:
    """How a LayerNorm's input is built: Add(previous stream, block output)."""

    add: ir.Node
    stream_index: int  # which input of ``add`` is the previous LayerNorm's output
    matmul: ir.Node  # the block's output projection (its columns get rotated)
    bias: tuple[ir.Node, int, np.ndarray] | None
    in_features: int


@dataclasses.dataclass(eq=False)
class Stream:
    """One LayerNorm of the chain and every reader of its output.

    Attributes:
        ln: the LayerNormalization node.
        gamma: its scale; beta its bias (zeros when absent); eps its epsilon.
        residual: how its input is built, None for the first LayerNorm (the entry).
        readers: MatMuls reading its output with a constant weight.
        next_add: the residual Add of the next LayerNorm reading its output, or None.
        others: uses of its output needing the original coordinates (graph output counted
            by ``is_output``).
    """

    ln: ir.Node
    gamma: np.ndarray
    beta: np.ndarray
    eps: float
    residual: Residual | None = None
    readers: list[Reader] = dataclasses.field(default_factory=list)
    next_add: ir.Node | None = None
    others: list[Any] = dataclasses.field(default_factory=list)
    is_output: bool = False
    # Entry only: the embedding Gathers (node) and constants (value) summed into its
    # input, whose tables can be rotated instead of the sum; empty when not foldable.
    embeddings: list[ir.Node | ir.Value] = dataclasses.field(default_factory=list)

    @property
    def d(self) -> int:
        """The hidden size."""
        return int(self.gamma.size)


@dataclasses.dataclass
class Chain:
    """The streams in graph order."""

    streams: list[Stream]


def _standard(node: ir.Node | None, op: str) -> bool:
    return node is not None and node.op_type == op and node.domain in STANDARD_DOMAINS


def _layer_norm(node: ir.Node) -> tuple[Stream | None, str]:
    """A Stream for a supported LayerNormalization, or None and why not."""
    name = node.name or "?"
    axis = node.attributes.get_int("axis", -1)
    if node.attributes.get_int("stash_type", 1) != 1:
        return None, f"LayerNorm '{name}': stash_type is not float"
    if any(out.uses() or out.is_graph_output() for out in node.outputs[1:]):
        return None, f"LayerNorm '{name}': its Mean/InvStdDev outputs are used"
    gamma = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if gamma is None or gamma.ndim != 1 or gamma.dtype != np.float32:
        return None, f"LayerNorm '{name}': scale is not a constant float32 vector"
    beta_v = node.inputs[2] if len(node.inputs) > 2 else None
    beta = np.zeros_like(gamma) if beta_v is None else const_array(beta_v)
    if beta is None or beta.shape != gamma.shape:
        return None, f"LayerNorm '{name}': bias is not a constant vector like the scale"
    x = node.inputs[0]
    rank = len(x.shape) if x is not None and x.shape is not None else None
    if axis != -1 and (rank is None or axis != rank - 1):
        return None, f"LayerNorm '{name}': normalizes over more than the last axis"
    if x is None or x.dtype not in (None, ir.DataType.FLOAT):
        return None, f"LayerNorm '{name}': input is not float32"
    if gamma.size < 2:
        return None, f"LayerNorm '{name}': hidden size {gamma.size} < 2"
    eps = node.attributes.get_float("epsilon", 1e-5)
    return Stream(node, gamma.astype(np.float32), beta.astype(np.float32), float(eps)), ""


def _single_use(value: ir.Value) -> Any:
    uses = list(value.uses())
    if len(uses) != 1 or value.is_graph_output():
        return None
    return uses[0]


def _block_output(value: ir.Value, d: int) -> tuple[ir.Node, tuple | None, int] | None:
    """(MatMul, bias, n) when ``value`` is MatMul(h, W[n, d]) (+ constant bias [d])."""
    node = value.producer()
    bias = None
    if _standard(node, "Add"):
        assert node is not None
        for i in (0, 1):
            other = node.inputs[1 - i]
            operand = node.inputs[i]
            inner = operand.producer() if operand is not None else None
            if _standard(inner, "MatMul") and other is not None:
                assert inner is not None
                found = bias_add(inner)
                if found is not None and found[0] is node and found[2].size == d:
                    bias, node = found, inner
                    break
        else:
            return None
    if not _standard(node, "MatMul"):
        return None
    assert node is not None
    w = const_array(node.inputs[1])
    if w is None or w.ndim != 2 or w.shape[1] != d or w.dtype != np.float32:
        return None
    if bias is None and _single_use(node.outputs[0]) is None:
        return None
    return node, bias, int(w.shape[0])


def _residual(stream: Stream, by_output: dict[int, Stream]) -> tuple[Residual | None, str]:
    ln = stream.ln
    x = ln.inputs[0]
    add = x.producer() if x is not None else None
    name = ln.name or "?"
    if not _standard(add, "Add") or add is None or add.graph is not ln.graph:
        return None, f"LayerNorm '{name}' does not read a residual Add (pre-LN or other pattern)"
    if _single_use(add.outputs[0]) is None:
        return None, f"residual Add '{add.name}' has other users than LayerNorm '{name}'"
    for i in (0, 1):
        prev = add.inputs[i]
        if prev is None or id(prev) not in by_output:
            continue
        other = add.inputs[1 - i]
        block = _block_output(other, stream.d) if other is not None else None
        if block is None or other is None or _single_use(other) is None:
            return None, f"residual Add '{add.name}': the block output is not a constant MatMul"
        return Residual(add, i, *block), ""
    return None, (
        f"LayerNorm '{name}': its residual Add does not read the previous LayerNorm's "
        "output (pre-LN or other pattern)"
    )


def _classify(stream: Stream, next_adds: dict[int, Stream]) -> None:
    out = stream.ln.outputs[0]
    stream.is_output = out.is_graph_output()
    for use in list(out.uses()):
        user = use.node
        follower = next_adds.get(id(user))
        if follower is not None and follower.residual is not None:
            if stream.next_add is None and use.idx == follower.residual.stream_index:
                stream.next_add = user
                continue
        if (
            _standard(user, "MatMul")
            and use.idx == 0
            and user.graph is stream.ln.graph
            and user.inputs[1] is not out
        ):
            w = const_array(user.inputs[1])
            if (
                w is not None
                and w.ndim == 2
                and w.shape[0] == stream.d
                and w.dtype == np.float32
                and not user.outputs[0].is_graph_output()
            ):
                stream.readers.append(Reader(user, bias_add(user), int(w.shape[1])))
                continue
        stream.others.append(use)


def _embedding_leaves(value: ir.Value, d: int) -> list[ir.Node | ir.Value] | None:
    """Gathers of constant [V, d] tables and constant [..., d] terms summing to ``value``."""
    node = value.producer()
    if value.const_value is not None or (node is not None and node.op_type == "Constant"):
        array = const_array(value)
        ok = array is not None and array.ndim >= 1 and array.shape[-1] == d
        return [value] if ok and _single_use(value) is not None else None
    if node is None or _single_use(value) is None:
        return None
    if _standard(node, "Gather") and node.attributes.get_int("axis", 0) == 0:
        table = node.inputs[0]
        array = const_array(table)
        if array is None or array.ndim != 2 or array.shape[1] != d or array.dtype != np.float32:
            return None
        return [node] if table is not None and len(list(table.uses())) == 1 else None
    if _standard(node, "Add"):
        leaves: list[ir.Node | ir.Value] = []
        for operand in node.inputs:
            found = _embedding_leaves(operand, d) if operand is not None else None
            if found is None:
                return None
            leaves.extend(found)
        return leaves
    return None


def match_chain(model: ir.Model) -> tuple[Chain | None, str]:
    """The post-LN chain of the main graph, or None and the reason it does not match."""
    graph = model.graph
    lns = [n for n in graph if _standard(n, "LayerNormalization")]
    if not lns:
        return None, "no LayerNormalization in the main graph (decomposed or no LayerNorm)"
    streams: list[Stream] = []
    for node in lns:
        stream, reason = _layer_norm(node)
        if stream is None:
            return None, reason
        streams.append(stream)
    d = streams[0].d
    if any(s.d != d for s in streams):
        return None, "LayerNorms of different sizes"
    by_output = {id(s.ln.outputs[0]): s for s in streams}
    for stream in streams[1:]:
        residual, reason = _residual(stream, by_output)
        if residual is None:
            return None, reason
        stream.residual = residual
    # The first LayerNorm is the entry; every later one must continue the chain.
    next_adds = {id(s.residual.add): s for s in streams if s.residual is not None}
    previous = {
        id(s): by_output[id(s.residual.add.inputs[s.residual.stream_index])]
        for s in streams
        if s.residual is not None
    }
    for k, stream in enumerate(streams[1:], start=1):
        if previous[id(stream)] is not streams[k - 1]:
            return None, f"LayerNorm '{stream.ln.name}' does not continue the previous one"
    for stream in streams:
        _classify(stream, next_adds)
    entry_input = streams[0].ln.inputs[0]
    if entry_input is not None and not entry_input.is_graph_input():
        leaves = _embedding_leaves(entry_input, d)
        # A lone constant would be a constant stream: keep the general projection.
        if leaves and any(isinstance(leaf, ir.Node) for leaf in leaves):
            streams[0].embeddings = leaves
    for k, stream in enumerate(streams[:-1]):
        if stream.next_add is not streams[k + 1].residual.add:  # type: ignore[union-attr]
            return None, f"LayerNorm '{stream.ln.name}' feeds more than one residual"
    if len(streams) < 2:
        return None, "one LayerNorm only: no residual chain to slice"
    return Chain(streams), ""

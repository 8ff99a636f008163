"""Rewrite a matched post-LN chain in rotated, sliced coordinates (SliceGPT-style).

For LayerNorm ``l`` with an orthonormal basis ``U_l`` [d, k_l] of the space orthogonal to
the all-ones vector, the LayerNorm's centred input is ``s_l = r_l U_l`` exactly (before
slicing), its variance ``|s_l|^2 / d``, so the LayerNorm becomes an RMS norm of ``s_l``
(mean over k, epsilon and output scale adjusted so the full-d denominator is kept),
giving ``n_l`` with ``x_l = n_l U_l^T diag(gamma) + beta``. The readers of ``x_l`` take
``U_l^T diag(gamma) W`` (rows), the block output feeding the next residual takes
``W_out U_{l+1}`` (columns), the residual path carries ``n_l G_l`` with
``G_l = U_l^T diag(gamma_l) U_{l+1}``, the biases absorb ``beta``; the entry LayerNorm
projects its input by ``U_0`` and uses of ``x_l`` needing the original coordinates (graph
outputs, pooling) get ``x_l`` back by one [k, d] MatMul and Add.
"""

from __future__ import annotations

__all__ = ["Basis", "Sliced", "apply_slice", "planned_params"]

import dataclasses
import logging
import math

import numpy as np
import onnx_ir as ir

from nnopt_graph.core.constants import const_array
from nnopt_graph.core.names import NameScope
from nnopt_graph.core.rewrite import ShapeBuilder
from nnopt_graph.passes.prune.slice_match import Chain, Stream

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Basis:
    """The kept coordinates of one stream.

    Attributes:
        u: [d, k] orthonormal columns, orthogonal to the all-ones vector.
        energy: fraction of the calibration energy of the normalized stream kept.
        scale: how much the sum of squares over k coordinates is divided by to estimate
            the full one (1 = exact identity; ``energy`` when slicing with renorm).
    """

    u: np.ndarray
    energy: float
    scale: float = 1.0

    @property
    def k(self) -> int:
        """Coordinates kept."""
        return int(self.u.shape[1])


@dataclasses.dataclass(eq=False)
class Sliced:
    """The rewritten nodes of one stream, for a later refit (slice_refit.py).

    Attributes:
        normalized: the RMS norm's output ``n`` (what readers and the next shortcut read).
        shortcut: the residual rotation MatMul ``n_prev G`` (None for the entry).
        unrotate: the MatMul and Add giving the original coordinates back (or None).
    """

    normalized: ir.Value
    shortcut: ir.Node | None = None
    unrotate: tuple[ir.Node, ir.Node] | None = None


def planned_params(chain: Chain, ks: list[int]) -> list[tuple[int, int]]:
    """Per stream, (MatMul weight params before, after) for kept counts ``ks``."""
    result = []
    for i, (stream, k) in enumerate(zip(chain.streams, ks, strict=True)):
        d = stream.d
        before = after = 0
        for reader in stream.readers:
            n = reader.out_features
            before += d * n
            after += k * n
        if stream.residual is None:
            if not stream.embeddings:
                after += d * k  # the entry projection (none when the tables are rotated)
        else:
            n = stream.residual.in_features
            before += n * d
            after += n * k + ks[i - 1] * k  # W_out U and G
        if stream.others or stream.is_output:
            after += k * d
        result.append((before, after))
    return result


class _Builder:
    def __init__(self, model: ir.Model) -> None:
        self.graph = model.graph
        self.names = NameScope.for_model(model)
        self.opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 17))
        self.replaced: list[ir.Value] = []  # constants the rewrite stopped reading
        self._shapes = ShapeBuilder(self.graph, self.opset, self.names)

    def drop_replaced(self) -> None:
        """Remove the replaced constants nothing reads any more."""
        for value in self.replaced:
            if value.uses() or value.is_graph_output() or value.is_graph_input():
                continue
            producer = value.producer()
            if producer is not None and producer.op_type == "Constant":
                self.graph.remove(producer, safe=True)
            elif value.name is not None and value.name in self.graph.initializers:
                self.graph.initializers.pop(value.name)

    def const(self, base: str, array: np.ndarray) -> ir.Value:
        # A copy: the arrays come from numpy arithmetic on weights that may still be read.
        return self._shapes.const(base, array.copy(order="C"))

    def node(
        self, op: str, inputs: list[ir.Value], base: str, attrs: list[ir.Attr] | None = None
    ) -> ir.Node:
        node = ir.Node("", op, inputs, attrs or [], name=self.names(base))
        out = node.outputs[0]
        out.name = self.names(f"{base}_output")
        return node

    def rms_norm(self, s: ir.Value, base: str, eps: float, scale: float, k: int) -> list[ir.Node]:
        """Nodes computing s / sqrt(mean(s^2) + eps) * scale, in the form ONNX Runtime fuses."""
        two = self.const(f"{base}/pow_exponent", np.array(2.0, np.float32))
        pow_ = self.node("Pow", [s, two], f"{base}/Pow")
        if self.opset >= 18:
            axes = self.const(f"{base}/axes", np.array([-1], np.int64))
            mean = self.node("ReduceMean", [pow_.outputs[0], axes], f"{base}/ReduceMean")
        else:
            mean = self.node(
                "ReduceMean", [pow_.outputs[0]], f"{base}/ReduceMean", [ir.AttrInt64s("axes", [-1])]
            )
        eps_v = self.const(f"{base}/eps", np.array(eps, np.float32))
        add = self.node("Add", [mean.outputs[0], eps_v], f"{base}/Add")
        sqrt = self.node("Sqrt", [add.outputs[0]], f"{base}/Sqrt")
        div = self.node("Div", [s, sqrt.outputs[0]], f"{base}/Div")
        gain = self.const(f"{base}/scale", np.full([k], scale, np.float32))
        mul = self.node("Mul", [div.outputs[0], gain], f"{base}/Mul")
        return [pow_, mean, add, sqrt, div, mul]

    def set_weight(self, node: ir.Node, index: int, array: np.ndarray, base: str) -> None:
        old = node.inputs[index]
        if old is not None:
            self.replaced.append(old)
        node.replace_input_with(index, self.const(base, array.astype(np.float32)))

    def add_bias(
        self, matmul: ir.Node, bias: tuple[ir.Node, int, np.ndarray] | None, array: np.ndarray
    ) -> None:
        """Give ``matmul``'s output the bias ``array`` (its bias Add's, or a new Add)."""
        name = matmul.name or "matmul"
        if bias is not None:
            add, index, _ = bias
            self.set_weight(add, index, array.reshape(-1), f"{name}/sliced_bias")
            add.outputs[0].shape = None
            return
        if not np.any(array):
            return
        out = matmul.outputs[0]
        uses = list(out.uses())
        value = self.const(f"{name}/sliced_bias", array.astype(np.float32).reshape(-1))
        add = self.node("Add", [out, value], f"{name}/BiasAdd")
        self.graph.insert_after(matmul, [add])
        for use in uses:
            use.node.replace_input_with(use.idx, add.outputs[0])


def _scaled(stream: Stream, basis: Basis) -> np.ndarray:
    """U^T diag(gamma) [k, d]: maps the normalized stream back to the LayerNorm's output."""
    return basis.u.T * stream.gamma[None, :]


def _new_weights(
    chain: Chain, bases: list[Basis]
) -> dict[int, tuple[ir.Node, np.ndarray, tuple | None, np.ndarray]]:
    """Per rewritten MatMul: (node, new weight, bias Add, new bias), from the originals."""
    weights: dict[int, list] = {}

    def entry(node: ir.Node, bias: tuple | None) -> list:
        if id(node) not in weights:
            w = const_array(node.inputs[1]).astype(np.float64)  # type: ignore[union-attr]
            b = bias[2].astype(np.float64).reshape(-1) if bias is not None else np.zeros(w.shape[1])
            weights[id(node)] = [node, w, bias, b]
        return weights[id(node)]

    for stream, basis in zip(chain.streams, bases, strict=True):
        rows = _scaled(stream, basis).astype(np.float64)
        for reader in stream.readers:
            item = entry(reader.node, reader.bias)
            item[3] = item[3] + stream.beta.astype(np.float64) @ item[1]
            item[1] = rows @ item[1]
    for i, (stream, basis) in enumerate(zip(chain.streams, bases, strict=True)):
        if stream.residual is None:
            continue
        previous = chain.streams[i - 1]
        item = entry(stream.residual.matmul, stream.residual.bias)
        u = basis.u.astype(np.float64)
        item[3] = (item[3] + previous.beta.astype(np.float64)) @ u
        item[1] = item[1] @ u
    return {key: tuple(value) for key, value in weights.items()}  # type: ignore[misc]


def _rotate_embeddings(b: _Builder, stream: Stream, basis: Basis) -> None:
    """Rotate the embedding tables (and constant terms) summed into the entry LayerNorm."""
    u = basis.u.astype(np.float64)
    for leaf in stream.embeddings:
        if isinstance(leaf, ir.Node):
            table = const_array(leaf.inputs[0])
            assert table is not None
            b.set_weight(
                leaf, 0, table.astype(np.float64) @ u, f"{leaf.name or 'gather'}/sliced_table"
            )
            leaf.outputs[0].shape = None
            continue
        array = const_array(leaf)
        assert array is not None
        b.replaced.append(leaf)
        for use in list(leaf.uses()):
            rotated = array.astype(np.float64) @ u
            use.node.replace_input_with(
                use.idx, b.const(f"{leaf.name}/sliced", rotated.astype(np.float32))
            )
    node = stream.ln.inputs[0].producer() if stream.ln.inputs[0] is not None else None
    todo = [node] if node is not None else []
    while todo:  # the Adds of the sum change width
        add = todo.pop()
        if add.op_type != "Add":
            continue
        add.outputs[0].shape = None
        for v in add.inputs:
            producer = v.producer() if v is not None else None
            if producer is not None:
                todo.append(producer)


def apply_slice(model: ir.Model, chain: Chain, bases: list[Basis]) -> list[Sliced]:
    """Rewrite ``chain`` in ``model`` with one basis per stream (see the module docstring)."""
    b = _Builder(model)
    sliced: list[Sliced] = []
    for node, w, bias, bvec in _new_weights(chain, bases).values():
        b.set_weight(node, 1, w, f"{node.name or 'matmul'}/sliced_weight")
        node.outputs[0].shape = None
        b.add_bias(node, bias, bvec)
    normalized: list[ir.Value] = []
    for i, (stream, basis) in enumerate(zip(chain.streams, bases, strict=True)):
        ln, d, k = stream.ln, stream.d, basis.k
        base = ln.name or f"layer_norm_{i}"
        new_nodes: list[ir.Node] = []
        shortcut_node: ir.Node | None = None
        x = ln.inputs[0]
        assert x is not None
        if stream.residual is None and stream.embeddings:
            _rotate_embeddings(b, stream, basis)
            x.shape = None
            s = x
        elif stream.residual is None:
            proj = b.const(f"{base}/rotation", basis.u.astype(np.float32))
            entry = b.node("MatMul", [x, proj], f"{base}/Rotate")
            new_nodes.append(entry)
            s = entry.outputs[0]
        else:
            previous, prev_basis = chain.streams[i - 1], bases[i - 1]
            g = _scaled(previous, prev_basis).astype(np.float64) @ basis.u.astype(np.float64)
            g_v = b.const(f"{base}/residual_rotation", g.astype(np.float32))
            shortcut = b.node("MatMul", [normalized[i - 1], g_v], f"{base}/ResidualRotate")
            add = stream.residual.add
            b.graph.insert_before(add, [shortcut])
            add.replace_input_with(stream.residual.stream_index, shortcut.outputs[0])
            add.outputs[0].shape = None
            s = add.outputs[0]
            shortcut_node = shortcut
        # mean over k of s^2 times k/(d*scale) estimates the variance over d.
        factor = k / (d * basis.scale)
        norm = b.rms_norm(s, f"{base}/RMSNorm", stream.eps / factor, 1.0 / math.sqrt(factor), k)
        new_nodes.extend(norm)
        n = norm[-1].outputs[0]
        normalized.append(n)
        record = Sliced(n, shortcut_node)
        sliced.append(record)
        b.graph.insert_before(ln, new_nodes)
        out = ln.outputs[0]
        for reader in stream.readers:
            reader.node.replace_input_with(0, n)
        if stream.others or stream.is_output:
            back = b.const(f"{base}/unrotation", _scaled(stream, basis).astype(np.float32))
            mm = b.node("MatMul", [n, back], f"{base}/Unrotate")
            beta = b.const(f"{base}/unrotated_bias", stream.beta)
            add_back = b.node("Add", [mm.outputs[0], beta], f"{base}/UnrotateBias")
            b.graph.insert_before(ln, [mm, add_back])
            record.unrotate = (mm, add_back)
            restored = add_back.outputs[0]
            restored.shape, restored.type = out.shape, out.type
            for use in stream.others:
                use.node.replace_input_with(use.idx, restored)
            if stream.is_output:
                ir.convenience.replace_all_uses_with(out, restored, replace_graph_outputs=True)
                name = out.name
                out.name = None
                restored.name = name
        logger.info("slice-hidden: '%s' %d -> %d (energy %.4f)", ln.name, d, k, basis.energy)
    for stream in chain.streams:
        b.replaced.extend(v for v in stream.ln.inputs[1:] if v is not None)
        b.graph.remove(stream.ln, safe=True)
    b.drop_replaced()
    return sliced

"""Sequential least-squares refit of a sliced chain to the original model's stream.

After slicing, layer ``l``'s residual stream is ``s_l = h_l W_out U_l + n_{l-1} G_l + b``
(``h_l``: the block's hidden activation, ``n_{l-1}``: the previous normalized stream).
The teacher's stream in the same basis is ``t_l = centre(r_l) U_l`` (``r_l``: its
LayerNorm input). Layer by layer, in graph order, ``[W_out U_l; G_l; b]`` is refit by
ridge regression of ``t_l`` on ``[h_l, n_{l-1}, 1]`` computed by the sliced model whose
upstream layers are already refit (SliceGPT's/SparseGPT's sequential calibration), so
each layer corrects the error its inputs carry instead of adding to it. The maps back to
the original coordinates (graph outputs, pooling) are refit last, to the teacher's
LayerNorm outputs. The ridge term pulls toward the sliced weights.

Tokens: where the model takes an input named by ``token_mask`` (default
``attention_mask``) of the stream's [batch, sequence] shape, only the tokens it marks
count (padding tokens are most of the rows of padded calibration text and never reach
the outputs that matter); otherwise every token.
"""

from __future__ import annotations

__all__ = ["refit_chain", "token_rows"]

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from nnopt_graph.analysis.channels.removal import set_node_const_input
from nnopt_graph.core.constants import const_array
from nnopt_graph.passes.prune.reconstruct import bias_add
from nnopt_graph.passes.prune.slice_match import Chain
from nnopt_graph.passes.prune.slice_rewrite import Basis, Sliced
from nnopt_graph.runtime.data import Dataset

if TYPE_CHECKING:
    from nnopt_graph.runtime.services import RuntimeServices

logger = logging.getLogger(__name__)


def token_rows(x: np.ndarray, feed: Mapping[str, np.ndarray], mask_name: str) -> np.ndarray:
    """The rows of ``x`` ([..., d] flattened to [tokens, d]) that the token mask keeps."""
    d = x.shape[-1]
    rows = x.reshape(-1, d)
    mask = feed.get(mask_name) if mask_name else None
    if mask is None or tuple(mask.shape) != tuple(x.shape[:-1]):
        return rows
    keep = np.asarray(mask).reshape(-1) != 0
    return rows[keep] if keep.any() else rows


class _Ridge:
    """Streaming normal equations ``X^T X``, ``X^T Y`` solved toward the current weights."""

    def __init__(self, theta0: np.ndarray) -> None:
        self.theta0 = theta0.astype(np.float64)
        features = theta0.shape[0]
        self.gram = np.zeros((features, features))
        self.cross = np.zeros((features, theta0.shape[1]))
        self.target_energy = 0.0
        self.rows = 0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        x = np.concatenate([x, np.ones((len(x), 1), x.dtype)], axis=1).astype(np.float64)
        self.gram += x.T @ x
        self.cross += x.T @ y.astype(np.float64)
        self.target_energy += float(np.square(y, dtype=np.float64).sum())
        self.rows += len(x)

    def relative_error(self, theta: np.ndarray) -> float:
        """``|X theta - Y| / |Y|`` on the rows added."""
        sq = np.sum(theta * (self.gram @ theta)) - 2 * np.sum(theta * self.cross)
        return float(np.sqrt(max(sq + self.target_energy, 0.0) / max(self.target_energy, 1e-30)))

    def solve(self, ridge: float) -> np.ndarray:
        lam = ridge * max(float(np.diag(self.gram).mean()), 1e-12)
        lhs = self.gram + lam * np.eye(len(self.gram))
        rhs = self.cross + lam * self.theta0
        try:
            return np.linalg.solve(lhs, rhs)
        except np.linalg.LinAlgError:
            return np.linalg.lstsq(lhs, rhs, rcond=None)[0]


def _teacher_targets(
    runtime: RuntimeServices,
    teacher: ir.Model,
    ln_names: Sequence[tuple[str, str]],
    bases: Sequence[Basis],
    sliced: Sequence[Sliced],
    dataset: Dataset,
    mask_name: str,
) -> tuple[list[list[np.ndarray]], list[list[np.ndarray]]]:
    """Per stream and feed: ``centre(r_l) U_l`` (kept tokens) and the LayerNorm output."""
    ins = [pair[0] for pair in ln_names]
    outs = [pair[1] for pair in ln_names]
    wanted = sorted(
        set(ins) | {o for o, r in zip(outs, sliced, strict=True) if r.unrotate is not None}
    )
    streams: list[list[np.ndarray]] = [[] for _ in ins]
    restored: list[list[np.ndarray]] = [[] for _ in ins]
    with runtime.tapped(teacher, wanted) as reference:
        for feed in dataset.batches(1):
            values = reference.run(feed)
            for i, (name, basis) in enumerate(zip(ins, bases, strict=True)):
                r = token_rows(values[name], feed, mask_name).astype(np.float64)
                r = r - r.mean(axis=1, keepdims=True)
                streams[i].append((r @ basis.u).astype(np.float32))
                if sliced[i].unrotate is not None:
                    restored[i].append(token_rows(values[outs[i]], feed, mask_name))
    return streams, restored


def _refit_residual(
    runtime: RuntimeServices,
    model: ir.Model,
    chain: Chain,
    sliced: Sequence[Sliced],
    i: int,
    targets: list[np.ndarray],
    dataset: Dataset,
    mask_name: str,
    ridge: float,
) -> bool:
    """Refit stream ``i``'s output projection, shortcut rotation and bias; False: skipped."""
    residual, shortcut = chain.streams[i].residual, sliced[i].shortcut
    assert residual is not None and shortcut is not None
    w_out, g = const_array(residual.matmul.inputs[1]), const_array(shortcut.inputs[1])
    found = bias_add(residual.matmul)
    h, p = residual.matmul.inputs[0], sliced[i - 1].normalized
    if w_out is None or g is None or found is None or h is None or w_out.ndim != 2:
        logger.debug("slice-hidden refit: stream %d skipped: weights or bias not constant", i)
        return False
    add, index, bias = found
    n = w_out.shape[0]
    system = _Ridge(np.concatenate([w_out, g, bias.reshape(1, -1)], axis=0))
    names = [str(h.name), str(p.name)]
    with runtime.tapped(model, names) as student:
        for j, feed in enumerate(dataset.batches(1)):
            xs = student.run(feed)
            x = np.concatenate([token_rows(xs[n], feed, mask_name) for n in names], axis=1)
            system.add(x, targets[j])
    theta64 = system.solve(ridge)
    theta = theta64.astype(np.float32)
    set_node_const_input(residual.matmul, 1, theta[:n], suffix="refit")
    set_node_const_input(shortcut, 1, theta[n:-1], suffix="refit")
    set_node_const_input(add, index, theta[-1].reshape(bias.shape), suffix="refit")
    logger.info(
        "slice-hidden refit: '%s' on %d tokens, %d features: relative error %.4f -> %.4f",
        residual.matmul.name,
        system.rows,
        system.gram.shape[0],
        system.relative_error(system.theta0),
        system.relative_error(theta64),
    )
    return True


def _refit_restored(
    runtime: RuntimeServices,
    model: ir.Model,
    sliced: Sequence[Sliced],
    restored: list[list[np.ndarray]],
    dataset: Dataset,
    mask_name: str,
    ridge: float,
) -> int:
    """Refit every map back to the original coordinates to the teacher's LayerNorm output."""
    items = []
    for i, record in enumerate(sliced):
        if record.unrotate is None:
            continue
        mm, add_back = record.unrotate
        w, beta = const_array(mm.inputs[1]), const_array(add_back.inputs[1])
        if w is None or beta is None:
            continue
        items.append((i, mm, add_back, _Ridge(np.concatenate([w, beta.reshape(1, -1)], axis=0))))
    if not items:
        return 0
    names = sorted({str(sliced[i].normalized.name) for i, *_ in items})
    with runtime.tapped(model, names) as student:
        for j, feed in enumerate(dataset.batches(1)):
            xs = student.run(feed)
            for i, _, _, system in items:
                x = token_rows(xs[str(sliced[i].normalized.name)], feed, mask_name)
                system.add(x, restored[i][j])
    for _, mm, add_back, system in items:
        theta64 = system.solve(ridge)
        logger.info(
            "slice-hidden refit: '%s' on %d tokens: relative error %.4f -> %.4f",
            mm.name,
            system.rows,
            system.relative_error(system.theta0),
            system.relative_error(theta64),
        )
        theta = theta64.astype(np.float32)
        set_node_const_input(mm, 1, theta[:-1], suffix="refit")
        set_node_const_input(add_back, 1, theta[-1], suffix="refit")
    return len(items)


def refit_chain(
    runtime: RuntimeServices,
    model: ir.Model,
    teacher: ir.Model,
    chain: Chain,
    ln_names: Sequence[tuple[str, str]],
    bases: Sequence[Basis],
    sliced: Sequence[Sliced],
    dataset: Dataset,
    *,
    mask_name: str = "attention_mask",
    ridge: float = 1e-2,
) -> dict[str, int]:
    """Refit the sliced ``model`` to ``teacher`` layer by layer (see the module docstring).

    ``ln_names``: per stream, the names of the original LayerNorm's input and output
    (read before the rewrite removed it).

    Returns:
        Statistics: ``layers-refit`` (residual streams) and ``maps-refit`` (back-maps).
    """
    targets, restored = _teacher_targets(
        runtime, teacher, ln_names, bases, sliced, dataset, mask_name
    )
    layers = 0
    for i in range(1, len(chain.streams)):
        layers += _refit_residual(
            runtime, model, chain, sliced, i, targets[i], dataset, mask_name, ridge
        )
    maps = _refit_restored(runtime, model, sliced, restored, dataset, mask_name, ridge)
    return {"layers-refit": layers, "maps-refit": maps}

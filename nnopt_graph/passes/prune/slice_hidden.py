"""slice-hidden: remove hidden-size coordinates of a post-LN encoder through its LayerNorms.

SliceGPT (Ashkboos et al. 2024, "SliceGPT: Compress Large Language Models by Deleting Rows
and Columns") rotates the residual stream by the principal components of its calibration
activations and drops the weakest ones, the rotation absorbed into the weights. It is
written for pre-LN models (RMSNorm); here the same idea for the post-LN BERT layout
exported by PyTorch: the basis of each LayerNorm is taken orthogonal to the all-ones
vector, so the LayerNorm's mean subtraction is exact in the rotated coordinates and only
its variance is estimated from the kept ones (slice_rewrite.py).

Ratio 0 rewrites without slicing (only the all-ones direction, which the LayerNorm removes
anyway, is dropped): the outputs stay equal under the strict check, the test of the
rewrite. A second run finds no LayerNormalization left (they became RMS norms) and is
skipped: slicing is not repeated. A slice whose residual rotations (k x k per LayerNorm)
would add more weights than it removes is skipped too.
"""

from __future__ import annotations

__all__ = ["SliceHiddenOptions", "SliceHiddenPass"]

import dataclasses
import logging
import math
from typing import Any

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as ir_passes

from nnopt_graph.core.annotations import annotations_not_added
from nnopt_graph.passes.prune.slice_match import Chain, match_chain
from nnopt_graph.passes.prune.slice_refit import refit_chain, token_rows
from nnopt_graph.passes.prune.slice_rewrite import Basis, apply_slice, planned_params
from nnopt_graph.pipeline.base import Pass, PassContext, PassResult, register_pass
from nnopt_graph.runtime.data import Dataset, input_specs

logger = logging.getLogger(__name__)

_STATS = (
    "layernorms-rewritten",
    "hidden-removed",
    "params-removed",
    "params-added",
    "skipped-no-calibration",
    "skipped-no-gain",
    "skipped-unmatched",
    "skipped-subgraph-layernorms",
    "layers-refit",
    "maps-refit",
)


@dataclasses.dataclass(frozen=True)
class SliceHiddenOptions:
    """Options of slice-hidden.

    Attributes:
        ratio: what to remove: with budget=params, the fraction of the model's MatMul
            weight parameters (the added rotations counted); with budget=hidden, the
            fraction of the hidden size. 0 rewrites without slicing (exact).
        budget: params or hidden (see ``ratio``).
        max_hidden_ratio: never remove more than this fraction of the hidden size.
        round_to: keep the hidden size a multiple of this (when it is larger).
        renorm: estimate each norm's full sum of squares from the kept coordinates by
            dividing by the calibration energy they hold (else: the kept sum as is).
        calib_samples: calibration samples used at most.
        min_ratio: back-off stops below this ratio.
        refit: after slicing, refit each layer's output projection, residual rotation
            and bias, then the maps back to the original coordinates, by least squares
            to the original model's stream, layer by layer (slice_refit.py).
        refit_ridge: ridge of the refit, relative to the mean feature energy; it pulls
            toward the sliced weights.
        token_mask: an input (e.g. ``attention_mask``) whose nonzero entries mark the
            tokens the PCA and the refit count; absent or empty: every token.
    """

    ratio: float = dataclasses.field(default=0.25, metadata={"range": (0.0, 1.0, True, False)})
    budget: str = dataclasses.field(default="params", metadata={"choices": ("params", "hidden")})
    max_hidden_ratio: float = dataclasses.field(
        default=0.75, metadata={"range": (0.0, 1.0, True, False)}
    )
    round_to: int = dataclasses.field(default=1, metadata={"range": (1, None, True, True)})
    renorm: bool = True
    calib_samples: int = dataclasses.field(default=64, metadata={"range": (1, None, True, True)})
    min_ratio: float = dataclasses.field(default=0.05, metadata={"range": (0.0, 1.0, True, False)})
    refit: bool = False
    refit_ridge: float = dataclasses.field(
        default=1e-2, metadata={"range": (0.0, None, True, True)}
    )
    token_mask: str = ""


def _complement_basis(d: int) -> np.ndarray:
    """[d, d-1] orthonormal columns spanning the vectors orthogonal to all-ones."""
    a = np.eye(d)
    a[:, 0] = 1.0
    q, _ = np.linalg.qr(a)
    return q[:, 1:]


def _covariances(
    chain: Chain, model: ir.Model, dataset: Dataset, context: PassContext, mask: str
) -> list[np.ndarray]:
    """Per stream, the second moment of its normalized LayerNorm input over the tokens."""
    names = [str(s.ln.inputs[0].name) for s in chain.streams]  # type: ignore[union-attr]
    d = chain.streams[0].d
    sums = [np.zeros((d, d)) for _ in names]
    with context.runtime.tapped(model, sorted(set(names))) as tapped:
        for feed in dataset.batches(1):
            batch = tapped.run(feed)
            for i, (name, stream) in enumerate(zip(names, chain.streams, strict=True)):
                x = token_rows(batch[name], feed, mask).astype(np.float64)
                x = x - x.mean(axis=1, keepdims=True)
                x = x / np.sqrt(np.square(x).mean(axis=1, keepdims=True) + stream.eps)
                sums[i] += x.T @ x
    return sums


def _bases(covariances: list[np.ndarray], ks: list[int], renorm: bool) -> list[Basis]:
    d = covariances[0].shape[0]
    complement = _complement_basis(d)
    bases = []
    for cov, k in zip(covariances, ks, strict=True):
        inner = complement.T @ cov @ complement
        values, vectors = np.linalg.eigh((inner + inner.T) / 2)
        order = np.argsort(values)[::-1]
        values = np.maximum(values[order], 0.0)
        u = complement @ vectors[:, order[:k]]
        energy = float(values[:k].sum() / max(values.sum(), 1e-30)) if k < d - 1 else 1.0
        scale = energy if renorm and k < d - 1 and energy > 0 else 1.0
        bases.append(Basis(u, energy, scale))
    return bases


def _weight_params(model: ir.Model) -> int:
    total = 0
    for node in model.graph:
        if node.op_type == "MatMul":
            for value in node.inputs[:2]:
                if value is not None and value.const_value is not None:
                    total += int(value.const_value.size)
    return total


def _kept(d: int, options: SliceHiddenOptions, chain: Chain, total: int) -> tuple[int, str]:
    """The kept hidden size (the same for every stream) and why."""
    if options.ratio <= 0:
        return d - 1, "ratio 0: rotation only (the all-ones direction is dropped exactly)"
    step = options.round_to if options.round_to < d else 1
    floor = max(1, int(math.ceil(d * (1 - options.max_hidden_ratio))))

    def rounded(k: int) -> int:
        multiple = int(round(k / step)) * step
        if multiple > d - 1:  # at most d - 1 coordinates exist: round down instead
            multiple = (d - 1) // step * step
        return max(multiple, 1)

    if options.budget == "hidden":
        k = max(rounded(int(round((1 - options.ratio) * d))), floor)
        return k, f"hidden ratio {options.ratio:g}"
    target = (1 - options.ratio) * total
    removed_at = {}
    for k in range(d - 1, floor - 1, -1):
        plan = planned_params(chain, [k] * len(chain.streams))
        removed_at[k] = sum(b - a for b, a in plan)
        if total - removed_at[k] <= target:
            k = max(rounded(k), floor)
            return k, f"params budget {options.ratio:g}: largest hidden size meeting it"
    return floor, f"params budget {options.ratio:g} not reachable: max-hidden-ratio"


@register_pass
class SliceHiddenPass(Pass):
    """Slice the hidden size of a post-LN encoder by PCA rotations absorbed into its weights."""

    name = "slice-hidden"
    lossy = True
    Options = SliceHiddenOptions

    def back_off(self) -> SliceHiddenPass | None:
        """Half the ratio, down to ``min-ratio``."""
        ratio = self.options.ratio / 2
        if ratio < self.options.min_ratio:
            return None
        return SliceHiddenPass(self.options, ratio=round(ratio, 6))

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Match the chain, measure its PCA bases on calibration data, rewrite it."""
        with annotations_not_added(model):  # no value_info the input lacked (ORT fuses on it)
            return self._run(model, context)

    def _run(self, model: ir.Model, context: PassContext) -> PassResult:
        options = self.options
        stats = dict.fromkeys(_STATS, 0)
        # Main graph only: LayerNorms in If/Loop/Scan bodies and functions are left alone.
        inner = [*model.graph.subgraphs(), *model.functions.values()]
        stats["skipped-subgraph-layernorms"] = sum(
            n.op_type == "LayerNormalization" for g in inner for n in g
        )
        chain, reason = match_chain(model)
        if chain is None:
            stats["skipped-unmatched"] = 1
            logger.debug("slice-hidden: skipped: %s", reason)
            return PassResult(stats, [{"status": f"skipped: {reason}"}])
        dataset = context.calibration
        if dataset is None or dataset.num_samples == 0:
            stats["skipped-no-calibration"] = 1
            logger.debug("slice-hidden: skipped: no calibration data")
            return PassResult(stats, [{"status": "skipped: needs calibration data"}])
        if dataset.num_samples > options.calib_samples:
            dataset = dataset.take(options.calib_samples)
        dataset = dataset.fit(input_specs(model))
        d = chain.streams[0].d
        total = _weight_params(model)
        k, why = _kept(d, options, chain, total)
        ks = [k] * len(chain.streams)
        plan = planned_params(chain, ks)
        net = sum(b - a for b, a in plan)
        if options.ratio > 0 and net <= 0:
            # The rotations on the residual path cost k*k per LayerNorm: a small slice of
            # a small model adds more weights than it removes.
            stats["skipped-no-gain"] = 1
            reason = f"hidden {d} -> {k} would add {-net} weight params (rotations)"
            logger.debug("slice-hidden: skipped: %s", reason)
            return PassResult(stats, [{"status": f"skipped: {reason}"}])
        mask = (
            options.token_mask
            if options.token_mask in {str(v.name) for v in model.graph.inputs}
            else ""
        )
        covariances = _covariances(chain, model, dataset, context, mask)
        bases = _bases(covariances, ks, options.renorm)
        sliced_ok = options.refit and k < d - 1
        teacher = model.clone() if sliced_ok else None
        ln_names = [
            (str(s.ln.inputs[0].name), str(s.ln.outputs[0].name))  # type: ignore[union-attr]
            for s in chain.streams
        ]
        sliced = apply_slice(model, chain, bases)
        if teacher is not None:
            stats.update(
                refit_chain(
                    context.runtime,
                    model,
                    teacher,
                    chain,
                    ln_names,
                    bases,
                    sliced,
                    dataset,
                    mask_name=mask,
                    ridge=options.refit_ridge,
                )
            )
        ir_passes.ShapeInferencePass(strict_mode=False)(model)
        decisions: list[dict[str, Any]] = []
        for stream, basis, (before, after) in zip(chain.streams, bases, plan, strict=True):
            decisions.append(
                {
                    "layer": stream.ln.name,
                    "status": "sliced" if basis.k < d - 1 else "rotated",
                    "d": d,
                    "k": basis.k,
                    "energy_kept": round(basis.energy, 6),
                    "weights_before": before,
                    "weights_after": after,
                    "weights_removed": before - after,
                    "reason": why,
                }
            )
        decisions.append(
            {
                "budget": options.budget,
                "ratio": options.ratio,
                "weight_params": total,
                "weight_params_after": total - net,
            }
        )
        stats["layernorms-rewritten"] = len(chain.streams)
        stats["hidden-removed"] = sum(d - b.k for b in bases)
        stats["params-removed"] = max(net, 0)
        stats["params-added"] = max(-net, 0)
        return PassResult(stats, decisions)

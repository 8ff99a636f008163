"""Lossy weight sparsity: N:M along the reduction axis or unstructured, Wanda and SparseGPT."""

# The pass's selection, SparseGPT solve, keep-dense ranking and decisions share its
# per-run plans (_Plan: mask, error, sensitivity) and back-offs reuse them. The masks and
# solvers are patterns.py, the layer model layers.py, the calibration sweeps calibrate.py
# and the MatMul-to-Gemm rewrite gemm_rewrite.py.

from __future__ import annotations

__all__ = ["SparsifyOptions", "SparsifyPass"]

import dataclasses
import logging
import re
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_ir as ir

from nnopt_graph.check.metrics import sample_metrics
from nnopt_graph.core.names import NameScope
from nnopt_graph.errors import BadInputError
from nnopt_graph.passes.sparsity.calibrate import _calibrate, _sweeps
from nnopt_graph.passes.sparsity.gemm_rewrite import _matmul_to_gemm
from nnopt_graph.passes.sparsity.layers import (
    ActivationStats,
    Layer,
    find_layers,
    read_weight,
    write_weight,
)
from nnopt_graph.passes.sparsity.patterns import (
    IMPORTANCES,
    TENSORRT_RULE,
    Pattern,
    follows_pattern,
    least_squares_target,
    mask_weights,
    parse_pattern,
    refit_masked,
    relative_error,
    sparse_initializer_bytes,
    sparsegpt,
    tensorrt_verdict,
)
from nnopt_graph.pipeline.base import Pass, PassContext, PassResult, register_pass

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

_OPS = {"conv": "Conv", "gemm": "Gemm", "matmul": "MatMul"}
_STATS = (
    "layers-sparsified",
    "params-zeroed",
    "matmul-gemm-params-sparsified",
    "matmuls-to-gemm",
    "skipped-layers-already-sparse",
    "skipped-layers-kept-dense",
    "skipped-layers-pattern-mismatch",
    "skipped-layers-excluded",
    "skipped-layers-shared-weights",
    "skipped-layers-unsupported",
    "skipped-layers-in-functions",
    "skipped-subgraph-layers-magnitude-only",
    "skipped-no-calibration-data",
    "skipped-matmul-gemm-params-dense",
    "skipped-matmul-gemm-params-already-sparse",
)
# Reasons find_layers gives for a layer it cannot change, and the statistic that counts them.
_REASON_STAT = {"shared-weight": "skipped-layers-shared-weights"}


@dataclasses.dataclass(frozen=True)
class SparsifyOptions:
    """Options of sparsify.

    Attributes:
        pattern: ``N:M`` (at most N non-zeros in every M consecutive weights along the
            reduction axis) or ``unstructured``.
        ratio: fraction of each layer's weights to zero (unstructured only).
        importance: ``magnitude`` (|W|), ``wanda`` (|W| * ||X_j||) or ``obs`` (SparseGPT's
            w^2 / [H^-1]_jj^2); the last two need calibration data.
        reconstruct: update the kept weights column by column (SparseGPT) to compensate.
        refit: after the mask is chosen, solve each row's kept weights exactly by least
            squares on the calibration Hessian (never worse than SparseGPT's sweep on the
            calibration data; needs calibration).
        damp: Hessian damping as a fraction of its mean diagonal.
        block_size: columns the SparseGPT solver updates together.
        ops: which layers, ``+``- or ``,``-separated among conv, gemm, matmul.
        exclude: regular expression; layers whose node name matches stay dense.
        min_params: layers with fewer weights stay dense.
        keep_dense: leave this many layers dense, those whose sparsification costs the
            most output error (back-off raises it).
        sequential: calibrate each layer on the model with the layers before it already
            sparsified (one calibration run per layer input) instead of once.
        match_dense: with ``sequential``, reconstruct each layer toward the dense model's
            output (W X_dense) from its inputs in the partly sparsified model, so each
            layer corrects the drift of those before it (one dense and one partly sparse
            run per layer input).
        min_coverage: keep-dense (and back-off) never leave so many layers dense that
            less than this fraction of the MatMul/Gemm weights is sparsified; a more
            sensitive layer too large to keep dense is passed over for the next one.
        sensitivity: how layers are ranked for keep-dense: ``error`` (the layer's relative
            output error after pruning) or ``output`` (the worst calibration sample's
            cosine of the model outputs when only that layer is sparsified).
        max_samples: calibration samples used at most.
        max_hessian_mb: memory for the statistics of one calibration run; more layers
            take several runs.
        to_gemm: rewrite sparsified MatMuls with a constant 2-D weight as Gemm:
            ``auto`` when the target is tensorrt.
    """

    pattern: str = "2:4"
    ratio: float = dataclasses.field(default=0.5, metadata={"range": (0.0, 1.0, True, False)})
    importance: str = dataclasses.field(default="wanda", metadata={"choices": IMPORTANCES})
    reconstruct: bool = True
    refit: bool = False
    damp: float = dataclasses.field(default=0.01, metadata={"range": (0.0, 1e6, True, False)})
    block_size: int = dataclasses.field(default=128, metadata={"range": (1, None, True, True)})
    ops: str = "conv+gemm+matmul"
    exclude: str = ""
    min_params: int = dataclasses.field(default=0, metadata={"range": (0, None, True, True)})
    keep_dense: int = dataclasses.field(default=0, metadata={"range": (0, None, True, True)})
    sequential: bool = False
    match_dense: bool = True
    min_coverage: float = dataclasses.field(default=0.0, metadata={"range": (0.0, 1.0, True, True)})
    sensitivity: str = dataclasses.field(default="error", metadata={"choices": ("error", "output")})
    max_samples: int = dataclasses.field(default=128, metadata={"range": (1, None, True, True)})
    max_hessian_mb: int = dataclasses.field(default=1024, metadata={"range": (1, None, True, True)})
    to_gemm: str = dataclasses.field(
        default="auto", metadata={"choices": ("auto", "true", "false")}
    )

    def problem(self) -> str | None:
        """What is wrong with these options, or None."""
        try:
            parse_pattern(self.pattern, self.ratio)
        except ValueError as exc:
            return str(exc)
        unknown = set(_op_names(self.ops)) - set(_OPS)
        if unknown:
            return f"ops: unknown {', '.join(sorted(unknown))} (choose from conv, gemm, matmul)"
        if self.exclude:
            try:
                re.compile(self.exclude)
            except re.error as exc:
                return f"exclude: bad regular expression ({exc})"
        if self.keep_dense < 0 or self.max_samples < 1 or self.block_size < 1:
            return "keep-dense must be >= 0, max-samples and block-size >= 1"
        if not 0.0 <= self.damp < 1e6 or self.max_hessian_mb < 1:
            return "damp must be >= 0 and max-hessian-mb >= 1"
        if not 0.0 <= self.min_coverage <= 1.0:
            return "min-coverage must be in [0, 1]"
        if self.sensitivity not in ("error", "output"):
            return "sensitivity must be error or output"
        return None


def _op_names(text: str) -> list[str]:
    return [p for p in re.split(r"[+,\s]+", text.strip().lower()) if p]


@dataclasses.dataclass
class _Plan:
    """What happens to one layer."""

    layer: Layer
    original: ir.TensorProtocol
    new: np.ndarray | None = None
    error: float = 0.0
    importance: str = "magnitude"
    reconstructed: bool = False
    written: bool = False
    # Worst calibration sample's output cosine with only this layer sparsified.
    sensitivity: float | None = None
    # Calibration rows (tokens, pixels) its statistics came from.
    rows: int = 0


def _coverage_key(layer: Layer) -> bool:
    return layer.op in ("MatMul", "Gemm")


@register_pass
class SparsifyPass(Pass):
    """Zero weights in N:M (along the reduction axis) or unstructured patterns, with SparseGPT."""

    name = "sparsify"
    lossy = True
    Options = SparsifyOptions

    def __init__(self, options: Any = None, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        self._candidates: int | None = None
        self._dense_exhausted = False

    def requires(self, model: ir.Model) -> None:
        """Check the options (text options are checked here, when the pass is about to run).

        Raises:
            BadInputError: an option value is invalid.
        """
        problem = self.options.problem()
        if problem is not None:
            raise BadInputError(f"pass 'sparsify': {problem}")

    @property
    def pattern(self) -> Pattern:
        """The parsed pattern option."""
        return parse_pattern(self.options.pattern, self.options.ratio)

    def back_off(self) -> Pass | None:
        """Lower the ratio (unstructured) by 0.1, then leave more of the sensitive layers dense.

        Each step doubles ``keep-dense`` (0 -> 1 -> 2 -> 4 ...) until every candidate
        layer would stay dense, when there is nothing weaker left to try.
        """
        o = self.options
        if not self.pattern.structured and o.ratio - 0.1 >= 0.1 - 1e-9:
            return SparsifyPass(dataclasses.replace(o, ratio=round(o.ratio - 0.1, 6)))
        if not self._candidates or o.keep_dense >= self._candidates or self._dense_exhausted:
            return None
        keep = min(max(1, 2 * o.keep_dense), self._candidates)
        return SparsifyPass(dataclasses.replace(o, keep_dense=keep))

    # ------------------------------------------------------------------ selection

    def _select(
        self, model: ir.Model, stats: dict[str, int]
    ) -> list[tuple[Layer, ir.TensorProtocol]]:
        o = self.options
        pattern = self.pattern
        ops = frozenset(_OPS[p] for p in _op_names(o.ops))
        exclude = re.compile(o.exclude) if o.exclude else None
        chosen = []
        for node, layer, reason in find_layers(model, ops):
            if layer is None:
                stats[_REASON_STAT.get(reason or "", "skipped-layers-unsupported")] += 1
                logger.debug("sparsify: %s '%s' skipped: %s", node.op_type, node.name, reason)
                if (
                    node.op_type in ("MatMul", "Gemm")
                    and len(node.inputs) > 1
                    and node.inputs[1] is not None
                ):
                    tensor = read_weight(node.inputs[1])
                    if tensor is not None:
                        stats["skipped-matmul-gemm-params-dense"] += tensor.size
                continue
            tensor = read_weight(layer.weight)
            assert tensor is not None
            why = None
            if exclude is not None and exclude.search(layer.name):
                why, key = "excluded by name", "skipped-layers-excluded"
            elif tensor.size < o.min_params:
                why, key = f"{tensor.size} weights < min-params", "skipped-layers-excluded"
            elif pattern.structured and layer.c_in % pattern.m:
                why, key = (
                    f"{layer.c_in} input channels not a multiple of {pattern.m}",
                    "skipped-layers-pattern-mismatch",
                )
            elif follows_pattern(layer.to_matrix(tensor.numpy()), pattern):
                why, key = f"already {pattern}", "skipped-layers-already-sparse"
            if why is not None:
                stats[key] += 1
                logger.debug("sparsify: %s '%s' skipped: %s", layer.op, layer.name, why)
                if _coverage_key(layer):
                    kind = "already-sparse" if key == "skipped-layers-already-sparse" else "dense"
                    stats[f"skipped-matmul-gemm-params-{kind}"] += tensor.size
                continue
            chosen.append((layer, tensor))
        stats["skipped-layers-in-functions"] += sum(
            1
            for f in model.functions.values()
            for n in ir.traversal.RecursiveGraphIterator(f)
            if n.op_type in ops
        )
        return chosen

    # ------------------------------------------------------------------ solving

    def _solve(self, plan: _Plan, stat: ActivationStats | None) -> None:
        o = self.options
        pattern = self.pattern
        layer = plan.layer
        matrix = layer.to_matrix(plan.original.numpy().astype(np.float64))
        out = np.empty_like(matrix)
        num = den = 0.0
        plan.rows = stat.rows if stat is not None else 0
        for g, rows in enumerate(layer.group_rows()):
            block = matrix[rows]
            hessian = stat.sums[g] if stat is not None and stat.hessian else None
            energy = stat.energy(g) if stat is not None else None
            if stat is not None and stat.cross and hessian is not None:
                # Toward the dense model's output: the least-squares dense weights first.
                block = least_squares_target(block, hessian, stat.cross_sums[g], o.damp)
            if o.reconstruct and hessian is not None:
                new = sparsegpt(
                    block,
                    hessian,
                    pattern,
                    importance=plan.importance,
                    damp=o.damp,
                    block_size=o.block_size,
                ).matrix
            else:
                new = mask_weights(
                    block, pattern, _column_scale(plan.importance, energy, hessian, o.damp)
                )
            if o.refit and hessian is not None:
                new = refit_masked(block, hessian, new != 0, o.damp, start=new)
            out[rows] = new
            err = relative_error(block, new, hessian, energy)
            weight = _output_energy(block, hessian, energy)
            num += err * weight
            den += weight
        plan.new = layer.from_matrix(out).astype(plan.original.dtype.numpy())
        plan.error = num / den if den > 0 else 0.0

    def _calibrated(self, context: PassContext) -> tuple[Any, bool]:
        o = self.options
        needs = (
            o.reconstruct
            or o.importance != "magnitude"
            or (o.keep_dense > 0 and o.sensitivity == "output")
        )
        if not needs or context.calibration is None:
            return None, needs
        dataset = context.calibration
        if dataset.num_samples > o.max_samples:
            dataset = dataset.take(o.max_samples)
        return dataset, needs

    # ------------------------------------------------------------------ run

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Choose layers, calibrate, rank, keep the most sensitive dense, prune the rest.

        Without ``sequential`` every layer is solved once on the dense model's inputs.
        With it, layers are solved in graph order, each calibrated on the model with the
        layers before it already sparsified (and, with ``match-dense``, toward the dense
        model's output); which layers stay dense is decided first, from a one-shot solve.
        """
        o = self.options
        pattern = self.pattern
        stats = dict.fromkeys(_STATS, 0)
        chosen = self._select(model, stats)
        self._candidates = len(chosen)
        self._dense_exhausted = False
        dataset, needs = self._calibrated(context)
        if needs and dataset is None:
            stats["skipped-no-calibration-data"] = 1
            logger.warning(
                "sparsify: no calibration data; using magnitude importance without reconstruction"
            )
        hessian = o.reconstruct or o.importance == "obs"
        plans = [_Plan(layer, tensor) for layer, tensor in chosen]
        calibrated = [p for p in plans if dataset is not None and p.layer.in_main_graph]
        for p in plans:
            if dataset is None or not p.layer.in_main_graph:
                p.importance = "magnitude"
                if dataset is not None:
                    stats["skipped-subgraph-layers-magnitude-only"] += 1
            else:
                p.importance = o.importance
                p.reconstructed = o.reconstruct
        for p in plans:
            if p not in calibrated:
                self._solve(p, None)
        by_layer = {id(p.layer): p for p in calibrated}
        budget = o.max_hessian_mb << 20
        # A one-shot solve on the dense model's inputs: the result without sequential,
        # and what the layers are ranked by when some are to stay dense.
        if not o.sequential or o.keep_dense > 0:
            for sweep in _sweeps([p.layer for p in calibrated], hessian, budget, False):
                layer_stats = _calibrate(context.runtime, model, sweep, dataset, hessian)
                for layer in sweep:
                    self._solve(by_layer[id(layer)], layer_stats[id(layer)])
                del layer_stats
        total = (
            stats["skipped-matmul-gemm-params-dense"]
            + stats["skipped-matmul-gemm-params-already-sparse"]
            + sum(p.original.size for p in plans if _coverage_key(p.layer))
        )
        room = int(np.floor(total * (1.0 - o.min_coverage) + 1e-9))
        reference_outputs = None
        if o.keep_dense > 0 and o.sensitivity == "output" and dataset is not None:
            reference_outputs = [outs for [outs] in context.runtime.outputs([model], dataset)]
            fits = [p for p in plans if not _coverage_key(p.layer) or p.original.size <= room]
            self._measure_sensitivity(model, context, dataset, fits, reference_outputs)
        dense = self._choose_dense(plans, room)
        if o.sequential:
            reference = model.clone() if o.match_dense else None
            remaining = [p.layer for p in calibrated if id(p) not in dense]
            for sweep in _sweeps(remaining, hessian, budget, True):
                layer_stats = _calibrate(context.runtime, model, sweep, dataset, hessian, reference)
                for layer in sweep:
                    plan = by_layer[id(layer)]
                    self._solve(plan, layer_stats[id(layer)])
                    assert plan.new is not None
                    write_weight(layer.weight, plan.new)
                del layer_stats
        to_gemm = o.to_gemm == "true" or (o.to_gemm == "auto" and context.target == "tensorrt")
        taken = NameScope.for_model(model) if to_gemm else NameScope()
        decisions: list[dict[str, Any]] = []
        for p in plans:
            layer = p.layer
            assert p.new is not None
            if id(p) in dense:
                if not o.sequential:  # sequential never wrote it
                    write_weight(layer.weight, p.original.numpy())
                stats["skipped-layers-kept-dense"] += 1
                if _coverage_key(layer):
                    stats["skipped-matmul-gemm-params-dense"] += p.original.size
                logger.debug("sparsify: '%s' kept dense (relative error %.4g)", layer.name, p.error)
                decisions.append(self._decision(p, pattern, kept_dense=True))
                continue
            before = p.original.numpy()
            zeroed = int(np.count_nonzero((before != 0) & (p.new == 0)))
            write_weight(layer.weight, p.new)
            p.written = True
            stats["layers-sparsified"] += 1
            stats["params-zeroed"] += zeroed
            if _coverage_key(layer):
                stats["matmul-gemm-params-sparsified"] += int(p.new.size)
            logger.info(
                "sparsify: %s '%s' %s, %d weights zeroed, relative output error %.4g",
                layer.op,
                layer.name,
                pattern,
                zeroed,
                p.error,
            )
            decision = self._decision(p, pattern, kept_dense=False)
            if to_gemm and layer.op == "MatMul":
                why = _matmul_to_gemm(layer, model, taken)
                decision["to-gemm"] = why or "rewritten"
                if why is None:
                    stats["matmuls-to-gemm"] += 1
                    logger.info("sparsify: MatMul '%s' rewritten as Gemm for TensorRT", layer.name)
                else:
                    logger.debug("sparsify: MatMul '%s' left as MatMul: %s", layer.name, why)
            decisions.append(decision)
        summary = self._summary(stats, pattern)
        summary.update(
            {
                "min-coverage": o.min_coverage,
                "kept-dense": [p.layer.name for p in plans if id(p) in dense],
                "ranked-by": o.sensitivity if o.keep_dense > 0 else None,
                "calibration-samples": dataset.num_samples if dataset is not None else 0,
                "calibration-rows": max((p.rows for p in plans), default=0),
                "sequential": o.sequential,
                "match-dense": o.sequential and o.match_dense,
            }
        )
        if reference_outputs is not None:
            summary["calibration-cosine-min"] = round(
                self._worst_cosine(model, context, dataset, reference_outputs), 6
            )
        decisions.append(summary)
        return PassResult(stats, decisions)

    def _measure_sensitivity(
        self,
        model: ir.Model,
        context: PassContext,
        dataset: Any,
        plans: list[_Plan],
        reference: list[dict[str, np.ndarray]],
    ) -> None:
        """Each plan's sensitivity: the worst sample's cosine with only its layer sparse."""
        for p in plans:
            assert p.new is not None
            write_weight(p.layer.weight, p.new)
            try:
                p.sensitivity = self._worst_cosine(model, context, dataset, reference)
            finally:
                write_weight(p.layer.weight, p.original.numpy())
            logger.debug(
                "sparsify: '%s' alone sparse: worst cosine %.5f", p.layer.name, p.sensitivity
            )

    @staticmethod
    def _worst_cosine(
        model: ir.Model,
        context: PassContext,
        dataset: Any,
        reference: list[dict[str, np.ndarray]],
    ) -> float:
        """The worst sample's cosine (worst output) of ``model`` against the reference."""
        worst = 1.0
        runs = context.runtime.outputs([model], dataset)
        for [outs], ref in zip(runs, reference, strict=True):
            for name, value in ref.items():
                cos = sample_metrics(value, outs[name]).cosine
                worst = min(worst, cos if np.isfinite(cos) else -1.0)
        return worst

    def _choose_dense(self, plans: list[_Plan], room: int) -> set[int]:
        """The plans kept dense: the ``keep-dense`` most sensitive that fit in ``room``.

        ``room`` is how many MatMul/Gemm weights may stay dense under ``min-coverage``;
        a layer too large for what is left is passed over for the next most sensitive.
        Sets ``_dense_exhausted`` when no further layer would fit (back-off stops).
        """
        o = self.options
        if o.keep_dense == 0:
            self._dense_exhausted = not any(
                not _coverage_key(p.layer) or p.original.size <= room for p in plans
            )
            return set()
        if o.sensitivity == "output" and any(p.sensitivity is not None for p in plans):
            ranked = sorted(
                (p for p in plans if p.sensitivity is not None),
                key=lambda p: p.sensitivity or 0.0,
            )
        else:
            ranked = sorted(plans, key=lambda p: p.error, reverse=True)
        dense: set[int] = set()
        left = room
        for p in ranked:
            if len(dense) == o.keep_dense:
                break
            cost = p.original.size if _coverage_key(p.layer) else 0
            if cost <= left:
                dense.add(id(p))
                left -= cost
        self._dense_exhausted = len(dense) < o.keep_dense or not any(
            id(p) not in dense and (not _coverage_key(p.layer) or p.original.size <= left)
            for p in ranked
        )
        return dense

    def _decision(self, plan: _Plan, pattern: Pattern, *, kept_dense: bool) -> dict[str, Any]:
        layer = plan.layer
        array = plan.original.numpy() if kept_dense or plan.new is None else plan.new
        nonzeros = int(np.count_nonzero(array))
        verdict, why = tensorrt_verdict(pattern, layer.c_in, layer.rows)
        if layer.groups > 1 and verdict != "ineligible":
            verdict, why = "unlikely", f"grouped convolution (group={layer.groups})"
        return {
            "layer": layer.name,
            "op": layer.op,
            "weight": layer.weight.name,
            "shape": list(layer.shape),
            "pattern": "dense" if kept_dense else str(pattern),
            "sparsity": round(1.0 - nonzeros / max(array.size, 1), 6),
            "importance": plan.importance,
            "reconstructed": plan.reconstructed and not kept_dense,
            "relative-output-error": round(plan.error, 8),
            "sensitivity-cosine": None if plan.sensitivity is None else round(plan.sensitivity, 6),
            "calibration-rows": plan.rows,
            "tensorrt-sparse-kernels": "no (dense)" if kept_dense else verdict,
            "tensorrt-reason": "kept dense" if kept_dense else why,
            "bytes-on-disk": int(array.nbytes),
            "bytes-as-sparse-initializer": sparse_initializer_bytes(nonzeros, array.dtype.itemsize),
        }

    @staticmethod
    def _summary(stats: dict[str, int], pattern: Pattern) -> dict[str, Any]:
        covered = (
            stats["matmul-gemm-params-sparsified"]
            + stats["skipped-matmul-gemm-params-already-sparse"]
        )
        total = covered + stats["skipped-matmul-gemm-params-dense"]
        return {
            "summary": True,
            "pattern": str(pattern),
            "matmul-gemm-weight-coverage": round(covered / total, 6) if total else None,
            "tensorrt-rule": TENSORRT_RULE,
            "runtimes": (
                "ONNX Runtime (CPU and CUDA EPs) has no sparse kernels: zeros cost the same "
                "time as other weights there; only TensorRT runs 2:4 on sparse Tensor Cores. "
                "Run eliminate-zero-structure to turn whole zero channels into speed anywhere."
            ),
        }


def _column_scale(
    importance: str, energy: np.ndarray | None, hessian: np.ndarray | None, damp: float
) -> np.ndarray | None:
    """Per-column factor of |W| for mask-only pruning (None: magnitude)."""
    if importance == "wanda" and energy is not None:
        return np.sqrt(energy)
    if importance == "obs" and hessian is not None:
        h = hessian + damp * float(np.mean(np.diag(hessian)) or 1.0) * np.eye(len(hessian))
        return 1.0 / np.sqrt(np.clip(np.diag(np.linalg.pinv(h)), 1e-30, None))
    return None


def _output_energy(
    block: np.ndarray, hessian: np.ndarray | None, energy: np.ndarray | None
) -> float:
    if hessian is not None:
        return float(np.sum((block @ hessian) * block))
    if energy is not None:
        return float(np.sum(block**2 * energy[None, :]))
    return float(np.sum(block**2))

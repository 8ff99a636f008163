"""Structured pruning: remove channels, FFN neurons and attention heads by dependency group."""

# One module (~580 lines): the pass's options, its plan (groups, protection, scores,
# allocation, widths) and the run that applies one plan share the PrunePlan and the
# per-pass sensitivity cache that back-offs reuse. Each measurement or solver it calls
# lives in its own module here: importance, allocate, group_ratios, select, sensitivity,
# latency, reconstruct, compensate, shapes.

from __future__ import annotations

__all__ = ["PruneChannelsOptions", "PruneChannelsPass", "PrunePlan"]

import dataclasses
import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as ir_passes

from nnopt_graph.analysis.channels import (
    ROLE_IN,
    ROLE_OUT,
    ChannelAnalysis,
    ChannelGroup,
    analyze_channels,
    apply_channel_removal,
)
from nnopt_graph.analysis.walk import STANDARD_DOMAINS
from nnopt_graph.check.metrics import min_cosine
from nnopt_graph.core.annotations import annotations_not_added
from nnopt_graph.core.constants import const_array
from nnopt_graph.passes.prune.allocate import (
    allocate_budget,
    allocate_units,
    global_ratios,
    removed_params,
    sensitivity_levels,
    total_weight_params,
    unit_param_costs,
)
from nnopt_graph.passes.prune.compensate import BiasDelta, apply_bias_deltas, bias_deltas
from nnopt_graph.passes.prune.group_ratios import (
    match_group_ratios,
    parse_group_ratios,
    scale_group_ratios,
)
from nnopt_graph.passes.prune.head_refit import find_attention_blocks, refit_heads
from nnopt_graph.passes.prune.importance import (
    IMPORTANCE_KINDS,
    ChannelStats,
    Tap,
    collect_importance_data,
    group_importance,
)
from nnopt_graph.passes.prune.latency import WidthChoice, choose_width
from nnopt_graph.passes.prune.reconstruct import Sink, find_sinks, reconstruct_sinks
from nnopt_graph.passes.prune.select import removal_count, select_units
from nnopt_graph.passes.prune.sensitivity import masked_clone, run_outputs
from nnopt_graph.passes.prune.shapes import fold_copied_reshape_dims
from nnopt_graph.pipeline.base import Pass, PassContext, PassResult, register_pass
from nnopt_graph.runtime.data import Dataset, input_specs

if TYPE_CHECKING:
    from nnopt_graph.runtime.services import RuntimeServices

logger = logging.getLogger(__name__)

_WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
_STATS = (
    "groups-pruned",
    "units-removed",
    "channels-removed",
    "params-removed",
    "layers-reconstructed",
    "attention-blocks-refit",
    "layers-bias-compensated",
    "skipped-compensate-no-bias",
    "params-budget",
    "params-planned",
    "skipped-groups-frozen",
    "skipped-groups-protected",
    "skipped-nothing-prunable",
    "skipped-reconstruct-no-calibration",
    "skipped-reconstruct-unsupported",
    "skipped-reconstruct-subgraph",
    "skipped-reconstruct-too-large",
    "skipped-functions",
    "reshape-targets-folded",
)
# Calibration samples used to measure each group's sensitivity (search=true).
_SENSITIVITY_SAMPLES = 8


@dataclasses.dataclass(frozen=True)
class PruneChannelsOptions:
    """Options of prune-channels.

    Attributes:
        ratio: fraction of each prunable group's units to remove (channels, neurons, heads).
        round_to: keep every channel axis a multiple of this (groups of single channels),
            each Concat/Split segment included, so that the removed channels save time
            on the CPU's NCHWc Conv block (16 with AVX-512, 8 with AVX2). 0 (auto): 16
            for groups of at least 64 channels, none for smaller ones; 1: none.
        importance: auto (fluctuation for groups only MatMul/Gemm read, i.e. FFN neurons
            and heads; activation for the rest), activation (mean |activation| x weight
            norm on calibration data; l2 without data), fluctuation (FLAP: activation
            variance x squared weight norm; l2 without data), obs (structured Optimal
            Brain Surgeon: the error the refit cannot recover, from MatMul/Gemm sinks'
            input Grams; activation for Conv sinks), l1 | l2 (weight magnitude), bn-scale.
        scope: local (the same ratio in every group) or global (one ranking of
            normalized importances across groups).
        max_layer_ratio: never remove more than this fraction of a group.
        protect_first: keep the channels of layers reading a graph input.
        protect_last: keep groups consumed only by the last weighted layers.
        reconstruct: refit the consumers' weights by least squares on calibration data.
        ridge: ridge strength of the refit, relative to the mean feature energy.
        refit_heads: where heads were removed, also refit the kept heads' value weights
            jointly with the output projection (alternating least squares).
        calib_samples: calibration samples used at most.
        search: allocate per-group ratios by measured sensitivity curves (see ``budget``).
        budget: with ``search``, what ``ratio`` is a fraction of: params (weight
            parameters removed / all weight parameters of the weighted layers, taken where
            the measured sensitivity per parameter is lowest) or units (the average of the
            groups' unit ratios, inversely to sensitivity at ``ratio``).
        compensate: move the removed input channels' mean contribution into the next
            layer's bias (FLAP) for the layers the least-squares refit does not solve.
        latency_aware: time candidate widths on the target EP and prefer faster counts.
        min_ratio: back-off stops below this ratio.
        fold_shapes: first rewrite Reshape targets computed from the input's own dims
            (PyTorch attention exports) as constants, so attention heads become prunable.
        group_ratios: ``glob=ratio,...``: these groups take the given ratio; the others
            are allocated as above (with ``search``, from the budget left).
    """

    ratio: float = dataclasses.field(default=0.25, metadata={"range": (0.0, 1.0, True, False)})
    round_to: int = dataclasses.field(default=0, metadata={"range": (0, None, True, True)})
    importance: str = dataclasses.field(default="auto", metadata={"choices": IMPORTANCE_KINDS})
    scope: str = dataclasses.field(default="local", metadata={"choices": ("local", "global")})
    max_layer_ratio: float = dataclasses.field(
        default=0.75, metadata={"range": (0.0, 1.0, True, True)}
    )
    protect_first: bool = True
    protect_last: bool = True
    reconstruct: bool = True
    ridge: float = dataclasses.field(default=1e-3, metadata={"range": (0.0, None, True, True)})
    refit_heads: bool = True
    calib_samples: int = dataclasses.field(default=64, metadata={"range": (1, None, True, True)})
    search: bool = False
    budget: str = dataclasses.field(default="params", metadata={"choices": ("params", "units")})
    compensate: bool = False
    latency_aware: bool = False
    min_ratio: float = dataclasses.field(default=0.05, metadata={"range": (0.0, 1.0, True, False)})
    fold_shapes: bool = False
    group_ratios: str = ""

    def problem(self) -> str | None:
        """Why the text options are invalid, or None."""
        try:
            parse_group_ratios(self.group_ratios)
        except ValueError as exc:
            return str(exc)
        return None


def _dataset_shapes(dataset: Dataset | None) -> dict[str, list[int]]:
    if dataset is None or dataset.num_samples == 0:
        return {}
    feed = next(dataset.batches(1))
    return {name: list(array.shape) for name, array in feed.items()}


def _is_weighted(node: ir.Node) -> bool:
    if node.op_type not in _WEIGHTED or node.domain not in STANDARD_DOMAINS:
        return False
    return any(const_array(v) is not None for v in node.inputs[:2] if v is not None)


def _last_layers(model: ir.Model) -> set[int]:
    """Weighted main-graph nodes with no weighted node downstream."""
    below: dict[int, bool] = {}
    last: set[int] = set()
    for node in reversed(list(model.graph)):
        downstream = False
        for out in node.outputs:
            for use in out.uses():
                user = use.node
                if user.graph is not model.graph:
                    downstream = True
                else:
                    downstream = downstream or _is_weighted(user) or below.get(id(user), False)
        below[id(node)] = downstream
        if _is_weighted(node) and not downstream:
            last.add(id(node))
    return last


def _protection(
    model: ir.Model, group: ChannelGroup, last: set[int], options: PruneChannelsOptions
) -> str | None:
    inputs = {id(v) for v in model.graph.inputs if not v.is_initializer()}
    sinks = []
    for space in group.spaces:
        for role in space.roles:
            if role.role == ROLE_OUT and options.protect_first and role.node.inputs:
                data = role.node.inputs[0]
                if data is not None and id(data) in inputs:
                    return "first layer"
            if role.role == ROLE_IN:
                sinks.append(role.node)
    if options.protect_last and sinks and all(id(n) in last for n in sinks):
        return "last layer"
    return None


@dataclasses.dataclass
class PrunePlan:
    """What prune-channels decided for a model, before changing it.

    Attributes:
        analysis: the channel groups found.
        candidates: groups that may lose units (neither frozen nor protected).
        frozen: groups with no removable unit.
        protected: groups kept by protect-first/protect-last.
        scores: per candidate, the importance of each unit.
        kinds: per candidate, the importance kind used (after fallbacks).
        ratios: per candidate, the ratio allocated.
        sensitivity: per candidate, measured sensitivity at ``ratio`` (search=true).
        curves: per candidate, measured sensitivity at each level measured (search=true).
        reasons: per candidate, why its ratio was chosen.
        channel_stats: per tapped sink input, calibration statistics (data importances,
            compensate).
        budget: weight parameters the allocation aimed to remove (budget=params), or 0.
        widths: per candidate, the latency-aware width choice.
        keep: per candidate, the unit indices to keep.
        decisions: report entries of frozen and protected groups.
    """

    analysis: ChannelAnalysis | None = None
    candidates: list[ChannelGroup] = dataclasses.field(default_factory=list)
    frozen: list[ChannelGroup] = dataclasses.field(default_factory=list)
    protected: list[ChannelGroup] = dataclasses.field(default_factory=list)
    scores: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)
    kinds: dict[int, str] = dataclasses.field(default_factory=dict)
    ratios: dict[int, float] = dataclasses.field(default_factory=dict)
    sensitivity: dict[int, float] = dataclasses.field(default_factory=dict)
    curves: dict[int, dict[float, float]] = dataclasses.field(default_factory=dict)
    reasons: dict[int, str] = dataclasses.field(default_factory=dict)
    channel_stats: dict[Tap, ChannelStats] = dataclasses.field(default_factory=dict)
    budget: int = 0
    widths: dict[int, WidthChoice] = dataclasses.field(default_factory=dict)
    keep: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)
    decisions: list[dict[str, Any]] = dataclasses.field(default_factory=list)


@register_pass
class PruneChannelsPass(Pass):
    """Remove channels, FFN neurons and attention heads through channel dependency groups."""

    name = "prune-channels"
    lossy = True
    Options = PruneChannelsOptions

    def __init__(self, options: Any = None, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        # Sensitivities measured by search=true, kept across back-offs (same original model).
        self._sensitivity: dict[str, float] = {}

    def back_off(self) -> PruneChannelsPass | None:
        """Half the ratio, down to ``min-ratio``."""
        ratio = self.options.ratio / 2
        if ratio < self.options.min_ratio:
            return None
        weaker = PruneChannelsPass(
            self.options,
            ratio=round(ratio, 6),
            group_ratios=scale_group_ratios(self.options.group_ratios, 0.5),
        )
        weaker._sensitivity = self._sensitivity
        return weaker

    def _sensitivities(
        self,
        model: ir.Model,
        groups: Sequence[ChannelGroup],
        scores: dict[int, np.ndarray],
        dataset: Dataset,
        runtime: RuntimeServices,
        levels: dict[int, list[float]],
    ) -> dict[int, dict[float, float]]:
        """Per group, 1 - min output cosine when only it is pruned at each level (no refit)."""
        subset = dataset.take(min(_SENSITIVITY_SAMPLES, dataset.num_samples))
        todo = [
            (g, level)
            for g in groups
            if g.graph is model.graph
            for level in levels.get(g.id, [])
            if self._key(g, level) not in self._sensitivity
        ]
        reference = run_outputs(runtime, model, subset) if todo else []
        options = self.options
        for group, level in todo:
            keep = select_units(
                group,
                scores[group.id],
                removal_count(group, level, options.max_layer_ratio, options.round_to),
                options.round_to,
                options.max_layer_ratio,
            )
            if len(keep) == group.num_units:
                continue
            outputs = run_outputs(runtime, masked_clone(model, group, keep), subset)
            value = max(0.0, 1.0 - min_cosine(reference, outputs))
            self._sensitivity[self._key(group, level)] = value
        result: dict[int, dict[float, float]] = {}
        for group in groups:
            curve = {
                level: self._sensitivity[self._key(group, level)]
                for level in levels.get(group.id, [])
                if self._key(group, level) in self._sensitivity
            }
            if curve:
                result[group.id] = curve
        return result

    @staticmethod
    def _key(group: ChannelGroup, level: float) -> str:
        # The id too: unnamed nodes give several groups the same name.
        return f"{group.graph.name}/{group.id}/{group.name}/{group.num_units}@{level:g}"

    def _dataset(self, model: ir.Model, context: PassContext) -> Dataset | None:
        dataset: Dataset | None = context.calibration
        if dataset is not None and dataset.num_samples > self.options.calib_samples:
            dataset = dataset.take(self.options.calib_samples)
        return None if dataset is None else dataset.fit(input_specs(model))

    def _allocate(
        self, model: ir.Model, plan: PrunePlan, dataset: Dataset | None, context: PassContext
    ) -> None:
        """Fill ``plan.ratios`` (and sensitivities, reasons, budget) for the candidates."""
        options = self.options
        fixed = self._fixed_ratios(plan)
        candidates = [g for g in plan.candidates if g.id not in fixed]
        plan.ratios = {gid: ratio for gid, (ratio, _) in fixed.items()}
        plan.reasons = {gid: reason for gid, (_, reason) in fixed.items()}
        if options.search and dataset is not None:
            cap = options.max_layer_ratio
            if options.budget == "params":
                levels = {g.id: sensitivity_levels(options.ratio, cap) for g in candidates}
            else:
                levels = {g.id: [options.ratio] for g in candidates}
            plan.curves = self._sensitivities(
                model, candidates, plan.scores, dataset, context.runtime, levels
            )
            plan.sensitivity = {
                gid: curve[options.ratio]
                for gid, curve in plan.curves.items()
                if options.ratio in curve
            }
            if options.budget == "params":
                plan.budget = int(round(options.ratio * total_weight_params(model)))
                left = plan.budget - removed_params(plan.candidates, plan.ratios)
                chosen = allocate_budget(candidates, plan.curves, max(0.0, left), cap)
                plan.ratios.update({gid: a.ratio for gid, a in chosen.items()})
                plan.reasons.update({gid: a.reason for gid, a in chosen.items()})
                return
            ratios = allocate_units(candidates, plan.sensitivity, options.ratio, cap)
            reason = "units: inversely to sensitivity"
        elif options.scope == "global":
            ratios = global_ratios(candidates, plan.scores, options.ratio, options.max_layer_ratio)
            reason = "global ranking of importances"
        else:
            ratios = {g.id: options.ratio for g in candidates}
            reason = "uniform ratio"
        plan.ratios.update(ratios)
        plan.reasons.update(dict.fromkeys(ratios, reason))

    def _fixed_ratios(self, plan: PrunePlan) -> dict[int, tuple[float, str]]:
        """Per candidate matched by ``group-ratios``: (ratio, reason); warns of unused ones."""
        entries = parse_group_ratios(self.options.group_ratios)
        if not entries:
            return {}
        names = sorted({g.name for g in plan.analysis.groups} if plan.analysis else set())
        matched, unused = match_group_ratios(entries, names)
        for pattern in unused:
            logger.warning("prune-channels: group-ratios pattern '%s' matches no group", pattern)
            plan.decisions.append({"group_ratios_unmatched": pattern})
        return {
            g.id: (matched[g.name].ratio, f"group-ratios: '{matched[g.name].pattern}'")
            for g in plan.candidates
            if g.name in matched
        }

    def plan(self, model: ir.Model, context: PassContext) -> PrunePlan:
        """Decide what to remove without changing the model.

        Groups are analyzed (with dynamic inputs fixed to the calibration data's shapes
        for the analysis), frozen and protected groups set aside, units scored, ratios
        allocated (uniform, global ranking, or by sensitivity with ``search``), widths
        adjusted by timing with ``latency-aware``, and the lowest-scoring free units of
        each group chosen for removal.
        """
        options = self.options
        plan = PrunePlan()
        dataset = self._dataset(model, context)
        shapes = _dataset_shapes(dataset)
        shapes.update({k: list(v) for k, v in context.input_shapes.items()})
        plan.analysis = analyze_channels(model, shapes or None)
        last = _last_layers(model)
        for group in plan.analysis.groups:
            base = {
                "group": group.name,
                "graph": group.graph.name or "main",
                "units": group.num_units,
            }
            if group.frozen:
                plan.frozen.append(group)
                plan.decisions.append({**base, "status": f"frozen: {group.reason}"})
                continue
            protected = _protection(model, group, last, options)
            if protected:
                plan.protected.append(group)
                plan.decisions.append({**base, "status": f"protected: {protected}"})
                continue
            plan.candidates.append(group)
        if not plan.candidates or options.ratio <= 0:
            return plan
        candidates = plan.candidates
        plan.channel_stats, grams = collect_importance_data(
            context.runtime, model, candidates, dataset, options.importance, options.compensate
        )
        means = {t: v.mean_abs for t, v in plan.channel_stats.items()} or None
        variances = {t: v.var for t, v in plan.channel_stats.items()} or None
        for group in candidates:
            limit = removal_count(group, options.max_layer_ratio, options.max_layer_ratio, 1)
            plan.scores[group.id], plan.kinds[group.id] = group_importance(
                group, options.importance, means, variances, grams, limit, options.ridge
            )
        self._allocate(model, plan, dataset, context)
        ep = context.runtime.ep_for(context.target)
        for group in candidates:
            remove = removal_count(
                group, plan.ratios[group.id], options.max_layer_ratio, options.round_to
            )
            if options.latency_aware and remove > 0 and group.unit_width == 1:
                step = max(options.round_to, 8)
                cap = min(
                    int(math.floor(options.max_layer_ratio * group.num_units)),
                    len(group.prunable_units),
                )
                choice = choose_width(
                    group,
                    group.num_units - remove,
                    group.num_units - cap,
                    step,
                    plan.analysis.shapes,
                    context.runtime,
                    ep,
                )
                if choice is not None:
                    plan.widths[group.id] = choice
                    remove = group.num_units - choice.width
            plan.keep[group.id] = select_units(
                group, plan.scores[group.id], remove, options.round_to, options.max_layer_ratio
            )
        return plan

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Plan, remove the chosen units group by group, then refit the consumers."""
        with annotations_not_added(model):  # no value_info the input lacked (ORT fuses on it)
            return self._run(model, context)

    def _run(self, model: ir.Model, context: PassContext) -> PassResult:
        options = self.options
        stats = dict.fromkeys(_STATS, 0)
        stats["skipped-functions"] = len(model.functions)
        if options.ratio <= 0:
            return PassResult(stats, [])
        # Lossless: exported attention computes its head Reshapes from Shape; constant
        # targets let the analysis follow heads (otherwise every head group freezes).
        # Opt-in: on the trained MiniLM, uniform head pruning made the guard back off to
        # a smaller ratio for every group (bench/results/prune_transformer_fold_shapes.jsonl).
        if options.fold_shapes:
            stats["reshape-targets-folded"] = fold_copied_reshape_dims(model)
        plan = self.plan(model, context)
        decisions = list(plan.decisions)
        stats["skipped-groups-frozen"] = len(plan.frozen)
        stats["skipped-groups-protected"] = len(plan.protected)
        if not plan.candidates:
            stats["skipped-nothing-prunable"] = 1
            logger.info(
                "prune-channels: nothing prunable (%d groups, all frozen or protected)",
                len(plan.analysis.groups) if plan.analysis else 0,
            )
            return PassResult(stats, decisions)
        dataset = self._dataset(model, context)
        teacher = None
        if options.reconstruct:
            if dataset is None:
                stats["skipped-reconstruct-no-calibration"] = 1
                logger.warning("prune-channels: no calibration data, weights are not refit")
            else:
                teacher = model.clone()
        kept_all: dict[tuple[str, int], np.ndarray] = {}
        sink_nodes: list[ir.Node] = []
        # Bias compensation from the unpruned weights, written after removal.
        deltas: list[BiasDelta] = []
        if options.compensate and plan.channel_stats:
            for group in plan.candidates:
                if len(plan.keep[group.id]) < group.num_units:
                    deltas.extend(bias_deltas(group, plan.keep[group.id], plan.channel_stats))
        stats["params-budget"] = plan.budget
        # Planned from the unpruned weights (a weight shared by two pruned groups counts
        # its removed rows and columns twice, so it can exceed params-removed).
        for group in plan.candidates:
            removed_units = np.setdiff1d(np.arange(group.num_units), plan.keep[group.id])
            stats["params-planned"] += int(round(unit_param_costs(group)[removed_units].sum()))
        if plan.budget:
            params = total_weight_params(model)
            decisions.append({"allocation": "params", "budget_params": plan.budget})
            decisions[-1].update({"weight_params": params, "ratio": options.ratio})
        for group in plan.candidates:
            keep = plan.keep[group.id]
            primary = group.primary
            base: dict[str, Any] = {
                "group": group.name,
                "graph": group.graph.name or "main",
                "units": group.num_units,
                "importance": plan.kinds[group.id],
                "units_before": group.num_units,
                "units_after": int(len(keep)),
                "ratio": round(float(plan.ratios[group.id]), 4),
                "sensitivity": plan.sensitivity.get(group.id),
                "reason": plan.reasons.get(group.id, ""),
            }
            if group.id in plan.curves:
                base["sensitivity_curve"] = {
                    f"{k:g}": round(v, 6) for k, v in sorted(plan.curves[group.id].items())
                }
            if group.id in plan.widths:
                choice = plan.widths[group.id]
                base["latency_ms"] = {str(k): round(v, 4) for k, v in choice.latency_ms.items()}
                base["width_choice"] = choice.reason
            if len(keep) == group.num_units:
                size = primary.size if primary else None
                decisions.append({**base, "status": "unchanged", "channels": [size, size]})
                continue
            scores = plan.scores[group.id]
            removed = np.setdiff1d(np.arange(group.num_units), keep)
            result = apply_channel_removal(model, group, keep)
            kept_all.update(result.kept)
            after = len(result.kept[primary.key]) if primary is not None else None
            stats["groups-pruned"] += 1
            stats["units-removed"] += result.units_removed
            if primary is not None and after is not None:
                stats["channels-removed"] += primary.size - after
            stats["params-removed"] += result.params_removed
            for space in group.spaces:
                if space.has_role(ROLE_IN) and len(result.kept[space.key]) < space.size:
                    for role in space.roles:
                        if role.role == ROLE_IN and role.node not in sink_nodes:
                            sink_nodes.append(role.node)
            decisions.append(
                {
                    **base,
                    "status": "pruned",
                    "channels": [primary.size if primary else None, after],
                    "params_removed": int(result.params_removed),
                    "importance_kept_mean": float(scores[keep].mean()),
                    "importance_removed_mean": float(scores[removed].mean()),
                }
            )
            logger.info(
                "prune-channels: '%s' %d -> %d units (%s)",
                group.name,
                group.num_units,
                len(keep),
                plan.kinds[group.id],
            )
        if stats["params-removed"] or stats["units-removed"]:
            ir_passes.ShapeInferencePass(strict_mode=False)(model)
        sinks: list[Sink] = []
        if teacher is not None and sink_nodes and dataset is not None:
            sinks, skipped = find_sinks(model, sink_nodes, kept_all)
            stats.update({k: stats[k] + v for k, v in skipped.items()})
        if deltas:  # only the layers the refit does not solve
            done = apply_bias_deltas(deltas, kept_all, [s.node for s in sinks])
            stats.update({k: stats[k] + v for k, v in done.items()})
        if teacher is not None and sinks and dataset is not None:
            refit = reconstruct_sinks(
                context.runtime, model, teacher, sinks, dataset, ridge=options.ridge
            )
            if options.refit_heads:
                blocks, ridge = find_attention_blocks(sinks), options.ridge
                refit |= refit_heads(context.runtime, model, teacher, blocks, dataset, ridge=ridge)
            for key, value in refit.items():
                stats[key] = stats.get(key, 0) + value
        return PassResult(stats, decisions)

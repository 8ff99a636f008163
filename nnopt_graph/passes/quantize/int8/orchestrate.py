"""Target-aware int8 QDQ quantization, checked to fuse on the target and to run faster."""

# The pass: the orchestration its methods share through the per-model cache (calibration
# sweeps, calibrator choice, sensitivity ranking, speed search), which back-offs reuse; its
# parts are the other modules of this package (plan, edit, fusion, sensitivity, speed).

from __future__ import annotations

__all__ = ["QuantizeInt8Options", "QuantizeInt8Pass", "cpu_int8_features"]

import collections
import logging
import math
from typing import Any

import numpy as np
import onnx_ir as ir

from nnopt_graph.core.annotations import annotations_not_added
from nnopt_graph.core.names import NameScope
from nnopt_graph.passes.quantize.calib import (
    collect_histograms,
    collect_stats,
    entropy_range,
    mse_range,
    percentile_range,
)
from nnopt_graph.passes.quantize.common import (
    RankedBackOffPass,
    annotate_types,
    calibration_data,
    commit,
    drop_if_unused,
    ensure_opset,
    name_of,
    node_order,
    split_names,
    subgraph_nodes,
)
from nnopt_graph.passes.quantize.cost import (
    DROP_BELOW,
    KEEP_BELOW,
    CostModel,
    candidate_cost,
    float_weights,
    measured_node_macs,
)
from nnopt_graph.passes.quantize.int8.branches import with_taken_branches
from nnopt_graph.passes.quantize.int8.edit import (
    _act_params,
    _bias_add_of,
    _bias_shift,
    _Editor,
    _quantize_weight,
    _requantize,
)
from nnopt_graph.passes.quantize.int8.fusion import _fusion_check
from nnopt_graph.passes.quantize.int8.plan import (
    _CONV_OPS,
    _INT32_LIMIT,
    TARGET_OPS,
    QuantizeInt8Options,
    _Cache,
    _Format,
    _format,
    _Plan,
    _plan,
    _QParams,
    _QWeight,
    cpu_int8_features,
)
from nnopt_graph.passes.quantize.int8.sensitivity import (
    _context_sensitivity,
    _output_sensitivity,
    _output_sqnr,
    _sensitivity,
    _smooth,
)
from nnopt_graph.passes.quantize.int8.speed import (
    _SPEED_MARGIN,
    _Build,
    _kind,
    _latency_ratios,
)
from nnopt_graph.pipeline.base import PassContext, PassResult, register_pass
from nnopt_graph.runtime.data import Dataset

logger = logging.getLogger(__name__)


@register_pass
class QuantizeInt8Pass(RankedBackOffPass):
    """Insert int8 QDQ the target fuses (cpu/tensorrt), calibrated, guarded, never slower."""

    name = "quantize-int8"
    lossy = True
    Options = QuantizeInt8Options

    Cache = _Cache

    def __init__(self, options: Any = None, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        self._runtime: Any = None  # the job's RuntimeServices, set by run()

    def back_off(self) -> Any:
        """The same pass with the next most sensitive nodes in float (ranking made lazily)."""
        pending = self._cache.pending_rank
        if self._cache.ranking is None and pending is not None and self.options.fallback:
            self._cache.pending_rank = None
            self._rank(*pending)
        return super().back_off()

    def _calibrate(
        self, work: ir.Model, plan: _Plan, data: Dataset, calibrator: str
    ) -> dict[str, tuple[float, float]]:
        """Ranges of the plan's values by one calibrator (sweeps cached across attempts)."""
        cache = self._cache
        axes = {}
        for t in plan.targets:
            axes[name_of(t.node.inputs[0])] = 1 if t.node.op_type in _CONV_OPS else -1
        wanted = list(plan.tensors) + [n for n in axes if n not in plan.tensors]
        missing = [n for n in wanted if n not in cache.stats]
        if missing:
            cache.stats.update(
                collect_stats(work, missing, data, channel_axes=axes, capture=self._runtime.capture)
            )
        if calibrator == "minmax":
            return {n: (cache.stats[n].low, cache.stats[n].high) for n in plan.tensors}
        missing = [n for n in plan.tensors if n not in cache.histograms]
        if missing:
            ranges = {n: (cache.stats[n].low, cache.stats[n].high) for n in missing}
            cache.histograms.update(
                collect_histograms(
                    work, ranges, data, bins=self.options.bins, capture=self._runtime.capture
                )
            )
        out = {}
        for name in plan.tensors:
            hist = cache.histograms[name]
            if calibrator.startswith("percentile"):
                _, _, value = calibrator.partition("-")
                out[name] = percentile_range(
                    hist, float(value) if value else self.options.percentile
                )
            elif calibrator == "mse":
                out[name] = mse_range(hist)
            else:
                out[name] = entropy_range(hist)
        return out

    def _choose_calibrator(
        self,
        model: ir.Model,
        base: ir.Model,
        plan: _Plan,
        data: Dataset,
        target: str,
        fmt: _Format,
        exclude: set[str],
    ) -> tuple[str, dict[str, float]]:
        """For ``auto``: the calibrator whose quantized model has the best output SQNR.

        Candidates: min-max, percentiles 99.99 and 99.9, entropy; measured on the
        calibration samples the sensitivity analysis uses.
        """
        sample = data.take(max(1, self.options.sensitivity_samples))
        scores: dict[str, float] = {}
        for name in ("minmax", "percentile-99.99", "percentile-99.9", "entropy"):
            ranges = self._calibrate(base, plan, data, name)
            candidate = self._build(base, target, fmt, exclude, ranges, False)
            if not candidate.quantized:
                continue
            scores[name] = _output_sqnr(model, candidate.work, sample, self._runtime)
        best = max(scores, key=lambda n: scores[n]) if scores else "minmax"
        return best, scores

    def _quantities(
        self, plan: _Plan, ranges: dict[str, tuple[float, float]], fmt: _Format
    ) -> tuple[dict[str, _QParams], dict[str, _QWeight], dict[str, tuple[str, int, np.ndarray]]]:
        """Scales of the plan's values, int8 weights, and (bias-corrected) biases."""
        options = self.options
        members: dict[str, list[str]] = collections.defaultdict(list)
        for name in plan.tensors:
            members[plan.groups.find(name)].append(name)
        params: dict[str, _QParams] = {}
        for group in members.values():
            qp = _act_params(
                min(ranges[n][0] for n in group), max(ranges[n][1] for n in group), fmt
            )
            params.update((n, qp) for n in group)
        weights: dict[str, _QWeight] = {}
        bias_adds: dict[str, tuple[str, int, np.ndarray]] = {}
        for t in plan.targets:
            if t.weight is None:
                continue
            q, scale = _quantize_weight(t.weight, t.axis, options.per_channel, fmt.weight_max)
            bias = t.bias
            if options.bias_correction:
                shape = [1] * t.weight.ndim
                if options.per_channel:
                    shape[t.axis] = -1
                delta = q.astype(np.float64) * scale.reshape(shape) - t.weight
                st = self._cache.stats.get(name_of(t.node.inputs[0]))
                mean = st.channel_mean if st is not None else None
                shift = _bias_shift(t, delta, mean) if mean is not None else None
                if shift is not None and np.any(shift):
                    if t.node.op_type == "MatMul" and bias is None:
                        found = _bias_add_of(t.node, t.weight.shape[t.axis])
                        if found is not None:
                            add, index, old = found
                            bias_adds[name_of(t.node)] = (
                                name_of(add),
                                index,
                                (old - shift).astype(np.float32),
                            )
                    elif t.node.op_type != "ConvTranspose":
                        bias = ((bias if bias is not None else 0.0) - shift).astype(np.float32)
            bias_q = b_scale = None
            if bias is not None and fmt.quantize_bias:
                x_scale = np.float32(params[name_of(t.node.inputs[0])].scale)
                # int32 holds the bias only if x_scale * w_scale >= |bias| / (2**31 - 1):
                # widen the weight scale of channels with tiny weights and a large bias
                # (else their bias would saturate), with 2x headroom for float32 rounding.
                need = (
                    np.abs(bias).astype(np.float64) / (float(x_scale) * _INT32_LIMIT / 2)
                ).astype(np.float32)
                if options.per_channel and np.any(scale < need):
                    scale = np.maximum(scale, need)
                    q = _requantize(t.weight, scale, t.axis, fmt.weight_max)
                elif not options.per_channel and scale < need.max():
                    scale = np.maximum(scale, need.max()).astype(np.float32)
                    q = _requantize(t.weight, scale, None, fmt.weight_max)
                b_scale = (x_scale * scale).astype(np.float32)
                # A zero product scale (an all-zero weight channel) holds no bias: 0 there.
                safe = np.where(b_scale > 0, b_scale, np.float32(1.0)).astype(np.float64)
                codes = np.nan_to_num(np.rint(bias.astype(np.float64) / safe), nan=0.0)
                limit = _INT32_LIMIT
                bias_q = np.where(b_scale > 0, np.clip(codes, -limit, limit), 0).astype(np.int32)
            weights[name_of(t.node)] = _QWeight(q, scale, bias, bias_q, b_scale)
        return params, weights, bias_adds

    def _build(
        self,
        base: ir.Model,
        target: str,
        fmt: _Format,
        exclude: set[str],
        ranges: dict[str, tuple[float, float]],
        fusion_check: bool,
    ) -> _Build:
        """A copy of ``base`` with QDQ inserted for the plan minus ``exclude``, fusion-checked."""
        options = self.options
        work = base.clone()
        graph = work.graph
        plan = _plan(graph, target, options, exclude)
        params, weights, bias_adds = self._quantities(plan, ranges, fmt)
        stats: collections.Counter[str] = collections.Counter(plan.skipped)
        editor = _Editor(graph)
        order = node_order(graph)
        for name, value in plan.tensors.items():
            editor.quantize_value(value, params[name], order)
        nodes = {name_of(n): n for n in graph}
        for t in plan.targets:
            if t.weight is None:
                continue
            w = weights[name_of(t.node)]
            record = editor.quantize_weight(t.node, w.q, w.scale, t.axis, options.per_channel)
            record.corrected = w.bias is not None and (
                t.bias is None or not np.array_equal(w.bias, t.bias)
            )
            quantized = None
            if w.bias_q is not None and w.bias_scale is not None:
                quantized = (w.bias_q, w.bias_scale)
            if w.bias is not None and (quantized is not None or record.corrected):
                editor.set_bias(record, w.bias, 2, quantized, options.per_channel)
            if name_of(t.node) in bias_adds:
                add_name, index, corrected_bias = bias_adds[name_of(t.node)]
                editor.correct_add(record, nodes[add_name], index, corrected_bias)
                record.corrected = True
        fusion = _fusion_check(work, editor, self._runtime) if fusion_check else None
        freed = 0
        for record in editor.weights:
            freed += drop_if_unused(graph, record.original)
            freed += drop_if_unused(graph, record.bias_original)
            freed -= record.float_bytes // 4
        stats["nodes-quantized"] = len(editor.weights)
        stats["values-quantized"] = len(editor.acts)
        stats["biases-corrected"] = sum(1 for r in editor.weights if r.corrected)
        stats["skipped-unfused-qdq-removed"] = editor.removed_edges
        stats["bytes-saved"] = max(freed, 0)
        # Worth keeping only when a weighted node (or a MatMul of two activations) runs in
        # int8: QLinear ops alone just add Quantize/Dequantize.
        act_matmuls = any(t.weight is None for t in plan.targets) and bool(editor.acts)
        int8_nodes = {name_of(r.node) for r in editor.weights}
        return _Build(work, stats, fusion, bool(editor.weights) or act_matmuls, int8_nodes)

    def _speed_search(
        self,
        model: ir.Model,
        base: ir.Model,
        plan: _Plan,
        build: Any,
        data: Dataset,
        measure: bool,
    ) -> tuple[_Build | None, dict[str, Any]]:
        """Keep the node families whose int8 form is faster; None when nothing is.

        By default "faster" is the deterministic cost model (quantize_cost); with
        ``measure`` it is timed, interleaved, and must win by a margin.
        """
        runs = self.options.speed_runs
        cache = self._cache
        feed = next(data.batches(self.options.speed_batch))
        costs = None
        if not measure:
            shapes = {k: list(v.shape) for k, v in feed.items()}
            macs, unknown = measured_node_macs(base, shapes, data, self._runtime.capture)
            vnni = bool(cpu_int8_features()["vnni"])
            costs = CostModel(macs, vnni, unknown, float_weights(base))

        def ratios(candidates: list[_Build]) -> list[float]:
            if costs is not None:
                return [
                    candidate_cost(costs, c.work, c.int8_nodes, c.fusion)["ratio"]
                    for c in candidates
                ]
            timed = _latency_ratios(
                [model, *(c.work for c in candidates)],
                data,
                runs,
                self._runtime,
                self.options.speed_batch,
            )
            return [r["median"] for r in timed[1:]]

        drop_below = DROP_BELOW if costs is not None else 0.97
        if cache.kinds_off is None:
            current = build(set())
            if not current.quantized:
                return None, {"speed-check": "nothing fused: no int8 left to time"}
            kinds: dict[str, list[str]] = collections.defaultdict(list)
            for node in plan.region():
                kinds[_kind(node)].append(name_of(node))
            off: list[str] = []
            trials = []
            if len(kinds) > 1:
                # Largest families first: they move latency the most.
                for kind in sorted(kinds, key=lambda k: (-len(kinds[k]), k)):
                    names = {n for k in [*off, kind] for n in kinds[k]}
                    candidate = build(names)
                    if not candidate.quantized:
                        continue
                    with_kind, without = ratios([current, candidate])
                    trials.append(
                        {
                            "without": kind,
                            "int8-ratio": round(with_kind, 4),
                            "without-ratio": round(without, 4),
                        }
                    )
                    if without < with_kind * drop_below:
                        off.append(kind)
                        current = candidate
            cache.kinds_off = off
            cache.kind_names = {k: kinds[k] for k in off}
            decision: dict[str, Any] = {
                "speed-search": f"node families dropped from int8 when the model "
                f"{'measured' if costs is None else 'is modelled'} >= "
                f"{100 * (1 - drop_below):.0f}% faster without them",
                "families": {k: len(v) for k, v in kinds.items()},
                "dropped": off,
                "trials": trials,
            }
        else:
            names = {n for k in cache.kinds_off for n in cache.kind_names.get(k, [])}
            current = build(names)
            decision = {"speed-search": "reused", "dropped": cache.kinds_off}
            if not current.quantized:
                return None, decision
        if costs is not None:
            modelled = candidate_cost(costs, current.work, current.int8_nodes, current.fusion)
            decision["speed-check"] = (
                "cost model (deterministic): MACs at the calibration feed's shapes over int8 "
                "speedups per kernel, plus standalone Quantize/Dequantize elements and a "
                "fixed cost per extra kernel call (standalone Q/DQ, layout Transposes), "
                "all read off ONNX Runtime's optimized graph"
            )
            decision["modelled"] = modelled
            ratio, bound = modelled["ratio"], KEEP_BELOW
        else:
            timed = _latency_ratios(
                [model, current.work], data, runs, self._runtime, self.options.speed_batch
            )[1]
            decision["speed-check"] = (
                f"measured: CPU EP, 2 threads, spinning off, >= {runs} interleaved runs "
                f"(>= 1 s) after 3 warm-up, first calibration feed (batch "
                f"{self.options.speed_batch} when sliced)"
            )
            decision["latency-ratio"] = {k: round(v, 4) for k, v in timed.items()}
            ratio, bound = timed["median"], _SPEED_MARGIN
        if not ratio < bound:
            how = "modelled cost" if costs is not None else "median latency"
            decision["result"] = f"int8 not faster ({how} ratio {ratio:.3f} >= {bound}): float kept"
            return None, decision
        return current, decision

    def _rank(
        self,
        base: ir.Model,
        plan: _Plan,
        ranges: dict[str, tuple[float, float]],
        fmt: _Format,
        data: Dataset,
        target: str,
        exclude: set[str],
    ) -> None:
        """Order the region's nodes for back-off, most sensitive first (cached)."""
        options = self.options
        cache = self._cache
        sample = data.take(max(1, options.sensitivity_samples))
        try:
            if options.sensitivity == "output":

                def alone(extra: set[str]) -> _Build:
                    return self._build(base, target, fmt, exclude | extra, ranges, False)

                cache.sqnr = _output_sensitivity(base, plan, alone, sample, self._runtime)
                how = (
                    "output: each weighted node alone in int8, worst sample's cosine "
                    "deficit of the model output in dB (computed when the guard first fails)"
                )
            elif options.sensitivity == "context":
                full = self._build(base, target, fmt, exclude, ranges, False)
                added = _context_sensitivity(base, full.work, plan, sample, self._runtime)
                cache.sqnr = {
                    n: (10 * math.log10(1 / v) if v > 0 else math.inf) for n, v in added.items()
                }
                how = (
                    "in-context: noise-to-signal each node adds (its output's minus its "
                    "inputs') inside the fully quantized model"
                )
            else:
                params, weights, _ = self._quantities(plan, ranges, fmt)
                cache.sqnr = _sensitivity(
                    base, plan, params, weights, options.per_channel, sample, self._runtime
                )
                how = (
                    "local SQNR: each node's own output with only that node's inputs, "
                    "weights and output quantized"
                )
            order = {name_of(n): i for i, n in enumerate(plan.region())}
            cache.ranking = sorted(cache.sqnr, key=lambda n: (cache.sqnr[n], order.get(n, 0)))
        except Exception as exc:  # advisory: back off in plan order
            logger.warning("per-node sensitivity failed (%s): back-off follows plan order", exc)
            cache.ranking = [name_of(n) for n in plan.region()]
            how = f"failed ({type(exc).__name__}); plan order"
        cache.sensitivity_decision = {
            "sensitivity": f"{how} ({sample.num_samples} calibration samples); "
            "back-off leaves the most sensitive in float first",
            "most-sensitive-db": [
                [n, round(v, 2) if math.isfinite(v) else None]
                for n in cache.ranking[:8]
                for v in [cache.sqnr.get(n, math.nan)]
            ],
        }

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Plan, calibrate, insert QDQ, keep what fuses and is faster; see the README.

        An If branch every calibration sample takes is quantized too (int8/branches.py).
        """
        with annotations_not_added(model):  # no value_info the input lacked (ORT fuses on it)
            return with_taken_branches(
                self._quantize, model, context, self.options.samples, self._cache
            )

    def _quantize(self, model: ir.Model, context: PassContext) -> PassResult:
        """The pass on the main graph as it stands."""
        target = context.target or "cpu"
        options = self.options
        self._runtime = context.runtime
        result = PassResult()
        skipped_sub = subgraph_nodes(model, TARGET_OPS)
        if target == "cuda":
            result.stats = {"nodes-quantized": 0, "skipped-target-cuda": 1}
            result.decisions.append(
                {
                    "target": "cuda",
                    "action": "no int8 QDQ inserted",
                    "reason": "ONNX Runtime's CUDA EP has no int8 Conv/MatMul kernels: "
                    "QDQ would run as float with extra Quantize/Dequantize; use quantize-fp16 and "
                    "quantize-int4 (MatMulNBits) for CUDA, or --target tensorrt for int8",
                }
            )
            return result
        fmt = _format(target, options)
        exclude = set(split_names(options.exclude))
        base, upgraded = ensure_opset(model.clone(), 13)
        annotate_types(base)
        plan = _plan(base.graph, target, options, exclude)
        decisions: list[dict[str, Any]] = [{"target": target, **fmt.decision}]
        unchanged = {
            "nodes-quantized": 0,
            **plan.skipped,
            "skipped-nodes-in-subgraphs": skipped_sub,
        }
        if not plan.targets:
            result.stats = unchanged
            result.decisions = decisions
            return result
        data = calibration_data(base, context, options.samples)
        smoothed = 0
        if options.smooth_quant > 0:
            self._calibrate(base, plan, data, "minmax")
            smoothed = _smooth(
                base.graph,
                plan.targets,
                self._cache.stats,
                options.smooth_quant,
                self._cache,
                NameScope.for_graph(base.graph),
            )
            plan = _plan(base.graph, target, options, exclude)
        calibrator = options.calibrator
        if calibrator == "auto":
            if self._cache.calibrator is None:
                self._cache.calibrator, self._cache.calibrator_scores = self._choose_calibrator(
                    model, base, plan, data, target, fmt, exclude
                )
            calibrator = self._cache.calibrator
        elif calibrator == "percentile":
            calibrator = f"percentile-{options.percentile:g}"
        ranges = self._calibrate(base, plan, data, calibrator)
        decisions.append(
            {
                "calibrator": calibrator,
                "auto-scores-sqnr-db": {
                    k: round(v, 2) for k, v in self._cache.calibrator_scores.items()
                },
                "samples": data.num_samples,
                "values": len(plan.tensors),
            }
        )
        if options.fallback and self._cache.ranking is None:
            if options.sensitivity == "output":
                # Measured only if the guard fails (back_off): one build and run per node.
                self._cache.pending_rank = (base, plan, ranges, fmt, data, target, exclude)
            else:
                self._rank(base, plan, ranges, fmt, data, target, exclude)
        if self._cache.ranking:
            decisions.append(self._cache.sensitivity_decision)
        check = target == "cpu"

        def build(extra: set[str]) -> _Build:
            return self._build(base, target, fmt, exclude | extra, ranges, check)

        if target == "cpu" and options.speed_check:
            measure = context.speed_check == "measure"
            chosen, speed = self._speed_search(model, base, plan, build, data, measure)
            decisions.append(speed)
        else:
            chosen = build(set())
            if not chosen.quantized:
                chosen = None
            if target == "cpu":
                decisions.append({"speed-check": "off (speed-check=false)"})
            else:
                decisions.append({"speed-check": "not possible here: no TensorRT EP"})
        if chosen is not None and chosen.fusion is not None:
            fusion = dict(chosen.fusion)
            fusion["standalone-qdq"] = len(fusion.get("standalone-qdq", []))
            decisions.append(fusion)
        if target == "tensorrt":
            result.notes.append(
                "TensorRT fusion could not be checked: no TensorRT execution provider here; "
                "QDQ placed by TensorRT's rules, unverified on the target"
            )
        if chosen is None:
            result.stats = {**unchanged, "skipped-not-faster-or-unfused": 1}
            result.decisions = decisions
            why = next((d["result"] for d in decisions if "result" in d), None)
            result.notes.append(
                f"int8 kept float: {why}" if why else "int8 kept float: nothing fused on the target"
            )
            return result
        stats = chosen.stats
        stats["skipped-nodes-in-subgraphs"] = skipped_sub
        stats["matmuls-smoothed"] = smoothed
        if upgraded:
            stats["opset-upgraded"] = 1
        commit(model, chosen.work)
        logger.info(
            "quantize-int8: %d weighted nodes, %d values in int8",
            stats["nodes-quantized"],
            stats["values-quantized"],
        )
        result.stats = dict(stats)
        result.decisions = decisions
        return result

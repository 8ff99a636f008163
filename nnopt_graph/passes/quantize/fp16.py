"""Float16 conversion with a block list, overflow checks, fp32 model I/O and few Casts."""

from __future__ import annotations

__all__ = ["DEFAULT_BLOCK_LIST", "QuantizeFp16Options", "QuantizeFp16Pass"]

import collections
import dataclasses
import logging
from typing import Any

import numpy as np
import onnx_ir as ir

from nnopt_graph.analysis.walk import STANDARD_DOMAINS
from nnopt_graph.core.constants import const_array
from nnopt_graph.core.names import NameScope
from nnopt_graph.passes.quantize.common import (
    RankedBackOffPass,
    add_initializer,
    annotate_types,
    calibration_data,
    commit,
    drop_if_unused,
    name_of,
    split_names,
)
from nnopt_graph.pipeline.base import PassContext, PassResult, register_pass

logger = logging.getLogger(__name__)

FP16_MAX = 65504.0
# Ops that overflow, lose range or index precision in float16, or have no float16 schema
# (after onnxconverter-common's default block list).
DEFAULT_BLOCK_LIST = frozenset(
    {
        "ArrayFeatureExtractor",
        "Binarizer",
        "CastMap",
        "CategoryMapper",
        "DictVectorizer",
        "FeatureVectorizer",
        "Imputer",
        "LabelEncoder",
        "LinearClassifier",
        "LinearRegressor",
        "Normalizer",
        "OneHotEncoder",
        "SVMClassifier",
        "SVMRegressor",
        "Scaler",
        "TreeEnsembleClassifier",
        "TreeEnsembleRegressor",
        "ZipMap",
        "NonMaxSuppression",
        "TopK",
        "RoiAlign",
        "Resize",
        "Upsample",
        "Range",
        "CumSum",
        "Min",
        "Max",
        "RandomUniformLike",
        "RandomNormalLike",
        "RandomUniform",
        "RandomNormal",
        "Multinomial",
        "EyeLike",
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
    }
)
# Reductions whose float16 accumulation loses accuracy over many elements.
_REDUCTIONS = frozenset(
    {
        "ReduceSum",
        "ReduceMean",
        "ReduceSumSquare",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceProd",
        "Softmax",
        "LogSoftmax",
    }
)
# Inputs that stay float32 even when their node runs in float16 (their own type parameter).
_FLOAT32_SLOTS = frozenset({("Dropout", 1), ("Pow", 1)})
_F32 = ir.DataType.FLOAT
_F16 = ir.DataType.FLOAT16


@dataclasses.dataclass(frozen=True)
class QuantizeFp16Options:
    """Options of quantize-fp16."""

    keep_io: bool = True
    block: str = ""
    exclude: str = ""
    reduction_limit: int = dataclasses.field(
        default=4096, metadata={"range": (0, None, True, True)}
    )
    overflow_margin: float = dataclasses.field(
        default=0.5, metadata={"range": (0.0, 1.0, False, True)}
    )
    samples: int = dataclasses.field(default=8, metadata={"range": (0, None, True, True)})
    fallback: bool = True


@dataclasses.dataclass
class _Cache:
    absmax: dict[str, float] | None = None
    shapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    ranking: list[str] | None = None


def _has_subgraph(node: ir.Node) -> bool:
    return any(
        isinstance(a, ir.Attr) and a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
        for a in node.attributes.values()
    )


def _subgraph_node_count(node: ir.Node) -> int:
    count = 0
    for attr in node.attributes.values():
        if not isinstance(attr, ir.Attr):
            continue
        graphs = (
            [attr.as_graph()]
            if attr.type == ir.AttributeType.GRAPH
            else (list(attr.as_graphs()) if attr.type == ir.AttributeType.GRAPHS else [])
        )
        for g in graphs:
            count += sum(1 for _ in ir.traversal.RecursiveGraphIterator(g))
    return count


def _reduced_elements(node: ir.Node, shape: tuple[int, ...]) -> int:
    """Elements each output of a reduction or softmax sums over, for an input of ``shape``."""
    rank = len(shape)
    if not rank:
        return 1
    if node.op_type in ("Softmax", "LogSoftmax"):
        attr = node.attributes.get("axis")
        axis = attr.as_int() if attr is not None else -1
        return int(shape[axis % rank])
    axes: list[int] | None = None
    if "axes" in node.attributes:
        axes = list(node.attributes["axes"].as_ints())
    elif len(node.inputs) > 1 and node.inputs[1] is not None:
        array = const_array(node.inputs[1])
        axes = None if array is None else [int(a) for a in np.asarray(array).reshape(-1)]
    if not axes:
        noop = node.attributes.get("noop_with_empty_axes")
        if noop is not None and noop.as_int():
            return 1
        return int(np.prod(shape))
    return int(np.prod([shape[a % rank] for a in axes]))


def _floats(values: Any) -> list[ir.Value]:
    return [v for v in values if v is not None and v.dtype == _F32]


def _sweep(
    model: ir.Model, data: Any, context: PassContext
) -> tuple[dict[str, float], dict[str, tuple[int, ...]]]:
    """Largest |value| of every float main-graph value and the shape it had, in one sweep."""
    names = [name_of(v) for v in model.graph.inputs if v.dtype in (_F32, _F16)]
    for node in model.graph:
        names.extend(name_of(o) for o in node.outputs if o.dtype in (_F32, _F16) and name_of(o))
    absmax: dict[str, float] = {}
    shapes: dict[str, tuple[int, ...]] = {}

    def on_batch(batch: dict[str, np.ndarray]) -> None:
        for name, array in batch.items():
            array = np.asarray(array)
            shapes[name] = tuple(array.shape)
            if array.size:
                finite = (
                    np.abs(array[np.isfinite(array)])
                    if not np.all(np.isfinite(array))
                    else np.abs(array)
                )
                peak = float(finite.max()) if finite.size else 0.0
                if not np.all(np.isfinite(array)):
                    peak = float("inf")
                absmax[name] = max(absmax.get(name, 0.0), peak)

    if names:
        context.runtime.capture(model, names, data, on_batch, threads=2)
    return absmax, shapes


@register_pass
class QuantizeFp16Pass(RankedBackOffPass):
    """Convert float32 to float16 except blocked ops, overflowing values and model I/O."""

    name = "quantize-fp16"
    lossy = True
    Options = QuantizeFp16Options

    Cache = _Cache

    def _decide(
        self, graph: ir.Graph, absmax: dict[str, float], shapes: dict[str, tuple[int, ...]]
    ) -> tuple[dict[int, str], collections.Counter[str]]:
        """Per main-graph node (by id) a mode, and why nodes stay float32.

        Modes: "half", "float", "boundary" (a Cast of floats, left alone) or "neutral"
        (no float output: it reads whatever its inputs are).
        """
        options = self.options
        block = DEFAULT_BLOCK_LIST | set(split_names(options.block))
        exclude = set(split_names(options.exclude))
        limit = FP16_MAX * options.overflow_margin
        skipped: collections.Counter[str] = collections.Counter()
        too_big = {name for name, peak in absmax.items() if not peak <= limit}
        modes: dict[int, str] = {}
        for node in graph:
            floats_in = _floats(node.inputs)
            floats_out = _floats(node.outputs)
            reason = None
            if node.domain not in STANDARD_DOMAINS:
                reason = "custom-domain"
            elif _has_subgraph(node):
                reason = "subgraph-nodes"
                skipped["skipped-nodes-in-subgraphs"] += _subgraph_node_count(node)
            elif node.op_type in block:
                reason = "blocked-ops"
            elif node.op_type == "Cast":
                source = node.inputs[0]
                # Casts of floats are boundaries (ours, or the model's): left as they are.
                if (
                    source is None
                    or source.dtype in (_F16, _F32, ir.DataType.DOUBLE)
                    or not floats_out
                ):
                    modes[id(node)] = "boundary"
                    continue
            elif not floats_out:
                modes[id(node)] = "neutral"
                continue
            if reason is None and any(v is not None and v.dtype is None for v in node.inputs):
                reason = "unknown-types"  # e.g. after a custom op: cannot tell what to cast
            elif reason is None and name_of(node) in exclude:
                reason = "excluded"
            elif reason is None and any(name_of(v) in too_big for v in [*floats_in, *floats_out]):
                reason = "overflow"
            elif reason is None and node.op_type in _REDUCTIONS and floats_in:
                shape = shapes.get(name_of(floats_in[0]))
                if (
                    shape is None
                    and floats_in[0].shape is not None
                    and floats_in[0].shape.is_static()
                ):
                    shape = tuple(d for d in floats_in[0].shape if isinstance(d, int))
                if shape is None or _reduced_elements(node, shape) > options.reduction_limit:
                    reason = "large-reductions"
            if reason is None:
                modes[id(node)] = "half" if floats_out else "neutral"
            else:
                modes[id(node)] = "float"
                if floats_out or floats_in:
                    skipped[f"skipped-{reason}"] += 1
                logger.debug("%s '%s' stays float32: %s", node.op_type, name_of(node), reason)
        return modes, skipped

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Decide per node, retype values, convert constants, insert and fold Casts."""
        options = self.options
        cache = self._cache
        work = model.clone()
        annotate_types(work)
        graph = work.graph
        if cache.absmax is None:
            data = calibration_data(work, context, options.samples)
            cache.absmax, cache.shapes = _sweep(work, data, context)
            # Back-off order: nodes with the largest float outputs first (range, then precision).
            peak = {
                name_of(n): max((cache.absmax.get(name_of(o), 0.0) for o in n.outputs), default=0.0)
                for n in graph
            }
            cache.ranking = sorted((n for n in peak if peak[n] > 0), key=lambda n: -peak[n])
        modes, skipped = self._decide(graph, cache.absmax, cache.shapes)
        skipped["skipped-functions"] = len(work.functions)
        names = NameScope.for_graph(graph)
        stats: collections.Counter[str] = collections.Counter()
        created: list[ir.Node] = []
        # 1. Retype what float16 nodes produce; convert their float tensor attributes.
        for node in graph:
            if modes.get(id(node)) != "half":
                continue
            if node.op_type == "Cast":
                node.attributes["to"] = ir.AttrInt64("to", _F16.value)
            attr = node.attributes.get("value")
            if attr is not None and attr.type == ir.AttributeType.TENSOR:
                tensor = attr.as_tensor()
                if tensor.dtype == _F32:
                    array = np.clip(tensor.numpy(), -FP16_MAX, FP16_MAX).astype(np.float16)
                    node.attributes["value"] = ir.AttrTensor(
                        "value", ir.tensor(array, name=tensor.name)
                    )
            for out in node.outputs:
                if out.dtype == _F32:
                    out.type = ir.TensorType(_F16)
            stats["nodes-fp16"] += 1
        if not stats["nodes-fp16"]:
            result = PassResult({"nodes-fp16": 0, **skipped})
            return result
        # 2. Model inputs: float16 when the I/O may change, else read through Casts.
        if not options.keep_io:
            for value in graph.inputs:
                if value.dtype == _F32 and not value.is_initializer():
                    value.type = ir.TensorType(_F16)
                    stats["io-converted"] += 1
        # 3. Inputs: float16 copies of constants, Casts at precision boundaries.
        halves: dict[str, ir.Value] = {}
        casts: dict[tuple[int, ir.DataType], ir.Value] = {}
        first = next(iter(graph), None)

        def cast(value: ir.Value, to: ir.DataType) -> ir.Value:
            key = (id(value), to)
            if key in casts:
                return casts[key]
            tag = "fp16" if to == _F16 else "fp32"
            out = ir.Value(
                name=names(f"{name_of(value)}_{tag}"), type=ir.TensorType(to), shape=value.shape
            )
            node = ir.node(
                "Cast",
                [value],
                attributes={"to": to.value},
                outputs=[out],
                name=names(f"{name_of(value)}_Cast_{tag}"),
            )
            producer = value.producer()
            if producer is not None and producer.graph is graph:
                graph.insert_after(producer, node)
            elif first is not None:
                graph.insert_before(first, node)
            else:
                graph.append(node)
            casts[key] = out
            created.append(node)
            return out

        for node in list(graph):
            mode = modes.get(id(node), "boundary")
            if mode == "boundary":
                continue
            if mode == "neutral":
                mode = (
                    "half"
                    if any(v is not None and v.dtype == _F16 for v in node.inputs)
                    else "float"
                )
            for i, maybe in enumerate(list(node.inputs)):
                if maybe is None:
                    continue
                value = maybe
                if (
                    mode == "half"
                    and value.dtype == _F32
                    and (node.op_type, i) not in _FLOAT32_SLOTS
                ):
                    array = const_array(value)
                    if array is None:
                        node.replace_input_with(i, cast(value, _F16))
                        continue
                    key = name_of(value) or str(id(value))
                    if key not in halves:
                        clipped = np.clip(array, -FP16_MAX, FP16_MAX).astype(np.float16)
                        halves[key] = add_initializer(graph, names, f"{key}_fp16", clipped)
                        stats["initializers-converted"] += 1
                    node.replace_input_with(i, halves[key])
                elif mode == "float" and value.dtype == _F16:
                    node.replace_input_with(i, cast(value, _F32))
        # Values read inside subgraphs (outer scope) keep the float32 the subgraph expects.
        for node in list(graph):
            if modes.get(id(node)) != "half":
                continue
            for out in node.outputs:
                for use in list(out.uses()):
                    if use.node.graph is not graph and out.dtype == _F16:
                        use.node.replace_input_with(use.idx, cast(out, _F32))
        # 4. Model outputs: back to float32 under their own names.
        if options.keep_io:
            for index, value in enumerate(list(graph.outputs)):
                if value.dtype != _F16 or value.producer() is None:
                    continue
                name = name_of(value)
                value.name = names(f"{name}_fp16")
                restored = cast(value, _F32)
                graph.outputs[index] = restored
                restored.name = name
        # 5. Fold Cast pairs: Cast(fp16 -> fp32) then Cast(-> fp16) is the fp16 value.
        for node in list(graph):
            if node.op_type != "Cast" or node.domain not in STANDARD_DOMAINS or node.graph is None:
                continue
            source = node.inputs[0]
            producer = source.producer() if source is not None else None
            if (
                source is not None
                and producer is not None
                and producer.op_type == "Cast"
                and producer.inputs[0] is not None
                and producer.inputs[0].dtype == _F16
                and source.dtype == _F32
                and node.attributes["to"].as_int() == _F16.value
                and not node.outputs[0].is_graph_output()
            ):
                node.outputs[0].replace_all_uses_with(producer.inputs[0])
                graph.remove(node, safe=True)
                stats["casts-removed"] += 1
                if not source.uses() and not source.is_graph_output():
                    graph.remove(producer, safe=True)
                    stats["casts-removed"] += 1
        freed = 0
        for value in list(graph.initializers.values()):
            if value.dtype == _F32:
                freed += drop_if_unused(graph, value)
        added = sum(v.const_value.nbytes for v in halves.values() if v.const_value is not None)
        stats["bytes-saved"] = max(freed - added, 0)
        stats["casts-inserted"] = sum(1 for n in created if n.graph is graph)
        result = PassResult(dict(stats) | dict(skipped))
        result.decisions.append(
            {
                "fp16": "float16 storage and compute except the block list, reductions over > "
                f"{options.reduction_limit} elements, values above "
                f"{FP16_MAX * options.overflow_margin:g} on calibration data, subgraph and "
                "custom-domain nodes"
                + ("; model inputs/outputs stay float32" if options.keep_io else ""),
                "back-off": "keeps the nodes with the largest outputs in float32 first",
            }
        )
        commit(model, work)
        logger.info("quantize-fp16: %d nodes in float16", stats["nodes-fp16"])
        return result

"""Helpers shared by the quantization passes: constants, names, data, opsets, commit."""

from __future__ import annotations

__all__ = [
    "RankedBackOffPass",
    "ranked_back_off",
    "annotate_types",
    "add_initializer",
    "calibration_data",
    "commit",
    "drop_if_unused",
    "ensure_opset",
    "name_of",
    "node_order",
    "split_names",
    "subgraph_nodes",
]

import dataclasses
import logging
from collections.abc import Iterable
from typing import Any, ClassVar

import onnx
import onnx_ir as ir
import onnx_ir.passes.common as ir_passes

from nnopt_graph.analysis.walk import STANDARD_DOMAINS, all_graphs
from nnopt_graph.core.constants import add_initializer, drop_if_unused
from nnopt_graph.pipeline.base import Pass, PassContext
from nnopt_graph.runtime.data import Dataset, input_specs, random_dataset, resolve_shapes

logger = logging.getLogger(__name__)


def name_of(item: ir.Value | ir.Node | None) -> str:
    """The name of a value or node ("" when it has none: graphs name all they hold)."""
    return (item.name if item is not None else None) or ""


def split_names(text: str) -> list[str]:
    """A comma-separated option value as a list (empty items dropped)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def node_order(graph: ir.Graph) -> dict[int, int]:
    """Position of each node (by id) in the graph's current order."""
    return {id(node): i for i, node in enumerate(graph)}


def subgraph_nodes(model: ir.Model, op_types: Iterable[str]) -> int:
    """Nodes of the given types in subgraphs and functions (what main-graph passes skip)."""
    wanted = set(op_types)
    count = 0
    for graph in all_graphs(model):
        if graph is model.graph:
            continue
        count += sum(1 for n in graph if n.op_type in wanted and n.domain in STANDARD_DOMAINS)
    return count


def calibration_data(model: ir.Model, context: PassContext, samples: int) -> Dataset:
    """The job's calibration data (at most ``samples`` of it; 0 = all), or random inputs."""
    data = context.calibration
    if data is None:
        logger.warning("no calibration data: calibrating on random inputs")
        specs = input_specs(model)
        shapes = resolve_shapes(specs, context.input_shapes, warn=False)
        data = random_dataset(
            specs, shapes, num_samples=max(1, min(samples or 8, 8)), seed=context.seed
        )
    if samples and data.num_samples > samples:
        data = data.take(samples)
    return data.fit(input_specs(model))


def ensure_opset(model: ir.Model, minimum: int) -> tuple[ir.Model, bool]:
    """The model at default-domain opset >= ``minimum`` (ONNX's version converter).

    Returns the (possibly new) model and whether it was converted.
    """
    version = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
    if version >= minimum:
        return model, False
    proto = ir.serde.serialize_model(model)
    converted = onnx.version_converter.convert_version(proto, minimum)
    logger.info("default opset %d converted to %d", version, minimum)
    return ir.serde.deserialize_model(converted), True


def annotate_types(model: ir.Model) -> None:
    """Fill in value types where the model lacks them (ONNX shape inference, non-strict)."""
    if any(o.dtype is None for node in model.graph for o in node.outputs):
        try:
            ir_passes.ShapeInferencePass(strict_mode=False)(model)
        except Exception as exc:  # custom ops without schemas: keep what is known
            logger.debug("shape inference failed: %s", exc)


def commit(model: ir.Model, work: ir.Model) -> None:
    """Make ``model`` hold ``work``'s graph (passes change the model object in place)."""
    model.graph = work.graph
    model.ir_version = max(model.ir_version, work.ir_version)


def ranked_back_off(pass_: Any, ranking: list[str] | None) -> Any:
    """The same pass with the next nodes of ``ranking`` (worst first) excluded, or None.

    Shared by the quantize passes: each attempt leaves about 1.5x as many nodes in float
    as the one before (1, 1, 1, 1, 2, 3, 4, 6, 9, ...), so the guard converges in a
    logarithmic number of measurements. The new pass shares the old one's ``_cache``
    (calibration sweeps and the ranking are not recomputed).
    """
    if not pass_.options.fallback or not ranking:
        return None
    excluded = split_names(pass_.options.exclude)
    remaining = [n for n in ranking if n not in excluded]
    if not remaining:
        return None
    step = max(1, (len(ranking) - len(remaining)) // 2)
    weaker = type(pass_)(
        dataclasses.replace(pass_.options, exclude=",".join(excluded + remaining[:step]))
    )
    weaker._cache = pass_._cache
    return weaker


class RankedBackOffPass(Pass):
    """A quantize pass that keeps a per-model cache and backs off along a sensitivity ranking.

    Subclasses set ``Cache`` (a dataclass with a ``ranking`` field, filled by their run);
    weaker versions share the cache (see ``ranked_back_off``).
    """

    Cache: ClassVar[type]

    def __init__(self, options: Any = None, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        self._cache = self.Cache()

    def back_off(self) -> Pass | None:
        """The same pass with the next most sensitive nodes (by the ranking) left in float."""
        result: Pass | None = ranked_back_off(self, self._cache.ranking)
        return result

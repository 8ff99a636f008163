"""The end-to-end job: load, run the pipeline, write, verify, report."""

from __future__ import annotations

__all__ = ["OptimizeResult", "optimize", "resolve_pipeline"]

import contextlib
import dataclasses
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir

from nnopt_graph import io
from nnopt_graph.analysis.stats import ModelSummary, summarize
from nnopt_graph.errors import BadInputError
from nnopt_graph.pipeline.base import PassContext
from nnopt_graph.pipeline.grammar import Pipeline
from nnopt_graph.pipeline.manager import Instrument, PassManager, PassRecord
from nnopt_graph.pipeline.registry import PRESETS
from nnopt_graph.report import build_report, write_report
from nnopt_graph.runtime.data import Dataset, input_specs, load_dataset, random_dataset, resolve_shapes
from nnopt_graph.verify import LOSSLESS_MIN_COSINE, VerifyResult, verify_written

logger = logging.getLogger(__name__)

TARGETS = ("cpu", "cuda", "tensorrt")


@dataclasses.dataclass
class OptimizeResult:
    """What ``optimize`` did: the model, per-pass records, verification and the report."""

    model: ir.Model
    pipeline: Pipeline
    records: list[PassRecord]
    fidelity: VerifyResult | None
    report: dict[str, Any]
    output: Path | None


def resolve_pipeline(pipeline: str | Pipeline | None, target: str | None) -> Pipeline:
    """The pipeline to run, following the CLI contract's rules for -p and --target.

    Raises:
        BadInputError: unknown target, or no preset for it yet.
    """
    if target is not None and target not in TARGETS:
        raise BadInputError(f"unknown target '{target}' (choose from {', '.join(TARGETS)})")
    if isinstance(pipeline, Pipeline):
        return pipeline
    if pipeline is not None:
        return Pipeline.parse(pipeline)
    if target is None:
        return Pipeline.parse("default")
    Pipeline.parse("default")  # loads the registry, which fills PRESETS
    preset = f"target-{target}"
    if preset not in PRESETS:
        raise BadInputError(
            f"no compression preset for target '{target}' yet; give a pipeline with -p"
        )
    return Pipeline.parse(PRESETS[preset])


@contextlib.contextmanager
def _model_on_disk(model: str | os.PathLike[str] | ir.Model | onnx.ModelProto) -> Iterator[Path]:
    """A path to the original model, writing a temporary copy for in-memory models."""
    if isinstance(model, (str, os.PathLike)):
        yield Path(model)
        return
    with tempfile.TemporaryDirectory(prefix="nnopt-graph-") as tmp:
        path = Path(tmp, "input.onnx")
        if isinstance(model, onnx.ModelProto):
            onnx.save(model, path)
        else:
            io.save(model, path)
        yield path


def _dataset(
    model: ir.Model,
    data: str | os.PathLike[str] | Dataset | None,
    input_shapes: Mapping[str, Sequence[int]] | None,
    samples: int,
) -> Dataset:
    specs = input_specs(model)
    if isinstance(data, Dataset):
        return data
    if data is not None:
        return load_dataset(data, specs)
    shapes = resolve_shapes(specs, input_shapes)
    return random_dataset(specs, shapes, num_samples=samples)


def optimize(
    model: str | os.PathLike[str] | ir.Model | onnx.ModelProto,
    output: str | os.PathLike[str] | None = None,
    pipeline: str | Pipeline | None = None,
    *,
    target: str | None = None,
    calib: str | os.PathLike[str] | Dataset | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    check: bool = True,
    verify_each: bool = False,
    instruments: Sequence[Instrument] = (),
    report: str | os.PathLike[str] | None = None,
    verify_samples: int = 4,
) -> OptimizeResult:
    """Optimize a model and, given ``output``, write it atomically and verify it.

    Args:
        model: a path, an onnx-ir model (modified in place) or a ModelProto.
        output: where to write the result; None keeps it in memory only.
        pipeline: pipeline text or object; None means the lossless default (or the
            target's preset when ``target`` is given).
        target: the execution provider the result is for: cpu, cuda or tensorrt.
        calib: calibration/verification data (.npz or test_data_set folder).
        input_shapes: concrete shapes for dynamic inputs, by input name.
        check: verify the written file (checker, ORT, outputs); a failure writes nothing.
        verify_each: run structural checks and the ONNX checker after every pass.
        instruments: extra instruments (timing, stats, IR printing, dumps).
        report: write a JSON (or .html) report here.
        verify_samples: generated feeds to compare when no data is given.

    Raises:
        BadInputError: unusable input, pipeline, shapes or data (exit code 2).
        CheckFailedError: the result failed verification; nothing was written (exit 1).
        PassFailedError: a pass failed; nothing was written (exit 1).
    """
    from nnopt_graph.pipeline.instruments import VerifyEachInstrument

    start = time.perf_counter()
    resolved = resolve_pipeline(pipeline, target)
    if output is not None:
        io.check_output_path(output)
    input_path = Path(model) if isinstance(model, (str, os.PathLike)) else None
    if isinstance(model, (str, os.PathLike)):
        ir_model = io.load(model)
    elif isinstance(model, onnx.ModelProto):
        ir_model = ir.serde.deserialize_model(model)
    else:
        ir_model = model
    with contextlib.ExitStack() as stack:
        original = None
        if output is not None:
            original = stack.enter_context(_model_on_disk(input_path or model))
        dataset = (
            _dataset(ir_model, calib, input_shapes, verify_samples)
            if output is not None and check
            else None
        )
        input_summary = summarize(original, input_shapes) if original is not None else None
        all_instruments = [VerifyEachInstrument()] if verify_each else []
        all_instruments.extend(instruments)
        context = PassContext(target=target, input_shapes=dict(input_shapes or {}), calibration=calib)
        records = PassManager(resolved, context=context, instruments=all_instruments).run(ir_model)
        fidelity = None
        output_summary: ModelSummary | None = None
        written = None
        if output is not None:
            with io.staged_save(ir_model, output) as staged:
                if check and dataset is not None and original is not None:
                    fidelity = verify_written(original, staged, dataset, min_cosine=LOSSLESS_MIN_COSINE)
                output_summary = summarize(staged, input_shapes)
                output_summary.path = str(output)
            written = Path(output)
    result_report = build_report(
        input_summary=input_summary,
        output_summary=output_summary,
        pipeline=str(resolved),
        records=records,
        fidelity=fidelity,
        guard_expr=None,
        guard_passed=None,
        seconds=time.perf_counter() - start,
    )
    if report is not None:
        write_report(result_report, report)
    return OptimizeResult(ir_model, resolved, records, fidelity, result_report, written)

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

from nnopt_graph._version import __version__
from nnopt_graph.analysis.stats import ModelSummary, summarize
from nnopt_graph.check.compare import Comparison
from nnopt_graph.check.equality import LOSSLESS
from nnopt_graph.check.guard import DEFAULT_GUARD, Guard, MetricFn
from nnopt_graph.check.structure import structural_problems
from nnopt_graph.check.verify import check_written, compare_written, verify_written
from nnopt_graph.core import io
from nnopt_graph.core.collector import frozen_heap, paused_collector
from nnopt_graph.errors import BadInputError, CheckFailedError
from nnopt_graph.pipeline.base import PassContext
from nnopt_graph.pipeline.grammar import Pipeline
from nnopt_graph.pipeline.manager import Instrument, PassManager, PassRecord
from nnopt_graph.pipeline.presets import PRESETS
from nnopt_graph.report import build_report, write_report
from nnopt_graph.runtime.data import (
    Dataset,
    input_specs,
    load_dataset,
    random_dataset,
    resolve_shapes,
)
from nnopt_graph.runtime.execute import (
    ONE_SESSION_AT_A_TIME_BYTES,
    ReferenceOutputs,
    reference_outputs,
    weights_size,
)
from nnopt_graph.runtime.isolate import Pending, run_isolated, start_isolated
from nnopt_graph.runtime.session import load_problem

logger = logging.getLogger(__name__)

TARGETS = ("cpu", "cuda", "tensorrt")
SPEED_CHECKS = ("model", "measure")

# metadata_props keys of the output: which nnopt-graph and which pipeline made it.
META_VERSION = "nnopt_graph.version"
META_PIPELINE = "nnopt_graph.pipeline"


@dataclasses.dataclass
class OptimizeResult:
    """What ``optimize`` did: the model, per-pass records, verification and the report."""

    model: ir.Model
    pipeline: Pipeline
    records: list[PassRecord]
    fidelity: Comparison | None
    report: dict[str, Any]
    output: Path | None

    @property
    def rolled_back(self) -> list[PassRecord]:
        """The lossy passes the guard rolled back."""
        return [r for r in self.records if r.outcome == "rolled back"]

    def _repr_html_(self) -> str:
        """Jupyter's view: the HTML report's first screen."""
        from nnopt_graph.report_html import first_screen

        return first_screen(self.report)


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


def _datasets(
    model: ir.Model,
    calib: str | os.PathLike[str] | Dataset | None,
    eval_data: str | os.PathLike[str] | Dataset | None,
    input_shapes: Mapping[str, Sequence[int]] | None,
    samples: int,
    lossy: bool,
    seed: int = 0,
) -> tuple[Dataset | None, Dataset]:
    """(calibration data for passes, held-out data for the guard and verification).

    Without --eval, the last 20% of --calib is held out and never calibrated on.
    Without any data, generated inputs serve verification only.
    """
    specs = input_specs(model)

    def read(data: str | os.PathLike[str] | Dataset) -> Dataset:
        return data.fit(specs) if isinstance(data, Dataset) else load_dataset(Path(data), specs)

    if calib is None:
        if lossy:
            logger.warning(
                "no --calib data: lossy passes calibrate on random inputs and the guard "
                "measures on random inputs; results on real data may be worse"
            )
        generated = random_dataset(
            specs, resolve_shapes(specs, input_shapes), num_samples=samples, seed=seed
        )
        return (generated if lossy else None), (read(eval_data) if eval_data else generated)
    calibration = read(calib)
    if eval_data is not None:
        return calibration, read(eval_data)
    if not lossy:
        return None, calibration  # nothing calibrates: verify on every sample
    if calibration.num_samples < 2:
        return calibration, calibration
    return calibration.split(0.2)


def _staged_bytes(staged: Path) -> int:
    """Bytes of a staged output: the graph and the side file beside it in its stage folder.

    ``io.staged_save`` writes into a folder of its own: the graph and, with external
    data, one side file its tensors refer to, nothing else.
    """
    return sum(p.stat().st_size for p in staged.parent.iterdir() if p.is_file())


def _check_input(model: ir.Model, path: Path) -> None:
    """Refuse an input the ONNX checker rejects: optimizing it would blame the output.

    ONNX Runtime's turn comes once the data is known (``_check_input_runs``).

    Raises:
        BadInputError: the input model is structurally broken or invalid ONNX.
    """
    problems = structural_problems(model)
    if problems:
        raise BadInputError(f"{path}: invalid model: {problems[0]}")
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise BadInputError(f"{path}: invalid model: {text[:300]}") from exc


def _input_reference(path: Path, dataset: Dataset) -> ReferenceOutputs | None:
    """The input's outputs on the verification data, or None when ONNX Runtime fails."""
    try:
        return reference_outputs(path, dataset)
    except Exception:  # noqa: BLE001  (load_problem then says whether loading is the problem)
        return None


class _InputRuns:
    """ONNX Runtime's check of the input (``_check_input_runs``), running beside the job.

    The check runs in a child process while the job goes on, so on two cores creating
    the input's session overlaps the passes; ``result()`` waits for it. A model above
    ``ONE_SESSION_AT_A_TIME_BYTES`` is checked before the constructor returns instead:
    its session holds every weight, and it is gone before the job reads them.
    """

    def __init__(self, path: Path, held_out: Dataset | None) -> None:
        self.path, self.held_out = path, held_out
        self._first: Pending[Any] | None = None
        self._outcome: tuple[ReferenceOutputs | None, BaseException | None] | None = None
        large = weights_size(path) > ONE_SESSION_AT_A_TIME_BYTES
        if held_out is None and large:
            # Without verification a large model is not given to ONNX Runtime at all: its
            # session would hold every weight in memory (2.9 GB for a 2.7 GB model), while
            # the job itself streams them. The ONNX checker has already accepted it.
            logger.info("%s: large and not verified: ONNX Runtime's load check skipped", path)
            self._outcome = (None, None)
            return
        if held_out is not None:
            self._first = start_isolated(_input_reference, path, held_out, what="loading the input")
        else:
            self._first = start_isolated(load_problem, path, what="loading the input")
        if large:
            with contextlib.suppress(Exception):
                self.result()  # its error is raised again by the caller's result()

    def result(self) -> ReferenceOutputs | None:
        """The input's outputs on ``held_out`` (or None: see ``_check_input_runs``).

        Raises:
            BadInputError: ONNX Runtime cannot load the input model.
        """
        if self._outcome is None:
            try:
                self._outcome = (self._check(), None)
            except Exception as exc:
                self._outcome = (None, exc)
        value, error = self._outcome
        if error is not None:
            raise error
        return value

    def failed(self, exc: BaseException) -> bool:
        """Whether ``exc`` is this check's own error."""
        return self._outcome is not None and self._outcome[1] is exc

    def cancel(self) -> None:
        """Stop the check if it still runs (its child is killed)."""
        if self._first is not None:
            self._first.cancel()

    def _check(self) -> ReferenceOutputs | None:
        assert self._first is not None
        if self.held_out is not None:
            try:
                reference = self._first.result()
            except CheckFailedError:  # a crash: load_problem says whether loading crashes
                reference = None
            if reference is not None:
                return reference  # type: ignore[no-any-return]
            problem = run_isolated(load_problem, self.path, what="loading the input")
        else:
            problem = self._first.result()
        if problem is not None:  # opset 99, an op of an unknown domain: not ours to optimize
            raise BadInputError(f"{self.path}: ONNX Runtime cannot load the input model: {problem}")
        return None


def _check_input_runs(path: Path, held_out: Dataset | None) -> ReferenceOutputs | None:
    """Refuse an input ONNX Runtime cannot load; given ``held_out``, run it on that data.

    The session that shows the input loads also computes the outputs verification will
    compare the written model against, so verification opens one session, not two.
    Returns those outputs, or None (no data given, too large, or ONNX Runtime failed:
    verification then runs the input itself and reports what fails). Without
    ``held_out`` (no verification) a model above ``ONE_SESSION_AT_A_TIME_BYTES`` is not
    loaded at all: the session would hold all its weights.

    Raises:
        BadInputError: ONNX Runtime cannot load the input model.
    """
    return _InputRuns(path, held_out).result()


def _verify(
    reference: Path | ReferenceOutputs, staged: Path, held_out: Dataset, tolerance: Any
) -> Comparison:
    """``verify_written``, with the ONNX checker and the comparison in two processes at once.

    Each runs isolated (a crash is exit 1, nothing written); the checker's verdict comes
    first, as in ``verify_written``. A model above ``ONE_SESSION_AT_A_TIME_BYTES`` is
    verified in one process, as before: its peak memory stays one session's.

    Raises:
        CheckFailedError: the checker rejects the file or the outputs are not equal.
    """
    if weights_size(staged) > ONE_SESSION_AT_A_TIME_BYTES:  # one process at a time
        return run_isolated(verify_written, reference, staged, held_out, tolerance=tolerance)
    if held_out.num_samples == 0:
        raise CheckFailedError("nothing to verify on: the data has no samples")
    checked = start_isolated(check_written, staged, what="checking the output")
    try:
        fidelity = run_isolated(  # an ORT segfault: exit 1, nothing written
            compare_written, reference, staged, held_out, tolerance=tolerance
        )
    except Exception:
        checked.result()  # the checker's rejection is the one to report
        raise
    except BaseException:
        checked.cancel()  # interrupted: stop the checker
        raise
    checked.result()
    return fidelity


@contextlib.contextmanager
def _input_error_wins(runs: _InputRuns) -> Iterator[None]:
    """When the block fails while the input's check runs, report a bad input over it.

    An input ONNX Runtime cannot load is a usage error (exit 2) whatever a pass then did
    with it. An interrupt does not wait: the check is stopped.
    """
    try:
        yield
    except Exception as exc:
        if runs.failed(exc):
            raise
        try:
            runs.result()
        except BadInputError as bad:
            raise bad from exc
        except Exception:  # noqa: BLE001  (the block's own failure is the one to report)
            pass
        raise
    except BaseException:
        runs.cancel()
        raise


def optimize(
    model: str | os.PathLike[str] | ir.Model | onnx.ModelProto,
    output: str | os.PathLike[str] | None = None,
    pipeline: str | Pipeline | None = None,
    *,
    target: str | None = None,
    calib: str | os.PathLike[str] | Dataset | None = None,
    eval_data: str | os.PathLike[str] | Dataset | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    guard: str | None = None,
    metric: MetricFn | None = None,
    check: bool = True,
    verify_each: bool = False,
    instruments: Sequence[Instrument] = (),
    report: str | os.PathLike[str] | None = None,
    verify_samples: int = 4,
    fail_on_rollback: bool = False,
    speed_check: str = "model",
    seed: int = 0,
    in_place: bool = False,
) -> OptimizeResult:
    """Optimize a model and, given ``output``, write it atomically and verify it.

    Args:
        model: a path, an onnx-ir model (modified in place) or a ModelProto.
        output: where to write the result; None keeps it in memory only.
        pipeline: pipeline text or object; None means the lossless default (or the
            target's preset when ``target`` is given).
        target: the execution provider the result is for: cpu, cuda or tensorrt.
        calib: calibration data (.npz or test_data_set folder); its last 20% is held
            out for the guard and verification unless ``eval_data`` is given.
        eval_data: held-out data for the guard and verification.
        input_shapes: concrete shapes for dynamic inputs, by input name.
        guard: budget for lossy passes over per-sample metrics, e.g.
            ``cosine.min>=0.99,top1>=0.98``; pipelines with lossy passes default to
            ``cosine.min>=0.99`` (the worst held-out sample).
        metric: the user's own metric, called with a candidate model's path, for
            ``metric`` terms in the guard (e.g. accuracy on a labelled set).
        check: verify the written file (checker, ORT, outputs); a failure writes nothing.
        verify_each: run structural checks and the ONNX checker after every pass.
        instruments: extra instruments (timing, stats, IR printing, dumps).
        report: write a JSON (or .html) report here.
        verify_samples: generated feeds to compare when no data is given.
        fail_on_rollback: a lossy pass the guard rolls back fails the job (nothing
            written) instead of writing the best model that meets the guard.
        speed_check: how speed decisions are made: ``model`` (a deterministic cost
            model, the default) or ``measure`` (timed, interleaved, with a margin).
        seed: seed of generated inputs and of every randomized choice in the passes.
        in_place: allow ``output`` to be the input model itself.

    Raises:
        BadInputError: unusable input, pipeline, shapes or data (exit code 2).
        CheckFailedError: the result failed verification, or a pass was rolled back under
            ``fail_on_rollback``; nothing was written (exit 1).
        PassFailedError: a pass failed; nothing was written (exit 1).
    """
    from nnopt_graph.pipeline.instruments import VerifyEachInstrument

    start = time.perf_counter()
    if speed_check not in SPEED_CHECKS:
        raise BadInputError(
            f"unknown --speed-check '{speed_check}' (choose from {', '.join(SPEED_CHECKS)})"
        )
    input_path = Path(model) if isinstance(model, (str, os.PathLike)) else None
    data_paths = [d for d in (calib, eval_data) if isinstance(d, (str, os.PathLike))]
    io.check_job_paths(
        input_path, output, report=report, in_place=in_place, extra_inputs=data_paths
    )
    with paused_collector():  # importing passes and building the IR make no garbage
        resolved = resolve_pipeline(pipeline, target)
        if isinstance(model, (str, os.PathLike)):
            ir_model = io.load(model)
        elif isinstance(model, onnx.ModelProto):
            ir_model = ir.serde.deserialize_model(model)
        else:
            ir_model = model
    if input_path is not None:
        _check_input(ir_model, input_path)
    lossy = any(spec.instantiate().lossy for spec in resolved.passes)
    guard_expr = guard if guard is not None else (DEFAULT_GUARD if lossy else None)
    if guard is not None and not lossy:
        logger.warning("--guard has no effect: the pipeline has no lossy pass")
    with contextlib.ExitStack() as stack:
        # The loaded model lives all job long: collections need not scan it each time.
        stack.enter_context(frozen_heap())
        original = stack.enter_context(_model_on_disk(input_path or model))
        calibration, held_out = _datasets(
            ir_model, calib, eval_data, input_shapes, verify_samples, lossy, seed
        )
        input_runs: _InputRuns | None = None
        if input_path is not None:
            verifies = output is not None and check
            input_runs = _InputRuns(input_path, held_out if verifies else None)
            stack.callback(input_runs.cancel)
            # A failure while it runs still reports an input ONNX Runtime cannot load.
            stack.enter_context(_input_error_wins(input_runs))
        the_guard = Guard(guard_expr, original, held_out, metric) if guard_expr else None
        warnings: list[str] = list(the_guard.warnings) if the_guard and lossy else []
        for text in warnings:
            logger.warning("%s", text)
        input_summary = None
        if output is not None:
            # A path input is summarized from the IR just loaded from it (not loaded again).
            input_summary = (
                summarize(ir_model, input_shapes, path=original)
                if input_path is not None
                else summarize(original, input_shapes)
            )
        all_instruments: list[Instrument] = [VerifyEachInstrument()] if verify_each else []
        all_instruments.extend(instruments)
        context = PassContext(
            target=target,
            input_shapes={k: list(v) for k, v in (input_shapes or {}).items()},
            calibration=calibration,
            speed_check=speed_check,
            seed=seed,
        )
        manager = PassManager(
            resolved,
            context=context,
            instruments=all_instruments,
            guard=the_guard if lossy else None,
        )
        records = manager.run(ir_model)
        assert manager.model is not None
        ir_model = manager.model
        rolled_back = [r for r in records if r.outcome == "rolled back"]
        for r in rolled_back:
            logger.warning("%s rolled back by the guard: %s", r.name, r.outcome_detail)
        if rolled_back and fail_on_rollback:
            names = ", ".join(r.name for r in rolled_back)
            raise CheckFailedError(
                f"--fail-on-rollback: the guard '{guard_expr}' rolled back {names} "
                f"({rolled_back[0].outcome_detail}); nothing written"
            )
        ir_model.metadata_props[META_VERSION] = __version__
        ir_model.metadata_props[META_PIPELINE] = str(resolved)
        fidelity = None
        guard_passed = None
        output_summary: ModelSummary | None = None
        written = None
        if output is None and input_runs is not None:
            input_runs.result()  # an input ONNX Runtime cannot load is refused all the same
        if output is not None:
            with io.staged_save(ir_model, output) as staged:
                # Written meanwhile; published only once ONNX Runtime has loaded the input
                # (and run it on the held-out data).
                reference = input_runs.result() if input_runs is not None else None
                if check:
                    fidelity = _verify(
                        reference or original, staged, held_out, None if lossy else LOSSLESS
                    )
                    if the_guard is not None and lossy:
                        outcome = the_guard.measure_path(staged)
                        guard_passed = outcome.passed
                        if not outcome.passed:
                            raise CheckFailedError(
                                f"the output breaks the guard '{guard_expr}': "
                                f"{'; '.join(outcome.failed)}; nothing written"
                            )
                # The final IR is what was written: summarize it, not a reload of the file.
                output_summary = summarize(ir_model, input_shapes, size_bytes=_staged_bytes(staged))
                output_summary.path = str(output)
            written = Path(output)
    result_report = build_report(
        input_summary=input_summary,
        output_summary=output_summary,
        pipeline=str(resolved),
        records=records,
        fidelity=fidelity,
        guard_expr=guard_expr,
        guard_passed=guard_passed,
        guard_samples=the_guard.samples if the_guard is not None and lossy else None,
        warnings=warnings,
        seconds=time.perf_counter() - start,
    )
    if report is not None:
        write_report(result_report, report)
    return OptimizeResult(ir_model, resolved, records, fidelity, result_report, written)

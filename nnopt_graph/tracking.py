"""Experiment tracking: record a run's report in TensorBoard or Weights & Biases."""

from __future__ import annotations

__all__ = ["TrackingSpec", "log_run", "parse_log_spec"]

import dataclasses
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from nnopt_graph.errors import BadInputError

logger = logging.getLogger(__name__)

SINKS = ("tensorboard", "wandb")


@dataclasses.dataclass(frozen=True)
class TrackingSpec:
    """Where to log: ``tensorboard`` with a folder, or ``wandb`` with a project name."""

    sink: str
    target: str


def parse_log_spec(text: str) -> TrackingSpec:
    """Parse ``tensorboard:DIR`` or ``wandb[:PROJECT]``.

    Raises:
        BadInputError: an unknown sink, or tensorboard without a folder.
    """
    sink, _, target = text.partition(":")
    if sink not in SINKS:
        raise BadInputError(f"bad --log '{text}': expected tensorboard:DIR or wandb[:PROJECT]")
    if sink == "tensorboard" and not target:
        raise BadInputError(f"bad --log '{text}': tensorboard needs a folder, tensorboard:DIR")
    return TrackingSpec(sink, target or "nnopt-graph")


def _scalars(report: dict[str, Any]) -> list[tuple[str, int, float]]:
    """(tag, step, value): the model after each pass, and its fidelity where measured."""
    rows: list[tuple[str, int, float]] = []
    for key in ("size_bytes", "params", "flops", "nodes"):
        for label in ("input", "output"):
            value = (report.get(label) or {}).get(key)
            if isinstance(value, (int, float)):
                rows.append((f"model/{label}_{key}", 0, float(value)))
    for step, p in enumerate(report.get("passes", []), start=1):
        rows.append(("pass/seconds", step, float(p.get("seconds") or 0.0)))
        rows.append(("pass/modified", step, 1.0 if p.get("modified") else 0.0))
        for key in ("size_bytes", "params", "flops", "nodes"):
            value = (p.get("after") or {}).get(key, p.get(key))
            if isinstance(value, (int, float)):
                rows.append((f"pass/{key}", step, float(value)))
        values = (p.get("fidelity") or {}).get("values") or {}
        for metric, value in values.items():
            if isinstance(value, (int, float)):
                rows.append((f"pass/fidelity_{metric}", step, float(value)))
    worst = (report.get("fidelity") or {}).get("worst") or {}
    if not worst and report.get("fidelity"):
        worst = {"cosine": report["fidelity"].get("cosine_min")}
    for metric, value in worst.items():
        if isinstance(value, (int, float)):
            rows.append((f"fidelity/{metric}", 0, float(value)))
    return rows


def _decision_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per-layer decisions of every pass as one table (pass column first)."""
    columns: list[str] = ["pass"]
    decisions = [
        (p.get("name", ""), d) for p in report.get("passes", []) for d in p.get("decisions") or []
    ]
    for _, d in decisions:
        columns.extend(k for k in d if k not in columns)
    rows = [[name] + [str(d.get(c, "")) for c in columns[1:]] for name, d in decisions]
    return columns, rows


def _log_tensorboard(report: dict[str, Any], folder: str) -> Path:
    try:
        from tensorboardX import SummaryWriter
    except ImportError as exc:
        raise BadInputError(
            "--log tensorboard needs tensorboardX: pip install 'nnopt-graph[tracking]'"
        ) from exc
    Path(folder).mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(folder)
    try:
        for tag, step, value in _scalars(report):
            writer.add_scalar(tag, value, step)
        columns, rows = _decision_rows(report)
        if rows:
            table = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
            table += "".join("| " + " | ".join(r) + " |\n" for r in rows)
            writer.add_text("decisions", table, 0)
        writer.add_text("report", "```\n" + json.dumps(report, indent=2, default=str) + "\n```", 0)
    finally:
        writer.close()
    logger.info("logged the run to TensorBoard folder %s", folder)
    return Path(folder)


def _log_wandb(report: dict[str, Any], project: str) -> Path:
    try:
        import wandb
    except ImportError as exc:
        raise BadInputError("--log wandb needs wandb: pip install 'nnopt-graph[tracking]'") from exc
    mode: Any = os.environ.get("WANDB_MODE", "offline")
    run = wandb.init(project=project, mode=mode, config={"pipeline": report.get("pipeline")})
    try:
        steps: dict[int, dict[str, float]] = {}
        for tag, step, value in _scalars(report):
            steps.setdefault(step, {})[tag] = value
        for step in sorted(steps):
            run.log(steps[step], step=step)
        columns, rows = _decision_rows(report)
        if rows:
            run.log({"decisions": wandb.Table(columns=list[Any](columns), data=rows)})
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, "report.json")
            path.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
            artifact = wandb.Artifact("nnopt-graph-report", type="report")
            artifact.add_file(str(path))
            run.log_artifact(artifact)
        folder = Path(run.dir).parent
    finally:
        run.finish()
        wandb.teardown()  # the service writes the offline run file completely only on teardown
    logger.info("logged the run to W&B (%s mode) in %s", mode, folder)
    return folder


def log_run(report: dict[str, Any], spec: TrackingSpec | str) -> Path:
    """Record a finished run's report in the sink; returns the folder written.

    Scalars: the model's size/params/FLOPs/nodes, per pass its seconds and fidelity (step =
    the pass's position), the final worst-sample fidelity. The per-layer decisions go in
    as a table, the whole report as text (TensorBoard) or an artifact (W&B, offline unless
    ``WANDB_MODE`` says otherwise).

    Raises:
        BadInputError: a bad spec, or the sink's package is not installed.
    """
    if isinstance(spec, str):
        spec = parse_log_spec(spec)
    if spec.sink == "tensorboard":
        return _log_tensorboard(report, spec.target)
    return _log_wandb(report, spec.target)

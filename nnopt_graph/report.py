"""The run report: JSON or HTML file, and the terminal summary."""

from __future__ import annotations

__all__ = ["build_report", "print_summary", "write_json", "write_report"]

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

from nnopt_graph.analysis.stats import ModelSummary
from nnopt_graph.pipeline.manager import PassRecord
from nnopt_graph.report_html import render_html
from nnopt_graph.verify import VerifyResult


def _model_entry(summary: ModelSummary | None) -> dict[str, Any] | None:
    if summary is None:
        return None
    return {
        "path": summary.path,
        "size_bytes": summary.size_bytes,
        "params": summary.params,
        "nodes": summary.nodes,
        "flops": summary.flops,
        "op_histogram": summary.op_histogram,
    }


def build_report(
    *,
    input_summary: ModelSummary | None,
    output_summary: ModelSummary | None,
    pipeline: str,
    records: list[PassRecord],
    fidelity: VerifyResult | None,
    guard_expr: str | None,
    guard_passed: bool | None,
    seconds: float,
) -> dict[str, Any]:
    """The report as a JSON-ready dict (keys per the CLI contract)."""
    return {
        "input": _model_entry(input_summary),
        "output": _model_entry(output_summary),
        "pipeline": pipeline,
        "passes": [r.to_json() for r in records],
        "fidelity": fidelity.to_json() if fidelity else None,
        "guard": {"expr": guard_expr, "passed": guard_passed},
        "seconds": seconds,
    }


def write_report(report: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write the report atomically as JSON, or HTML when the name ends in .html."""
    path = Path(path)
    if path.suffix.lower() in {".html", ".htm"}:
        _write_text(render_html(report), path)
    else:
        write_json(report, path)


def write_json(data: Any, path: str | os.PathLike[str]) -> None:
    """Write JSON atomically."""
    _write_text(json.dumps(data, indent=2, default=str) + "\n", Path(path))


def _write_text(text: str, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def print_summary(report: dict[str, Any], stream: TextIO | None = None) -> None:
    """A compact before/after table for the terminal."""
    console = Console(file=stream or sys.stdout)
    before, after = report["input"] or {}, report["output"] or {}
    table = Table(title="nnopt-graph", show_edge=False)
    table.add_column("")
    table.add_column("input", justify="right")
    table.add_column("output", justify="right")
    table.add_column("ratio", justify="right")

    def row(label: str, key: str, fmt: Any = str) -> None:
        a, b = before.get(key), after.get(key)
        ratio = (
            f"{b / a:.3f}"
            if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a
            else "-"
        )
        table.add_row(
            label, fmt(a) if a is not None else "-", fmt(b) if b is not None else "-", ratio
        )

    row("size", "size_bytes", _fmt_bytes)
    row("params", "params", lambda v: f"{v:,}")
    row("nodes", "nodes")
    row("FLOPs", "flops", lambda v: f"{v:,}")
    console.print(table)
    changed = [p for p in report["passes"] if p["modified"]]
    console.print(
        f"passes: {len(report['passes'])} run, {len(changed)} changed the model "
        f"({', '.join(p['name'] for p in changed) or 'none'}) in {report['seconds']:.2f} s"
    )
    if report["fidelity"]:
        console.print(
            f"verified: cosine_min {report['fidelity']['cosine_min']:.7f} "
            f"over {report['fidelity']['samples']} feeds"
        )

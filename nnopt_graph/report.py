"""The run report: JSON or HTML file, and the terminal summary."""

from __future__ import annotations

__all__ = [
    "build_report",
    "guard_verdict",
    "print_summary",
    "strict_json",
    "write_json",
    "write_report",
]

import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

from nnopt_graph.analysis.stats import ModelSummary
from nnopt_graph.check.compare import Comparison
from nnopt_graph.pipeline.manager import PassRecord
from nnopt_graph.report_html import render_html


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


def guard_verdict(
    expr: str | None, passed: bool | None, samples: int | None, records: list[PassRecord]
) -> str:
    """The guard's verdict in words."""
    if expr is None:
        return "no guard: the pipeline is lossless, so the output must equal the input"
    lossy = [r for r in records if r.guard_action is not None or r.outcome == "skipped"]
    rolled = [r.name for r in records if r.outcome == "rolled back"]
    on = f" on {samples} held-out samples" if samples is not None else ""
    if passed is None:
        head = f"guard '{expr}' measured{on}, final output not verified (--no-check)"
    elif passed:
        head = f"the output meets the guard '{expr}'{on}"
    else:
        head = f"the output breaks the guard '{expr}'{on}"
    if rolled:
        head += f"; rolled back: {', '.join(rolled)}"
    if not lossy:
        head += "; no lossy pass ran"
    return head


def build_report(
    *,
    input_summary: ModelSummary | None,
    output_summary: ModelSummary | None,
    pipeline: str,
    records: list[PassRecord],
    fidelity: Comparison | None,
    guard_expr: str | None,
    guard_passed: bool | None,
    seconds: float,
    guard_samples: int | None = None,
    warnings: list[str] | None = None,
) -> dict[str, Any]:
    """The report as a JSON-ready dict (keys in docs/report.md)."""
    return {
        "input": _model_entry(input_summary),
        "output": _model_entry(output_summary),
        "pipeline": pipeline,
        "passes": [r.to_json() for r in records],
        "outcomes": [
            {"pass": r.name, "outcome": r.outcome, "detail": r.outcome_detail, "notes": r.notes}
            for r in records
            if r.outcome not in ("unchanged", "changed") or r.notes
        ],
        "fidelity": fidelity.to_json() if fidelity else None,
        "guard": {
            "expr": guard_expr,
            "passed": guard_passed,
            "samples": guard_samples,
            "verdict": guard_verdict(guard_expr, guard_passed, guard_samples, records),
            "warnings": list(warnings or []),
        },
        "seconds": seconds,
    }


def write_report(report: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write the report atomically as JSON, or HTML when the name ends in .html."""
    path = Path(path)
    if path.suffix.lower() in {".html", ".htm"}:
        _write_text(render_html(report), path)
    else:
        write_json(report, path)


def _strict(value: Any) -> Any:
    """The value with non-finite floats as null (strict JSON has no NaN/Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if hasattr(value, "item"):  # numpy scalars
        return _strict(value.item())
    return str(value)


def strict_json(data: Any, indent: int | None = 2) -> str:
    """Strict JSON text: parsers such as jq, JavaScript or Go accept it."""
    return json.dumps(_strict(data), indent=indent, allow_nan=False)


def write_json(data: Any, path: str | os.PathLike[str]) -> None:
    """Write strict JSON atomically."""
    _write_text(strict_json(data) + "\n", Path(path))


def _umask_mode() -> int:
    """0o666 less the user's umask: what an ordinary open() would create."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _write_text(text: str, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, _umask_mode())  # mkstemp creates 0600; reports are ordinary files
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
    console = Console(file=stream or sys.stdout, soft_wrap=True)
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
    for entry in report.get("outcomes", []):
        detail = f": {entry['detail']}" if entry["detail"] else ""
        console.print(f"  {entry['pass']}: {entry['outcome']}{detail}", markup=False)
        for note in entry["notes"]:
            if note not in entry["detail"]:
                console.print(f"    note: {note}", markup=False)
    fidelity = report["fidelity"]
    if fidelity:
        worst = fidelity["worst"]
        if fidelity["equal"]:
            console.print(
                f"verified: equal to the input on {fidelity['samples']} samples "
                f"({_tolerance_text(fidelity['tolerance'])}; worst rel_l2 "
                f"{_num(worst['rel_l2'])}, max_abs {_num(worst['max_abs'])})",
                markup=False,
            )
        else:
            console.print(
                f"verified: valid, runs; worst sample over {fidelity['samples']}: cosine "
                f"{_num(worst['cosine'], '.6f')}, rel_l2 {_num(worst['rel_l2'])}"
                + (f", top1 {_num(worst['top1'], '.4f')}" if worst.get("top1") is not None else ""),
                markup=False,
            )
    guard = report.get("guard") or {}
    if guard.get("expr"):
        console.print(f"guard: {guard['verdict']}", markup=False)


def _num(value: float | None, fmt: str = ".3g") -> str:
    return "n/a" if value is None else format(value, fmt)


def _tolerance_text(tol: dict[str, float] | None) -> str:
    if not tol:
        return "no tolerance"
    return f"rtol {tol['rtol']:g}, atol {tol['atol']:g}, rel_l2 <= {tol['rel_l2']:g}"

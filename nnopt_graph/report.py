"""The run report: JSON or HTML file, and the terminal summary."""

from __future__ import annotations

__all__ = ["build_report", "print_summary", "write_json", "write_report"]

import html
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


def _svg_bars(title: str, items: list[tuple[str, float]], unit: str = "") -> str:
    """A horizontal bar chart as inline SVG (no plotting library needed in the report)."""
    if not items:
        return ""
    top = max((abs(v) for _, v in items), default=0.0) or 1.0
    row, label_w, bar_w = 22, 220, 360
    height = row * len(items) + 30
    parts = [
        "<svg xmlns='http://www.w3.org/2000/svg' "
        f"width='{label_w + bar_w + 120}' height='{height}'>",
        f"<text x='0' y='16' font-weight='bold'>{html.escape(title)}</text>",
    ]
    for i, (label, value) in enumerate(items):
        y = 28 + i * row
        width = max(1.0, bar_w * abs(value) / top)
        parts.append(f"<text x='0' y='{y + 14}'>{html.escape(label)}</text>")
        parts.append(
            f"<rect x='{label_w}' y='{y}' width='{width:.1f}' height='16' fill='#4a7ebb'/>"
        )
        parts.append(f"<text x='{label_w + width + 6:.1f}' y='{y + 14}'>{value:.4g}{unit}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _html(report: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(p['name'])}</td><td>{p['modified']}</td>"
        f"<td>{html.escape(json.dumps(p['stats']))}</td><td>{p['seconds']:.3f}</td>"
        f"<td>{html.escape(str(p.get('guard_action') or ''))}</td></tr>"
        for p in report["passes"]
    )
    before, after = report.get("input") or {}, report.get("output") or {}
    ratios = [
        (key, after[key] / before[key])
        for key in ("size_bytes", "params", "nodes", "flops")
        if isinstance(before.get(key), (int, float))
        and before.get(key)
        and after.get(key) is not None
    ]
    cosines = [
        (p["name"], p["fidelity"]["values"]["cosine"])
        for p in report["passes"]
        if p.get("fidelity")
        and isinstance(p["fidelity"].get("values", {}).get("cosine"), (int, float))
    ]
    charts = "".join(
        [
            _svg_bars("output / input", ratios),
            _svg_bars(
                "seconds per pass", [(p["name"], p["seconds"]) for p in report["passes"]], " s"
            ),
            _svg_bars("cosine after each lossy pass", cosines),
        ]
    )
    body = html.escape(json.dumps(report, indent=2, default=str))
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>nnopt-graph report</title>"
        "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:4px}"
        "svg{display:block;margin:12px 0;font:12px sans-serif}</style>"
        "</head><body><h1>nnopt-graph report</h1>"
        f"<p>pipeline: <code>{html.escape(report.get('pipeline', ''))}</code>; guard: "
        f"{html.escape(json.dumps(report.get('guard')))}</p>{charts}"
        "<table><tr><th>pass</th><th>modified</th><th>stats</th><th>seconds</th><th>guard</th></tr>"
        f"{rows}</table><h2>full report</h2><pre>{body}</pre></body></html>"
    )


def write_report(report: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write the report atomically as JSON, or HTML when the name ends in .html."""
    path = Path(path)
    if path.suffix.lower() in {".html", ".htm"}:
        _write_text(_html(report), path)
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

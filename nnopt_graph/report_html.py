"""The HTML report: one self-contained page, readable without JavaScript or network."""

from __future__ import annotations

__all__ = ["first_screen", "render_html"]

import html
import json
import math
from typing import Any

_CSS = (
    "body{font-family:system-ui,sans-serif;margin:16px;color:#222;max-width:1100px}"
    "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;"
    "text-align:right}th{background:#f3f3f3}td.l,th.l{text-align:left}"
    ".cards{display:flex;flex-wrap:wrap;gap:12px}.card{border:1px solid #ccc;border-radius:6px;"
    "padding:8px 12px}.ok{color:#176b2c}.bad{color:#a31515}svg{display:block;font:11px sans-serif}"
    "h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.4em}code{background:#f5f5f5}"
)


def _num(value: Any, digits: int = 7) -> str:
    """A number with enough digits: 0.9991 never shows as 1."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return html.escape(value)
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if value != 0 and 0.999 <= abs(value) < 1:
        # Keep the distance from 1 visible: show digits until one of them is not 9.
        text = f"{value:.12f}".rstrip("0")
        nines = len(text.split(".")[1]) - len(text.split(".")[1].lstrip("9"))
        return f"{value:.{max(digits, nines + 2)}f}"
    return f"{value:.{digits}g}"


def _bytes(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    for unit, size in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit} ({int(n):,} B)"
    return f"{int(n):,} B"


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _sizes_table(report: dict[str, Any]) -> str:
    before, after = report.get("input") or {}, report.get("output") or {}
    rows = []
    for label, key, fmt in (
        ("size", "size_bytes", _bytes),
        ("params", "params", _num),
        ("FLOPs", "flops", _num),
        ("nodes", "nodes", _num),
    ):
        a, b = before.get(key), after.get(key)
        ratio = f"{b / a:.4f}" if isinstance(a, (int, float)) and a and b is not None else "-"
        rows.append(
            f"<tr><td class='l'>{label}</td><td>{fmt(a)}</td><td>{fmt(b)}</td><td>{ratio}</td></tr>"
        )
    return (
        "<table><tr><th class='l'>model</th><th>input</th><th>output</th><th>ratio</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _strip_plot(values: list[float], label: str, width: int = 260, height: int = 46) -> str:
    """Per-sample values as a strip of dots between their min and max (inline SVG)."""
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not finite:
        return ""
    lo, hi = min(finite), max(finite)
    span = (hi - lo) or 1.0
    pad = 8
    dots = "".join(
        f"<circle cx='{pad + (width - 2 * pad) * (v - lo) / span:.1f}' "
        f"cy='{14 + (i % 5) * 4}' r='2' fill='#4a7ebb' fill-opacity='0.6'/>"
        for i, v in enumerate(finite)
    )
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        f"role='img' aria-label='{_esc(label)} per sample'>"
        f"<line x1='{pad}' y1='36' x2='{width - pad}' y2='36' stroke='#999'/>{dots}"
        f"<text x='{pad}' y='{height - 1}'>{_num(lo)}</text>"
        f"<text x='{width - pad}' y='{height - 1}' text-anchor='end'>{_num(hi)}</text></svg>"
    )


def _bars(title: str, items: list[tuple[str, float]], unit: str = "") -> str:
    """A horizontal bar chart as inline SVG."""
    if not items:
        return ""
    top = max((abs(v) for _, v in items), default=0.0) or 1.0
    row, label_w, bar_w = 20, 240, 320
    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{label_w + bar_w + 140}' "
        f"height='{row * len(items) + 26}'><text x='0' y='14' font-weight='bold'>"
        f"{_esc(title)}</text>"
    ]
    for i, (label, value) in enumerate(items):
        y = 22 + i * row
        w = max(1.0, bar_w * abs(value) / top)
        parts.append(
            f"<text x='0' y='{y + 12}'>{_esc(label)[:40]}</text><rect x='{label_w}' y='{y}' "
            f"width='{w:.1f}' height='14' fill='#4a7ebb'/><text x='{label_w + w + 6:.1f}' "
            f"y='{y + 12}'>{_num(value, 5)}{unit}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _metric(entry: dict[str, Any], name: str, key: str) -> Any:
    """A reduction of a metric, from the new nested form or the older flat one."""
    value = entry.get(name)
    if isinstance(value, dict):
        return value.get(key)
    return value if key in {"min", "max"} else None


def _fidelity_section(report: dict[str, Any]) -> str:
    fid = report.get("fidelity")
    if not fid:
        return "<p>Not verified (no output written, or <code>--no-check</code>).</p>"
    rows = []
    for name, entry in (fid.get("per_output") or {}).items():
        cosine = entry.get("cosine")
        values = cosine.get("values", []) if isinstance(cosine, dict) else []
        top1 = _metric(entry, "top1", "mean")  # the argmax agreement rate over samples
        rows.append(
            f"<tr><td class='l'>{_esc(name)}</td>"
            f"<td>{_num(_metric(entry, 'cosine', 'min'))}</td>"
            f"<td>{_num(_metric(entry, 'cosine', 'p5'))}</td>"
            f"<td>{_num(_metric(entry, 'cosine', 'median'))}</td>"
            f"<td>{_num(_metric(entry, 'rel_l2', 'max'))}</td>"
            f"<td>{_num(_metric(entry, 'max_abs', 'max'), 4)}</td>"
            f"<td>{_num(top1) if top1 is not None else '-'}</td>"
            f"<td>{_esc(entry.get('shape_match', '-'))}</td>"
            f"<td>{_strip_plot(values, f'cosine of {name}')}</td></tr>"
        )
    equal = fid.get("equal")
    verdict = (
        "<p><b>Equal to the input</b> on every sample (lossless check: allclose and relative "
        "L2, NaN/Inf in place).</p>"
        if equal
        else ""
    )
    return verdict + (
        f"<p>Final fidelity over <b>{_esc(fid.get('samples', '-'))}</b> held-out samples "
        "(worst sample counts):</p><table><tr><th class='l'>output</th><th>cosine min</th>"
        "<th>p5</th><th>median</th><th>rel_l2 max</th><th>max_abs</th><th>top-1 agreement</th>"
        "<th>shape</th><th class='l'>cosine per sample</th></tr>" + "".join(rows) + "</table>"
    )


def _guard_words(report: dict[str, Any]) -> str:
    guard = report.get("guard") or {}
    if guard.get("verdict"):
        text = guard["verdict"]
    elif not guard.get("expr"):
        text = "No guard: the pipeline is lossless, so the output must equal the input's."
    elif guard.get("passed") is None:
        text = f"Guard {guard['expr']} was not measured on the output."
    elif guard["passed"]:
        text = f"The output keeps the guard {guard['expr']} on every held-out sample."
    else:
        text = f"The output breaks the guard {guard['expr']}."
    cls = "bad" if guard.get("passed") is False else "ok"
    warnings = "".join(f"<li>{_esc(w)}</li>" for w in guard.get("warnings") or [])
    return f"<p class='{cls}'><b>Guard:</b> {_esc(text)}</p>" + (
        f"<ul>{warnings}</ul>" if warnings else ""
    )


def _latency(report: dict[str, Any]) -> str:
    bench = report.get("latency") or report.get("bench")
    if not bench:
        return "<p>Latency: not measured in this run (use <code>nnopt-graph bench</code>).</p>"
    return f"<p>Latency: <code>{_esc(json.dumps(bench, default=str))}</code></p>"


def first_screen(report: dict[str, Any]) -> str:
    """The summary a reader opens the report for, as an HTML fragment (also used in Jupyter).

    Sizes before and after, the final fidelity per output with its per-sample spread,
    top-1 agreement, latency where measured, and the guard's verdict in words.
    """
    return (
        "<section class='first'>"
        f"<p>pipeline: <code>{_esc(report.get('pipeline', ''))}</code> "
        f"({_num(report.get('seconds'), 3)} s)</p>"
        f"<div class='cards'><div class='card'>{_sizes_table(report)}</div>"
        f"<div class='card'>{_fidelity_section(report)}</div></div>"
        f"{_guard_words(report)}{_latency(report)}</section>"
    )


def _passes_table(report: dict[str, Any]) -> str:
    rows = []
    for p in report.get("passes", []):
        stats = ", ".join(f"{k}={v}" for k, v in (p.get("stats") or {}).items() if v)
        outcome = p.get("outcome") or ("changed" if p.get("modified") else "unchanged")
        detail = p.get("outcome_detail") or p.get("guard_action") or ""
        fid = p.get("fidelity") or {}
        cosine = (fid.get("values") or {}).get("cosine") if isinstance(fid, dict) else None
        rows.append(
            f"<tr><td class='l'>{_esc(p.get('name'))}</td><td class='l'>{_esc(outcome)}</td>"
            f"<td class='l'>{_esc(detail)}</td><td class='l'>{_esc(stats or '-')}</td>"
            f"<td>{_num(cosine)}</td><td>{_num(p.get('seconds'), 3)}</td></tr>"
        )
    return (
        "<table><tr><th class='l'>pass</th><th class='l'>outcome</th><th class='l'>why</th>"
        "<th class='l'>statistics</th><th>cosine</th><th>seconds</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _decisions(report: dict[str, Any]) -> str:
    parts = []
    for p in report.get("passes", []):
        decisions = p.get("decisions") or []
        if not decisions:
            continue
        keys: list[str] = []
        for d in decisions:
            keys.extend(k for k in d if k not in keys)
        head = "".join(f"<th class='l'>{_esc(k)}</th>" for k in keys)
        body = "".join(
            "<tr>" + "".join(f"<td class='l'>{_esc(d.get(k, ''))}</td>" for k in keys) + "</tr>"
            for d in decisions[:500]
        )
        plot_items = [
            (str(d.get("layer") or d.get("name") or d.get("node") or i), float(v))
            for i, d in enumerate(decisions[:40])
            for k, v in d.items()
            if k in {"cosine", "ratio", "sensitivity", "error"} and isinstance(v, (int, float))
        ]
        parts.append(
            f"<h3>{_esc(p.get('name'))}</h3>{_bars('per layer', plot_items)}"
            f"<table><tr>{head}</tr>{body}</table>"
        )
    return "".join(parts) or "<p>No pass made per-layer decisions.</p>"


def render_html(report: dict[str, Any]) -> str:
    """The whole report page: first screen, passes, per-layer decisions, raw JSON."""
    seconds = [(p.get("name", "?"), p.get("seconds") or 0.0) for p in report.get("passes", [])]
    before, after = report.get("input") or {}, report.get("output") or {}
    ratios = [
        (key, after[key] / before[key])
        for key in ("size_bytes", "params", "nodes", "flops")
        if isinstance(before.get(key), (int, float))
        and before.get(key)
        and after.get(key) is not None
    ]
    raw = html.escape(json.dumps(report, indent=2, default=str))
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>nnopt-graph report</title><style>{_CSS}</style></head><body>"
        f"<h1>nnopt-graph report</h1>{first_screen(report)}"
        f"<h2>Passes</h2>{_passes_table(report)}{_bars('output / input', ratios)}"
        f"{_bars('seconds per pass', seconds, ' s')}"
        f"<h2>Per-layer decisions</h2>{_decisions(report)}"
        f"<h2>Full report (JSON)</h2><details><summary>show</summary><pre>{raw}</pre>"
        "</details></body></html>"
    )

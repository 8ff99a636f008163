"""The search's HTML report: the Pareto front plotted and tabled, one self-contained page."""

from __future__ import annotations

__all__ = ["REPORT_NAME", "render_front_html"]

import html
import math
from typing import Any

REPORT_NAME = "report.html"

# The look of nnopt_graph/report_html.py: inline CSS and SVG, no script, no network.
_CSS = (
    "body{font-family:system-ui,sans-serif;margin:16px;color:#222;max-width:1100px}"
    "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;"
    "text-align:right}th{background:#f3f3f3}td.l,th.l{text-align:left}"
    "svg{display:block;font:11px sans-serif}h1{font-size:1.4em}"
    "h2{font-size:1.15em;margin-top:1.4em}code{background:#f5f5f5}"
)
_W, _H = 640, 360
_LEFT, _RIGHT, _TOP, _BOTTOM = 70, 20, 20, 44


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _bytes(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    for unit, size in (("MB", 2**20), ("KB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def _cosine(record: dict[str, Any]) -> float | None:
    value = (record.get("worst") or {}).get("cosine")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _point(record: dict[str, Any]) -> tuple[float, float] | None:
    """(modelled latency ratio, 1 - worst cosine) of a record that has both, else None."""
    ratio = (record.get("modelled") or {}).get("ratio")
    cos = _cosine(record)
    if not isinstance(ratio, (int, float)) or cos is None:
        return None
    return float(ratio), max(0.0, 1.0 - cos)


def _scale(lo: float, hi: float, a: float, b: float) -> Any:
    span = (hi - lo) or 1.0
    return lambda v: a + (b - a) * (v - lo) / span


def _plot(front: list[dict[str, Any]], others: list[dict[str, Any]]) -> str:
    """Latency ratio (x) vs worst-sample cosine (y, log distance from 1); area ~ size."""
    pts_front = [(n, r, _point(r)) for n, r in enumerate(front)]
    pts_other = [(r, _point(r)) for r in others]
    every = [p for _, _, p in pts_front if p] + [p for _, p in pts_other if p]
    if not every:
        return "<p>No candidate with a latency and a worst cosine to plot.</p>"
    # y: log10 of (1 - worst cosine), floored so a lossless candidate (exactly 1) shows.
    floor = 1e-7
    ys = [math.log10(max(d, floor)) for _, d in every]
    xs = [x for x, _ in every]
    x_lo, x_hi = min(xs + [1.0]), max(xs + [1.0])
    pad = 0.05 * ((x_hi - x_lo) or 1.0)
    fx = _scale(x_lo - pad, x_hi + pad, _LEFT, _W - _RIGHT)
    y_lo, y_hi = math.floor(min(ys)), math.ceil(max(ys))
    if y_lo == y_hi:
        y_hi += 1
    fy = _scale(y_lo, y_hi, _TOP, _H - _BOTTOM)  # smaller loss (better) at the top
    sizes = [float(r.get("size") or 0) for r in front + others]
    big = max(sizes) or 1.0

    def radius(record: dict[str, Any]) -> float:
        return 3.0 + 9.0 * math.sqrt(float(record.get("size") or 0) / big)

    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{_W}' height='{_H}' role='img' "
        "aria-label='Pareto front: modelled latency ratio vs worst-sample cosine, size as area'>",
        f"<line x1='{_LEFT}' y1='{_H - _BOTTOM}' x2='{_W - _RIGHT}' y2='{_H - _BOTTOM}' "
        "stroke='#999'/>",
        f"<line x1='{_LEFT}' y1='{_TOP}' x2='{_LEFT}' y2='{_H - _BOTTOM}' stroke='#999'/>",
        f"<line x1='{fx(1.0):.1f}' y1='{_TOP}' x2='{fx(1.0):.1f}' y2='{_H - _BOTTOM}' "
        "stroke='#ccc' stroke-dasharray='4 3'/>",
        f"<text x='{(_LEFT + _W - _RIGHT) / 2:.0f}' y='{_H - 6}' text-anchor='middle'>"
        "modelled latency / input (search.modelled; dashed: the input)</text>",
        f"<text x='12' y='{(_TOP + _H - _BOTTOM) / 2:.0f}' text-anchor='middle' "
        f"transform='rotate(-90 12 {(_TOP + _H - _BOTTOM) / 2:.0f})'>"
        "1 - worst-sample cosine (log)</text>",
    ]
    for k in range(y_lo, y_hi + 1):
        label = "<=1e-7" if k <= -7 else f"1e{k}"
        parts.append(f"<text x='{_LEFT - 6}' y='{fy(k) + 4:.1f}' text-anchor='end'>{label}</text>")
    for v in (x_lo, 1.0, x_hi):
        parts.append(
            f"<text x='{fx(v):.1f}' y='{_H - _BOTTOM + 14}' text-anchor='middle'>{v:.3f}</text>"
        )
    for record, p in pts_other:
        if p is None:
            continue
        x, d = p
        parts.append(
            f"<circle class='candidate' cx='{fx(x):.1f}' cy='{fy(math.log10(max(d, floor))):.1f}' "
            f"r='{radius(record):.1f}' fill='#bbb' fill-opacity='0.5'>"
            f"<title>{_esc(record.get('pipeline'))}</title></circle>"
        )
    line = [
        (fx(p[0]), fy(math.log10(max(p[1], floor))))
        for _, _, p in sorted(
            (t for t in pts_front if t[2]), key=lambda t: t[2][0] if t[2] else 0.0
        )
        if p
    ]
    if len(line) > 1:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in line)
        parts.append(f"<polyline points='{path}' fill='none' stroke='#4a7ebb'/>")
    for n, record, p in pts_front:
        if p is None:
            continue
        x, d = p
        cx, cy = fx(x), fy(math.log10(max(d, floor)))
        parts.append(
            f"<a href='#front-{n:02d}'><circle class='front-point' data-n='{n:02d}' "
            f"cx='{cx:.1f}' cy='{cy:.1f}' r='{radius(record):.1f}' fill='#4a7ebb' "
            f"fill-opacity='0.75'><title>#{n:02d} {_esc(record.get('pipeline'))} "
            f"({_bytes(record.get('size'))})</title></circle></a>"
            f"<text x='{cx + radius(record) + 2:.1f}' y='{cy + 4:.1f}'>{n:02d}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _front_table(front: list[dict[str, Any]], best: str | None) -> str:
    rows = []
    for n, r in enumerate(front):
        lat = r.get("latency_ratio") or {}
        model = (r.get("modelled") or {}).get("ratio")
        cos = _cosine(r)
        mark = " (best.onnx)" if best is not None and r.get("pipeline") == best else ""
        rows.append(
            f"<tr id='front-{n:02d}'><td>{n:02d}</td>"
            f"<td>{'-' if model is None else f'{model:.3f}'}</td>"
            f"<td>{lat.get('median', float('nan')):.3f} [{lat.get('min', float('nan')):.3f}, "
            f"{lat.get('max', float('nan')):.3f}]</td>"
            f"<td>{'-' if cos is None else f'{cos:.6f}'}</td><td>{_bytes(r.get('size'))}</td>"
            f"<td class='l'><a href='front/{n:02d}.onnx'>front/{n:02d}.onnx</a>{mark} · "
            f"<a href='front/{n:02d}.pipeline.txt'>pipeline</a></td>"
            f"<td class='l'><code>{_esc(r.get('pipeline'))}</code></td></tr>"
        )
    return (
        "<table><tr><th>#</th><th>modelled latency / input</th>"
        "<th>measured latency / input, median [min, max]</th>"
        "<th>worst cosine</th><th>size</th><th class='l'>model</th><th class='l'>pipeline "
        "(re-run with <code>nnopt-graph opt -p</code>)</th></tr>" + "".join(rows) + "</table>"
    )


def _confirmation_table(c: dict[str, Any] | None) -> str:
    """The confirmation run: every re-timed model against the reference, fastest first."""
    if c is None:
        return ""
    if not c.get("windows"):
        return (
            f"<h2>Confirmation</h2><p>Only <code>{_esc(c.get('best'))}</code> meets the guard; "
            "nothing re-timed.</p>"
        )
    n = c["noise_a_vs_a"]
    rows = []
    for e in c["entries"]:
        r = e["ratio"]
        mark = " (best.onnx)" if e["pipeline"] == c["best"] else ""
        vs_input = "-" if e.get("vs_input") is None else f"{e['vs_input']:.3f}"
        rows.append(
            f"<tr><td class='l'><code>{_esc(e['pipeline'])}</code>{mark}</td>"
            f"<td class='l'>{_esc(e['role'])}</td><td>{r['median']:.3f} [{r['min']:.3f}, "
            f"{r['max']:.3f}]</td><td>{vs_input}</td><td>{e['first_ratio']:.3f}</td></tr>"
        )
    return (
        f"<h2>Confirmation</h2><p>best.onnx is the fastest of one interleaved run of "
        f"{c['windows']} windows; ratios to <code>{_esc(c['reference'])}</code>. A-vs-A "
        f"(the reference against a second session of itself): {n['median']:.3f} "
        f"[{n['min']:.3f}, {n['max']:.3f}].</p><table><tr><th class='l'>pipeline</th>"
        "<th class='l'>role</th><th>x reference, median [min, max]</th><th>x input</th>"
        "<th>search's figure (x input)</th></tr>" + "".join(rows) + "</table>"
    )


def render_front_html(
    meta: dict[str, Any],
    front: list[dict[str, Any]],
    records: list[dict[str, Any]],
    best: dict[str, Any] | None,
    confirmation: dict[str, Any] | None = None,
) -> str:
    """The search report page: the front plot, the front table, the confirmation, every candidate.

    Args:
        meta: the search's ``input``, ``target``, ``guard``, ``evaluated``.
        front: the front records, fastest first (row n is ``front/NN.onnx``).
        records: every candidate's record (those off the front are grey in the plot).
        best: the record written as ``best.onnx``, or None.
        confirmation: the confirmation run best was chosen from (``Confirmation.to_json``).
    """
    on_front = {id(r) for r in front}
    feasible_off = [
        r
        for r in records
        if id(r) not in on_front and r.get("status") == "ok" and r.get("guard_passed")
    ]
    rest = []
    for r in records:
        cos = _cosine(r)
        lat = (r.get("latency_ratio") or {}).get("median")
        model = (r.get("modelled") or {}).get("ratio")
        rest.append(
            f"<tr><td class='l'>{_esc(r.get('status'))}</td>"
            f"<td class='l'>{'yes' if r.get('guard_passed') else 'no'}</td>"
            f"<td>{'-' if model is None else f'{model:.3f}'}</td>"
            f"<td>{'-' if lat is None else f'{lat:.3f}'}</td>"
            f"<td>{'-' if cos is None else f'{cos:.6f}'}</td><td>{_bytes(r.get('size'))}</td>"
            f"<td class='l'><code>{_esc(r.get('pipeline'))}</code>"
            f"{' ' + _esc(r['error']) if r.get('error') else ''}</td></tr>"
        )
    best_text = (
        "none met the guard"
        if best is None
        else f"<a href='best.onnx'>best.onnx</a>: <code>{_esc(best.get('pipeline'))}</code>"
    )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>nnopt-graph search</title><style>{_CSS}</style></head><body>"
        f"<h1>nnopt-graph search: {_esc(meta.get('input'))}</h1>"
        f"<p>Target {_esc(meta.get('target'))}, guard <code>{_esc(meta.get('guard'))}</code>; "
        f"{len(records)} candidates, {len(front)} on the front, {meta.get('evaluated', 0)} "
        f"evaluated by this run. Fastest meeting the guard: {best_text}.</p>"
        "<h2>Pareto front</h2><p>Blue: the front (modelled latency, worst-sample loss and "
        "size all minimized; circle area ~ size); grey: other candidates meeting the guard. "
        "Click a point for its row.</p>"
        f"{_plot(front, feasible_off)}"
        f"{_front_table(front, None if best is None else best.get('pipeline'))}"
        f"{_confirmation_table(confirmation)}"
        "<h2>Every candidate</h2><table><tr><th class='l'>status</th><th class='l'>guard</th>"
        "<th>modelled latency / input</th><th>measured latency / input</th><th>worst cosine</th>"
        "<th>size</th><th class='l'>pipeline</th>"
        "</tr>" + "".join(rest) + "</table></body></html>"
    )

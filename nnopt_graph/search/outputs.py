"""The search's OUTDIR: the Pareto front, front.json / front.md / report.html and best.onnx."""

from __future__ import annotations

__all__ = ["front_of", "modelled", "pareto_front", "rank_key", "write_outputs"]

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(
        x < y for x, y in zip(a, b, strict=True)
    )


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the points no other point dominates (every objective minimized).

    Equal points are all kept. Indices come back in input order.
    """
    return [
        i
        for i, p in enumerate(points)
        if not any(_dominates(q, p) for j, q in enumerate(points) if j != i)
    ]


def _copy_model(src: Path, dst: Path) -> None:
    """Copy a candidate's model; one with external data is re-saved under the new name."""
    if len([p for p in src.parent.iterdir() if p.is_file()]) == 1:
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        return
    from nnopt_graph.core import io

    io.save(io.load(src), dst)


def _fmt_ratio(record: dict[str, Any]) -> str:
    r = record["latency_ratio"]
    return f"{r['median']:.3f} [{r['min']:.3f}, {r['max']:.3f}]"


def modelled(record: dict[str, Any]) -> float:
    """The record's modelled latency ratio (what the front ranks by); inf when it has none."""
    value = (record.get("modelled") or {}).get("ratio")
    return float(value) if isinstance(value, (int, float)) else float("inf")


def rank_key(record: dict[str, Any]) -> tuple[float, int, str]:
    """Fastest first by the modelled latency, then smaller, then by pipeline text."""
    return (modelled(record), int(record.get("size") or 0), str(record["pipeline"]))


def _cosine(record: dict[str, Any]) -> float | None:
    worst = record.get("worst") or {}
    value = worst.get("cosine")
    return float(value) if isinstance(value, (int, float)) else None


def front_of(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Pareto-front records meeting the guard, fastest first by the modelled latency.

    The objectives are the strategy's (modelled latency, 1 - worst cosine, size), all
    deterministic: the same candidates give the same front wherever they were evaluated.
    """
    from nnopt_graph.search.strategy import objectives

    scored = [
        (r, p)
        for r in records
        if r.get("status") == "ok" and r.get("guard_passed")
        for p in [objectives(r)]
        if p is not None
    ]
    front = [scored[i][0] for i in pareto_front([p for _, p in scored])]
    front.sort(key=rank_key)
    return front


def write_outputs(
    outdir: Path,
    records: list[dict[str, Any]],
    meta: dict[str, Any],
    front: list[dict[str, Any]],
    confirmation: Any,
) -> dict[str, Any] | None:
    """Write the front files, front.json, front.md, report.html and best.onnx; return best.

    best is the confirmation's choice when there was a confirmation run, else the fastest
    feasible record by the search's own figure; with none, a stale best.onnx is removed.
    """
    from nnopt_graph.search.report import REPORT_NAME, render_front_html

    feasible = [r for r in records if r.get("status") == "ok" and r.get("guard_passed")]
    front_dir = outdir / "front"
    if front_dir.exists():
        shutil.rmtree(front_dir)
    front_dir.mkdir()
    entries = []
    for n, record in enumerate(front):
        model = front_dir / f"{n:02d}.onnx"
        _copy_model(Path(record["model"]), model)
        (front_dir / f"{n:02d}.pipeline.txt").write_text(record["pipeline"] + "\n")
        entries.append(
            {
                "model": str(model.relative_to(outdir)),
                "pipeline": record["pipeline"],
                "modelled": record.get("modelled"),
                "latency_ratio": record["latency_ratio"],
                "worst": record.get("worst"),
                "size": record["size"],
                "outcomes": record.get("outcomes"),
            }
        )
    if confirmation is not None:
        best = confirmation.best
    else:
        # No re-timing asked: the fastest by the modelled latency (deterministic).
        best = min(feasible, key=rank_key, default=None)
    summary = {
        **meta,
        "front": entries,
        "best": None if best is None else {"pipeline": best["pipeline"], "model": "best.onnx"},
        "confirmation": None if confirmation is None else confirmation.to_json(),
        "report": REPORT_NAME,
        "candidates": [{k: v for k, v in r.items() if k != "key"} for r in records],
    }
    (outdir / "front.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    lines = [
        f"# Search front: {meta['input']} (target {meta['target']}, guard {meta['guard']})",
        "",
        f"{len(records)} candidates, {len(feasible)} meeting the guard, "
        f"{meta['evaluated']} evaluated by this run. Modelled latency: candidate / input "
        "by the deterministic cost model (search.modelled; what the front and the search "
        "rank by). Measured: candidate / input, median [min, max] of per-window ratios "
        "(interleaved, CPU, one run per candidate).",
        "",
        "| # | modelled latency | measured latency | worst cosine | size (bytes) | pipeline |",
        "|---|---|---|---|---|---|",
    ]
    for n, r in enumerate(front):
        cos = _cosine(r)
        lines.append(
            f"| {n:02d} | {modelled(r):.3f} | {_fmt_ratio(r)} | "
            f"{'-' if cos is None else f'{cos:.5f}'} "
            f"| {r['size']} | `{r['pipeline']}` |"
        )
    lines += _confirmation_lines(confirmation)
    lines += [
        "",
        f"Plot of the front (latency vs worst-sample cosine, size as area): "
        f"[{REPORT_NAME}]({REPORT_NAME})",
    ]
    (outdir / "front.md").write_text("\n".join(lines) + "\n")
    (outdir / REPORT_NAME).write_text(
        render_front_html(
            meta, front, records, best, None if confirmation is None else confirmation.to_json()
        )
    )
    if best is not None:
        _copy_model(Path(best["model"]), outdir / "best.onnx")
        (outdir / "best.pipeline.txt").write_text(best["pipeline"] + "\n")
    else:
        # A stale best from an earlier run must not outlive a run where nothing qualifies.
        for name in ("best.onnx", "best.pipeline.txt"):
            (outdir / name).unlink(missing_ok=True)
    return best


def _confirmation_lines(confirmation: Any) -> list[str]:
    """front.md's confirmation table: every re-timed model against the reference."""
    if confirmation is None:
        return ["", "No confirmation run: best.onnx is the fastest by the modelled latency."]
    c = confirmation.to_json()
    if not c["windows"]:
        return ["", f"Confirmation: only `{c['best']}` meets the guard; nothing re-timed."]
    n = c["noise_a_vs_a"]
    lines = [
        "",
        f"## Confirmation (best.onnx chosen here): one interleaved run of {c['windows']} "
        f"windows, ratios to `{c['reference']}`",
        "",
        f"A-vs-A (the reference against a second session of itself, the noise band): "
        f"{n['median']:.3f} [{n['min']:.3f}, {n['max']:.3f}].",
        "",
        "| pipeline | role | x reference, median [min, max] | x input "
        "| search's figure (x input) |",
        "|---|---|---|---|---|",
    ]
    for e in c["entries"]:
        r = e["ratio"]
        mark = " (best.onnx)" if e["pipeline"] == c["best"] else ""
        vs_input = "-" if e["vs_input"] is None else f"{e['vs_input']:.3f}"
        lines.append(
            f"| `{e['pipeline']}`{mark} | {e['role']} | {r['median']:.3f} [{r['min']:.3f}, "
            f"{r['max']:.3f}] | {vs_input} | {e['first_ratio']:.3f} |"
        )
    return lines

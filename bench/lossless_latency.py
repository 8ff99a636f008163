"""Latency and size of the lossless default pipeline's output against its input.

For every zoo model, the digits CNN and every real model in models/fetch.py: run the
default pipeline (verified), then time the input (A), the input again in a second
session (A': the noise band) and the output (B) under ONNX Runtime's CPU EP in one
process with compare_latency's window protocol: windows of about --window s of A, the
three in rotating order, a model's window time its fastest run there, at least --rounds
windows and about --seconds of A. Per-window ratios against A give min/median/max and
the median's 95% CI. Also recorded: load average, file size ratio, node counts, whether
node names survived, and how ONNX Runtime's optimized graphs of input and output differ
(runtime/ort_graph: op counts and order, attributes, weight bytes).

Writes bench/results/lossless_latency.{json,md} and bench/results/lossless_size.md.

Usage: python bench/lossless_latency.py [--rounds N] [--seconds S] [--window S]
    [--models NAME ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models import fetch, zoo  # noqa: E402
from models.calib import write_calib_npz  # noqa: E402
from nnopt_graph import optimize  # noqa: E402
from nnopt_graph.pipeline.presets import DEFAULT_PIPELINE  # noqa: E402
from nnopt_graph.runtime.ort_graph import differences, ort_optimized_graph  # noqa: E402
from nnopt_graph.runtime.quant_bench import compare_latency  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DIGITS = ROOT / "models" / "digits"


def _commit() -> str:
    out = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, shared"


def _models(
    work: Path, names: list[str] | None
) -> dict[str, tuple[Path, Path, dict[str, np.ndarray]]]:
    """Name -> (model path, verification npz, one feed to time)."""
    out: dict[str, tuple[Path, Path, dict[str, np.ndarray]]] = {}
    for key, build in zoo.ZOO.items():
        name = f"zoo/{key}"
        if names and name not in names:
            continue
        path = work / f"{key}.onnx"
        onnx.save(build(), path)
        calib = write_calib_npz(key, work / f"{key}.npz")
        out[name] = (path, calib, zoo.example_inputs(key))
    if not names or "digits-cnn" in names:
        held = np.load(DIGITS / "digits_heldout.npz")
        out["digits-cnn"] = (
            DIGITS / "digits_cnn.onnx",
            DIGITS / "digits_heldout.npz",
            {"input": held["input"][:8]},
        )
    for key in fetch.REAL_MODELS:
        if names and key not in names:
            continue
        calib = write_calib_npz(key, work / f"{key}.npz")
        out[key] = (fetch.fetch(key), calib, fetch.example_inputs(key))
    return out


def _ratios(times: list[float], base: list[float]) -> dict[str, float]:
    """Per-window ratios of ``times`` to ``base``: min / median / max and the median's 95% CI.

    The CI is distribution-free (order statistics of the per-window ratios).
    """
    per_round = sorted(t / b for t, b in zip(times, base, strict=True))
    n = len(per_round)
    half = 1.96 * math.sqrt(n) / 2
    lo, hi = max(0, math.floor(n / 2 - half)), min(n - 1, math.ceil(n / 2 + half) - 1)
    return {
        "min": per_round[0],
        "median": statistics.median(per_round),
        "max": per_round[-1],
        "ci95_low": per_round[lo],
        "ci95_high": per_round[hi],
    }


def time_windows(
    paths: list[Path], feed: dict[str, np.ndarray], args: argparse.Namespace
) -> dict[str, Any]:
    """A, A' (a second session of A) and B under compare_latency's window protocol.

    Windows of about ``args.window`` seconds of A, the three models in rotating order
    (no model twice in a row), each model's time in a window its fastest run; at least
    ``args.rounds`` windows and about ``args.seconds`` of A's fastest runs, at most
    ``args.max_rounds``. The load average is read before and after.
    """
    load_before = os.getloadavg()[0]
    result = compare_latency(
        [str(p) for p in paths],
        feed,
        runs=args.rounds,
        warmup=args.warmup,
        threads=2,
        spinning=False,
        min_seconds=args.seconds,
        max_runs=args.max_rounds,
        window_seconds=args.window,
    )
    a, a2, b = result.times[:3]
    return {
        "windows": result.runs,
        "runs_per_window": result.runs_per_window,
        "runs_each": result.runs * result.runs_per_window,
        "load_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "p50_ms_in": statistics.median(a) * 1e3,
        "p50_ms_in_again": statistics.median(a2) * 1e3,
        "p50_ms_out": statistics.median(b) * 1e3,
        "a_vs_a": _ratios(a2, a),
        "out_vs_in": _ratios(b, a),
        "out_vs_in_again": _ratios(b, a2),
        **(
            {
                "annotated_vs_in": _ratios(result.times[3], a),
                "p50_ms_annotated": statistics.median(result.times[3]) * 1e3,
            }
            if len(result.times) > 3
            else {}
        ),
    }


def _names(path: Path) -> set[str]:
    """Node names of a model, subgraphs (If/Loop bodies) included."""
    names: set[str] = set()
    stack = [onnx.load(str(path), load_external_data=False).graph]
    while stack:
        graph = stack.pop()
        for node in graph.node:
            if node.name:
                names.add(node.name)
            for attr in node.attribute:
                if attr.HasField("g"):
                    stack.append(attr.g)
                stack.extend(attr.graphs)
    return names


def _measure(
    name: str,
    path: Path,
    calib: Path,
    feed: dict[str, np.ndarray],
    work: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    out = work / f"{name.replace('/', '_')}.out.onnx"
    settings = {"commit": args.commit, "min_windows": args.rounds, "window_seconds": args.window}
    result = optimize(path, out, calib=calib, check=True)
    in_nodes = len(onnx.load(str(path), load_external_data=False).graph.node)
    out_nodes = len(onnx.load(str(out), load_external_data=False).graph.node)
    before, after = _names(path), _names(out)
    ort_in, ort_out = ort_optimized_graph(path), ort_optimized_graph(out)
    paths = [path, path, out]
    annotated = {}
    if args.annotated:
        # The suspect: value_info. The default pipeline plus infer-shapes annotates every
        # value; ORT then fuses differently (SkipLayerNormalization needs known shapes).
        paths.append(work / f"{name.replace('/', '_')}.annotated.onnx")
        optimize(path, paths[-1], pipeline=f"{DEFAULT_PIPELINE},infer-shapes", check=False)
        annotated = {
            "ort_annotated_differences": differences(ort_in, ort_optimized_graph(paths[-1]))
        }
    timing = {} if args.size_only else time_windows(paths, feed, args)
    fidelity = result.fidelity
    return {
        "model": name,
        "nodes_in": in_nodes,
        "nodes_out": out_nodes,
        "bytes_in": path.stat().st_size,
        "bytes_out": out.stat().st_size,
        "size_ratio": out.stat().st_size / path.stat().st_size,
        "value_info_in": len(onnx.load(str(path), load_external_data=False).graph.value_info),
        "value_info_out": len(onnx.load(str(out), load_external_data=False).graph.value_info),
        "names_kept": len(after & before),
        "names_new": len(after - before),
        "ort_nodes_in": len(ort_in.ops),
        "ort_nodes_out": len(ort_out.ops),
        "ort_graph_same_ops": ort_in.ops == ort_out.ops,
        "ort_fused_in": ort_in.fused,
        "ort_fused_out": ort_out.fused,
        "ort_differences": differences(ort_in, ort_out),
        "verified": fidelity is not None,
        **annotated,
        **timing,
        **settings,
    }


def _fmt(r: dict[str, float]) -> str:
    return f"{r['min']:.3f} / {r['median']:.3f} / {r['max']:.3f}"


def _session_spread(rows: list[dict[str, Any]]) -> float:
    """The run's session-to-session spread: the median over models of |A'/A median - 1|.

    Two sessions of one model differ by a fraction of a percent that no number of
    windows removes (where each lands in memory); one A' per model samples that once.
    """
    return statistics.median(abs(r["a_vs_a"]["median"] - 1.0) for r in rows)


def _band(row: dict[str, Any], spread: float = 0.0) -> float:
    """Half-width of a model's noise band, measured on A' vs A (two sessions of the input).

    The largest of |A'/A median - 1|, the half-width of that median's 95% CI and the
    run's session-to-session spread: B/A is in band when its median is at most 1 + this.
    """
    r = row["a_vs_a"]
    ci = (r["ci95_high"] - r["ci95_low"]) / 2
    return max(abs(r["median"] - 1.0), ci, spread)


def _write(rows: list[dict[str, Any]], args: argparse.Namespace, commit: str | None = None) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        "commit": commit or args.commit,
        "machine": _machine(),
        "onnxruntime": ort.__version__,
        "threads": 2,
        "spinning": False,
        "min_windows": args.rounds,
        "min_seconds": args.seconds,
        "window_seconds": args.window,
        "warmup": args.warmup,
    }
    if not args.size_only:
        _write_latency(rows, args, meta)
    _write_size(
        rows, meta, "size-only run" if args.size_only else "same run as lossless_latency.md"
    )


def _write_latency(rows: list[dict[str, Any]], args: argparse.Namespace, meta: dict) -> None:
    (RESULTS / "lossless_latency.json").write_text(
        json.dumps({**meta, "results": rows}, indent=2) + "\n"
    )
    spread = _session_spread(rows)
    lines = [
        "# Lossless default pipeline: CPU latency of output vs input",
        "",
        f"Commit {meta['commit']}, {meta['machine']}, onnxruntime {meta['onnxruntime']}. "
        "Produced by `python bench/lossless_latency.py`.",
        "",
        "Each model: default pipeline (verified), then the input (A), the input again in a "
        "second session (A') and the output (B) timed in one process under the windowed "
        "interleaved protocol (runtime/quant_bench.compare_latency with window_seconds="
        f"{args.window:g}): in each window the three run in rotating order (A A' B A' B A "
        "B A A' ..., no model twice in a row) until A has run about "
        f"{args.window * 1e3:g} ms (at least 3 runs each), and a model's time in a window "
        "is its fastest run there; CPU EP, 2 intra-op threads, spinning off, after "
        f"{args.warmup} warm-up runs each, at least {args.rounds} windows and about "
        f"{args.seconds:g} s of A. Ratios are per window against A: min / median / max, "
        "and the median's 95% CI (order statistics). A' / A is the noise band; its "
        "half-width is the largest of |A'/A median - 1|, half that median's CI, and the "
        f"run's session-to-session spread (median over models of |A'/A median - 1|: "
        f"{spread:.3f} in this run; two sessions of one model differ by a fraction of a "
        "percent however many windows run). "
        "'in band': B/A median <= 1 + band. Load = 1-minute load average before → after "
        "the model's timing (2 cores, shared with other jobs). 'ORT graph' compares ONNX "
        "Runtime's optimized graphs of input and output (runtime/ort_graph: op counts, "
        "attributes per op, weight bytes; not node order, which varies between two "
        "sessions of one model).",
        "",
        "| model | windows × runs | load | A p50 ms | A' / A (noise) | B / A (output) | "
        "B / A median [95% CI] | band | in band | ORT graph in → out |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        within = r["out_vs_in"]["median"] <= 1.0 + _band(r, spread)
        diff = "; ".join(r["ort_differences"]) or "alike"
        o = r["out_vs_in"]
        lines.append(
            f"| {r['model']} | {r['windows']} × {r['runs_per_window']} | "
            f"{r['load_1min'][0]:.2f} → {r['load_1min'][1]:.2f} | {r['p50_ms_in']:.3f} | "
            f"{_fmt(r['a_vs_a'])} | {_fmt(o)} | "
            f"{o['median']:.3f} [{o['ci95_low']:.3f}, {o['ci95_high']:.3f}] | "
            f"±{_band(r, spread):.3f} | {'yes' if within else 'NO'} | "
            f"{r['ort_nodes_in']} → {r['ort_nodes_out']} ({diff}) |"
        )
    runs = {}
    for r in rows:
        key = (r.get("commit", meta["commit"]), r.get("min_windows", args.rounds))
        runs.setdefault(key, []).append(r["model"])
    if len(runs) > 1:
        lines += ["", "Rows come from more than one run (re-measured with `--merge`):"]
        lines += [
            f"- commit {c}, at least {w} windows: {', '.join(models)}"
            for (c, w), models in runs.items()
        ]
    medians = [r["out_vs_in"]["median"] for r in rows]
    loads = [v for r in rows for v in r["load_1min"]]
    outside = [r["model"] for r in rows if r["out_vs_in"]["median"] > 1.0 + _band(r, spread)]
    lines += [
        "",
        "Outside their band (goal not met in this run): "
        + (", ".join(outside) if outside else "none")
        + f". 1-minute load average over the rows: {min(loads):.2f} to {max(loads):.2f} "
        "(2 cores; see the load column).",
        "",
        f"Output/input medians: min {min(medians):.3f}, median {statistics.median(medians):.3f}, "
        f"max {max(medians):.3f}; geomean {float(np.exp(np.mean(np.log(medians)))):.3f}.",
        "",
    ]
    lines += _annotated_section(rows)
    (RESULTS / "lossless_latency.md").write_text("\n".join(lines))


def _annotated_section(rows: list[dict[str, Any]]) -> list[str]:
    """The value_info suspect: C = default pipeline + infer-shapes, timed in the same windows."""
    timed = [r for r in rows if "annotated_vs_in" in r]
    if not timed:
        return []
    lines = [
        "## The cause of the earlier slowdown: value_info annotations",
        "",
        "C = the default pipeline followed by `infer-shapes` (every value annotated, as "
        "the pipeline's output was before it kept the input's value_info), timed as a "
        "fourth model in the same windows as A, A' and B. 'ORT graph A → C' is how ONNX "
        "Runtime's optimized graph of C differs from the input's. With shapes known, ORT "
        "fuses Add + LayerNormalization into SkipLayerNormalization, which is slower on "
        "these small encoders; the default pipeline writes the value_info its input had "
        "(passes/cleanup/simplify.annotations_kept) and tests/runtime/test_ort_graph.py "
        "checks that ORT's optimized graph of its output has the input's fusions.",
        "",
        "| model | A' / A median | B / A median | C / A median [95% CI] | ORT graph A → C |",
        "|---|---|---|---|---|",
    ]
    for r in timed:
        c = r["annotated_vs_in"]
        lines.append(
            f"| {r['model']} | {r['a_vs_a']['median']:.3f} | {r['out_vs_in']['median']:.3f} | "
            f"{c['median']:.3f} [{c['ci95_low']:.3f}, {c['ci95_high']:.3f}] | "
            f"{'; '.join(r['ort_annotated_differences']) or 'alike'} |"
        )
    lines.append("")
    return lines


def _write_size(rows: list[dict[str, Any]], meta: dict, how: str) -> None:
    size = [
        "# Lossless default pipeline: file size of output vs input",
        "",
        f"Commit {meta['commit']}, {meta['machine']}. Produced by "
        f"`python bench/lossless_latency.py` ({how}). "
        "value_info = shape annotations in the main graph; names = node names (subgraphs "
        "included) of the input that the output keeps, and node names the output adds.",
        "",
        "| model | nodes in → out | bytes in → out | size ratio | value_info in → out | "
        "names kept / new |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        size.append(
            f"| {r['model']} | {r['nodes_in']} → {r['nodes_out']} | "
            f"{r['bytes_in']:,} → {r['bytes_out']:,} | {r['size_ratio']:.4f} | "
            f"{r['value_info_in']} → {r['value_info_out']} | "
            f"{r['names_kept']} / {r['names_new']} |"
        )
    size.append("")
    (RESULTS / "lossless_size.md").write_text("\n".join(size))


def main() -> None:
    """Run every model and write the tables."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30, help="at least this many windows")
    parser.add_argument("--seconds", type=float, default=4.0, help="about this long of A")
    parser.add_argument("--window", type=float, default=0.05, help="window length, s of A")
    parser.add_argument("--max-rounds", type=int, default=400, help="at most this many windows")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--models", nargs="*", help="subset, e.g. zoo/bert-encoder")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--merge", action="store_true", help="replace these models' rows in the saved results"
    )
    parser.add_argument(
        "--annotated",
        action="store_true",
        help="also time C = default pipeline + infer-shapes (every value annotated)",
    )
    parser.add_argument("--size-only", action="store_true", help="no timing: the size table")
    parser.add_argument(
        "--rewrite", action="store_true", help="rewrite the tables from the saved JSON"
    )
    args = parser.parse_args()
    args.commit = _commit()  # once: a commit landing during the run does not split its rows
    if args.rewrite:
        saved = json.loads((RESULTS / "lossless_latency.json").read_text())
        args.rounds, args.seconds = saved["min_windows"], saved["min_seconds"]
        args.window = saved["window_seconds"]
        args.warmup, args.size_only = saved["warmup"], False
        _write(saved["results"], args, commit=saved["commit"])
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, (path, calib, feed) in _models(work, args.models).items():
            row = _measure(name, path, calib, feed, work, args)
            rows.append(row)
            timed = (
                f"A'/A {_fmt(row['a_vs_a'])}  B/A {_fmt(row['out_vs_in'])}  "
                f"windows {row['windows']}x{row['runs_per_window']} load {row['load_1min']}  "
                if "a_vs_a" in row
                else ""
            )
            print(
                f"{name}: {timed}size {row['size_ratio']:.4f}  "
                f"ORT: {'; '.join(row['ort_differences']) or 'alike'}",
                flush=True,
            )
    if args.merge:
        # Re-measured models replace their rows in the saved results; each row keeps
        # the commit and the window settings it was measured with.
        saved = json.loads((RESULTS / "lossless_latency.json").read_text())
        for r in saved["results"]:
            r.setdefault("commit", saved["commit"])
            r.setdefault("min_windows", saved["min_windows"])
            r.setdefault("window_seconds", saved["window_seconds"])
        new = {r["model"]: r for r in rows}
        rows = [new.pop(r["model"], r) for r in saved["results"]] + list(new.values())
    if not args.no_write:
        _write(rows, args)


if __name__ == "__main__":
    main()

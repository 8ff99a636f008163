"""Whole-process cost of the verified default pipeline against the minimum work.

Generates chains of N nodes (Add, Mul, Relu in turn, each Add/Mul with its own small
weight) and times, as separate processes, interleaved over --runs rounds:
  min:  the minimum a verified optimization needs: onnx.load + onnx.save, and one ONNX
        Runtime run of the input and of the saved model;
  opt:  nnopt-graph opt IN OUT (default pipeline, verified);
and, once per round, nnopt-graph list-passes and --version (fixed start). Medians and
the ratio opt/min per size; the output's size ratio. Writes bench/results/min_work.{json,md}.

Usage: python bench/min_work.py [--sizes 4096 16384 65536 262144:2] [--runs 3]
(SIZE:RUNS gives one size its own number of rounds; --aa adds a second minimum per round,
whose ratio to the first is the A-vs-A noise band; the 1-minute load average is recorded.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CLI = [sys.executable, "-m", "nnopt_graph.cli"]

MIN_WORK = """
import sys, numpy as np, onnx, onnxruntime as ort
src, dst = sys.argv[1], sys.argv[2]
onnx.save(onnx.load(src), dst)
feed = {"x": np.ones((1, 4), np.float32)}
for path in (src, dst):
    ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feed)
"""


def chain(nodes: int, seed: int = 0) -> onnx.ModelProto:
    """A chain of ``nodes`` nodes on x[N,4]: Add, Mul, Relu in turn, small weights."""
    rng = np.random.default_rng(seed)
    graph_nodes, inits = [], []
    prev = "x"
    for i in range(nodes):
        out = "y" if i == nodes - 1 else f"h{i}"
        op = ("Add", "Mul", "Relu")[i % 3]
        if op == "Relu":
            graph_nodes.append(helper.make_node("Relu", [prev], [out], name=f"relu{i}"))
        else:
            scale = 0.01 if op == "Add" else 1.0
            base = 0.0 if op == "Add" else 1.0
            w = (base + scale * rng.standard_normal(4)).astype(np.float32)
            inits.append(numpy_helper.from_array(w, f"w{i}"))
            graph_nodes.append(
                helper.make_node(op, [prev, f"w{i}"], [out], name=f"{op.lower()}{i}")
            )
        prev = out
    graph = helper.make_graph(
        graph_nodes,
        f"chain{nodes}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    took = time.perf_counter() - start
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {run.stderr[-500:]}")
    return took


def _commit() -> str:
    out = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip()


def main() -> None:
    """Run and write the tables."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="+", default=["4096", "16384", "65536", "262144:2"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--name", default="min_work", help="results file name")
    parser.add_argument(
        "--aa",
        action="store_true",
        help="also time the minimum twice per round: the min-vs-min ratios are the noise band",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        default=[],
        help="instead of measuring, merge these results JSON files (sizes and fixed-start "
        "samples) into --name",
    )
    args = parser.parse_args()
    if args.merge:
        parts = [json.loads(Path(p).read_text()) for p in args.merge]
        rows = sorted((r for part in parts for r in part["results"]), key=lambda r: r["nodes"])
        start: dict[str, list[float]] = {}
        for part in parts:
            for key, values in part["start_s"].items():
                start.setdefault(key, []).extend(values)
        meta = {
            "commit": parts[0]["commit"],
            "machine": parts[0]["machine"],
            "merged_from": [Path(p).name for p in args.merge],
            "start_median_s": {k: statistics.median(v) for k, v in start.items()},
            "start_s": start,
        }
        _write(args.name, meta, rows)
        return
    plan = []
    for spec in args.sizes:
        size, _, runs = spec.partition(":")
        plan.append((int(size), int(runs) if runs else args.runs))
    rows = []
    start_times: dict[str, list[float]] = {"list-passes": [], "--version": [], "--help": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for size, runs in plan:
            src = work / f"chain{size}.onnx"
            onnx.save(chain(size), src)
            times: dict[str, list[float]] = {"min": [], "opt": []}
            if args.aa:
                times["min2"] = []
            loads: list[float] = []
            out_bytes = 0
            for round_ in range(runs):
                order = ["min", "opt"] if round_ % 2 == 0 else ["opt", "min"]
                if args.aa:
                    order.insert(1, "min2")
                loads.append(os.getloadavg()[0])
                for kind in order:
                    if kind in ("min", "min2"):
                        cmd = [sys.executable, "-c", MIN_WORK, str(src), str(work / "min.onnx")]
                    else:
                        cmd = [*CLI, "opt", str(src), str(work / "opt.onnx")]
                    times[kind].append(_timed(cmd))
                    print(f"{size} {kind} {times[kind][-1]:.2f}s", flush=True)
                out_bytes = (work / "opt.onnx").stat().st_size
                for name in start_times:
                    start_times[name].append(_timed([*CLI, name]))
            med = {k: statistics.median(v) for k, v in times.items()}
            ratios = sorted(o / m for o, m in zip(times["opt"], times["min"], strict=True))
            extra: dict = {}
            if args.aa:
                band = sorted(b / a for a, b in zip(times["min"], times["min2"], strict=True))
                extra = {
                    "min2_s": times["min2"],
                    "aa_ratio_per_round": {
                        "min": band[0],
                        "median": statistics.median(band),
                        "max": band[-1],
                    },
                }
            rows.append(
                {
                    **extra,
                    "load_avg_1m": loads,
                    "nodes": size,
                    "runs": runs,
                    "min_s": times["min"],
                    "opt_s": times["opt"],
                    "min_median_s": med["min"],
                    "opt_median_s": med["opt"],
                    "ratio_of_medians": med["opt"] / med["min"],
                    "ratio_per_round": {
                        "min": ratios[0],
                        "median": statistics.median(ratios),
                        "max": ratios[-1],
                    },
                    "bytes_in": src.stat().st_size,
                    "bytes_out": out_bytes,
                    "size_ratio": out_bytes / src.stat().st_size,
                }
            )
    meta = {
        "commit": _commit(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared",
        "start_median_s": {k: statistics.median(v) for k, v in start_times.items()},
        "start_s": start_times,
    }
    _write(args.name, meta, rows)


def _write(name: str, meta: dict, rows: list[dict]) -> None:
    """bench/results/NAME.json and NAME.md."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({**meta, "results": rows}, indent=2) + "\n")
    start_times = meta["start_s"]
    lines = [
        "# Default pipeline (verified) vs the minimum work, whole processes",
        "",
        f"Commit {meta['commit']}, {meta['machine']}. Produced by `python bench/min_work.py`. "
        "Chains of Add/Mul/Relu on x[N,4] with a 4-element weight per Add/Mul. "
        "min = a process that onnx.load + onnx.save the model and runs the input and the "
        "saved model once each in ONNX Runtime; opt = `nnopt-graph opt IN OUT` (default "
        "pipeline, verified). Runs per size in the table, interleaved (min opt, opt min, "
        "...); medians of wall seconds.",
        "",
        "| nodes | runs | min s | opt s | opt / min (of medians) | "
        "per-run ratio min / med / max | A-vs-A (min2 / min) min / med / max | "
        "load avg (1 min) | output size ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pr = r["ratio_per_round"]
        aa = r.get("aa_ratio_per_round")
        band = f"{aa['min']:.2f} / {aa['median']:.2f} / {aa['max']:.2f}" if aa else "-"
        load = r.get("load_avg_1m") or []
        load_text = f"{min(load):.1f}-{max(load):.1f}" if load else "-"
        lines.append(
            f"| {r['nodes']:,} | {r['runs']} | {r['min_median_s']:.2f} | {r['opt_median_s']:.2f} | "
            f"{r['ratio_of_medians']:.2f} | {pr['min']:.2f} / {pr['median']:.2f} / "
            f"{pr['max']:.2f} | {band} | {load_text} | {r['size_ratio']:.4f} |"
        )
    lines += [
        "",
        "Fixed start (whole process, median of "
        f"{len(start_times['list-passes'])} runs): "
        + ", ".join(f"`nnopt-graph {k}` {v:.2f} s" for k, v in meta["start_median_s"].items()),
        "",
    ]
    (RESULTS / f"{name}.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()

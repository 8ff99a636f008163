"""dedup on a merged model: an If whose two branches are each a full copy of rapidocr det.

Builds merged.onnx (If on a graph-input condition; each branch a prefixed copy of PP-OCRv4
det, whose weights are Constant nodes), then runs, as separate processes, interleaved over
--runs rounds:
  nnopt-graph opt merged.onnx out.onnx -p dedup,eliminate-dead-code [--no-check]
and, in this process, onnx-ir's own hashed initializer dedup (after lifting constants) for
comparison. Records the size ratio out/in, whether both branches' outputs are bit-exact
under ONNX Runtime (ORT_DISABLE_ALL, CPU) on the model's seeded example input, and wall
times; writes bench/results/dedup_merged.{json,md}.

Usage: python bench/dedup_merged.py [--runs N] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as ir_passes
import onnxruntime as ort
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.fetch import example_inputs, fetch  # noqa: E402

MODEL = "rapidocr-det"
PIPELINE = "dedup,eliminate-dead-code"


def _branch(det: onnx.ModelProto, prefix: str, input_name: str) -> onnx.GraphProto:
    """The det graph with every name prefixed except its input, which it reads from outside."""
    graph = onnx.compose.add_prefix_graph(det.graph, prefix, rename_inputs=False)
    del graph.input[:]
    graph.name = prefix.rstrip("/")
    for node in graph.node:
        assert input_name not in node.output
    return graph


def build(path: Path) -> None:
    """Write the merged model: y = If(cond, copy A of det, copy B of det)(x)."""
    det = onnx.load(fetch(MODEL))
    x = det.graph.input[0]
    then_g = _branch(det, "a/", x.name)
    else_g = _branch(det, "b/", x.name)
    out_type = then_g.output[0].type
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)],
        "merged",
        [x, helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_value_info("y", out_type)],
    )
    merged = helper.make_model(
        graph, opset_imports=list(det.opset_import), ir_version=det.ir_version
    )
    onnx.checker.check_model(merged, full_check=True)
    onnx.save(merged, path)


def _run(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _bit_exact(before: Path, after: Path) -> dict[str, bool]:
    feeds = example_inputs(MODEL)
    original = _run(fetch(MODEL), feeds)
    result = {}
    for cond in (True, False):
        merged_feeds = {**feeds, "cond": np.array(cond)}
        a, b = _run(before, merged_feeds), _run(after, merged_feeds)
        branch = "then" if cond else "else"
        result[f"{branch}-branch"] = (
            a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
        )
        result[f"{branch}-branch-equals-original"] = a.tobytes() == original.tobytes()
    return result


def _timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return wall


def _onnx_ir_baseline(merged: Path, out: Path) -> float:
    """onnx-ir's answer: lift constants, then its hashed dedup (graph by graph)."""
    model = ir.load(merged)
    ir_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    ir_passes.DeduplicateHashedInitializersPass()(model)
    ir_passes.RemoveUnusedNodesPass()(model)
    ir.save(model, out)
    return out.stat().st_size / merged.stat().st_size


def _summary(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {"min": values[0], "median": statistics.median(values), "max": values[-1]}


def main() -> None:
    """Build, measure interleaved, check outputs, write results."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workdir", default="/tmp/nnopt-dedup-merged")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    merged, out, report = work / "merged.onnx", work / "out.onnx", work / "report.json"
    build(merged)
    cli = [sys.executable, "-m", "nnopt_graph.cli", "opt", str(merged), str(out), "-p", PIPELINE]
    commands = {
        "nnopt-graph opt (verified)": [*cli, "--report", str(report)],
        "nnopt-graph opt --no-check": [*cli, "--no-check"],
    }
    walls: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(args.runs):
        for label, cmd in commands.items():
            walls[label].append(_timed(cmd))
    _timed(commands["nnopt-graph opt (verified)"])  # leave the verified output and its report
    job = json.loads(report.read_text())
    passes = {p["name"]: {"stats": p["stats"], "seconds": p["seconds"]} for p in job["passes"]}
    size_in, size_out = merged.stat().st_size, out.stat().st_size
    exact = _bit_exact(merged, out)
    baseline_ratio = _onnx_ir_baseline(merged, work / "onnx_ir.onnx")
    results = {
        "model": f"If(cond) with two prefixed copies of {MODEL} (PP-OCRv4 det) as branches",
        "pipeline": PIPELINE,
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "runs": args.runs,
        "size_in_bytes": size_in,
        "size_out_bytes": size_out,
        "size_ratio": size_out / size_in,
        "goal_size_ratio": 0.51,
        "bit_exact": exact,
        "passes": passes,
        "wall_s": {label: _summary(v) for label, v in walls.items()},
        "onnx_ir_hashed_dedup_size_ratio": baseline_ratio,
    }
    results_dir = ROOT / "bench" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "dedup_merged.json").write_text(json.dumps(results, indent=2) + "\n")
    dedup = passes["dedup"]
    lines = [
        f"# dedup on a merged model: {results['model']}",
        "",
        f"Pipeline `{PIPELINE}` through the CLI; {args.runs} interleaved runs per command, "
        f"each a separate process, on {platform.node()} ({os.cpu_count()} CPUs).",
        "Bit-exact: outputs compared byte for byte under ONNX Runtime (CPU, ORT_DISABLE_ALL) "
        f"on the seeded example input of {MODEL}, with cond true and false.",
        "",
        "| tool | size in (MB) | size out (MB) | out / in |",
        "|---|---|---|---|",
        f"| nnopt-graph `{PIPELINE}` | {size_in / 1e6:.2f} | {size_out / 1e6:.2f} | "
        f"**{size_out / size_in:.3f}** (goal ≤ 0.51) |",
        f"| onnx-ir lift constants + DeduplicateHashedInitializersPass | {size_in / 1e6:.2f} | "
        f"{baseline_ratio * size_in / 1e6:.2f} | {baseline_ratio:.3f} |",
        "",
        "| check | result |",
        "|---|---|",
        *[f"| {k} | {'yes' if v else 'NO'} |" for k, v in exact.items()],
        "",
        "| dedup stat | value |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in dedup["stats"].items()],
        "",
        "| command | wall s (min / median / max) |",
        "|---|---|",
        *[
            f"| {label} | {s['min']:.2f} / {s['median']:.2f} / {s['max']:.2f} |"
            for label, s in results["wall_s"].items()
        ],
        f"| dedup pass alone (from the report) | {dedup['seconds']:.2f} |",
    ]
    (results_dir / "dedup_merged.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

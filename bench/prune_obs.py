"""Unit importance for encoder pruning: activation, FLAP fluctuation and structured OBS.

prune-channels refits the layers that lose inputs, so the units worth removing are the
ones the kept units predict best. ``importance=obs`` scores them by the refit's
remaining error (passes/prune/obs.py). This script prunes each encoder at ratio 0.25
with each importance, for the sensitivity-search allocation and for the uniform one,
under `--guard cosine>=0.95`, and reports weights (MatMul/Gemm params after/before),
the guard's verdict, the worst held-out sample's cosine per float output, and the
pass's wall time. The search rows' latency is timed as bench/target_cpu.py times its
rows (input A, A again, pruned B in rotating windows, 2 threads), `--repeats` times.

Usage: python bench/prune_obs.py [--models bert-encoder,minilm-l3-paraphrase] [--repeats 2]
Writes bench/results/prune_obs.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import prune_transformer as pt  # noqa: E402
from benchutil import commit_id, write_results  # noqa: E402
from slice_hidden import _per_output  # noqa: E402
from target_cpu import time_against_input  # noqa: E402

from nnopt_graph import optimize  # noqa: E402

GUARD = "cosine>=0.95"
ALLOCATIONS = {
    "search": "prune-channels{ratio=0.25 search=true protect-last=false importance=%s}",
    "uniform": (
        "prune-channels{ratio=0.25 max-layer-ratio=1 protect-first=false protect-last=false "
        "importance=%s}"
    ),
}
KINDS = ("activation", "fluctuation", "obs")


def _row(name: str, allocation: str, kind: str, base: Path, cal: Path, held: Path, tmp: Path):
    pipeline = ALLOCATIONS[allocation] % kind
    out = tmp / f"{name}.{allocation}.{kind}.onnx"
    start = time.perf_counter()
    result = optimize(str(base), out, pipeline, calib=str(cal), guard=GUARD, check=False)
    seconds = time.perf_counter() - start
    record = result.records[-1].to_json()
    a, b = pt._session(base), pt._session(out)
    return out, {
        "model": name,
        "allocation": allocation,
        "importance": kind,
        "pipeline": pipeline,
        "guard_action": record.get("guard_action"),
        "weights": round(pt._weights(out, True) / pt._weights(base, True), 4),
        "cosine_min_per_output": _per_output(a, b, pt._feeds(held, a)),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    """Prune every encoder with every importance, measure, time the search rows."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="bert-encoder,minilm-l3-paraphrase")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    commit = commit_id()
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name in args.models.split(","):
            base, cal, held, feed = pt.baseline(name, tmp)
            for allocation in ALLOCATIONS:
                for kind in KINDS:
                    out, row = _row(name, allocation, kind, base, cal, held, tmp)
                    if allocation == "search":
                        row["timings"] = [
                            time_against_input(base, out, feed) for _ in range(args.repeats)
                        ]
                    rows.append(row)
                    print(json.dumps({k: v for k, v in row.items() if k != "timings"}), flush=True)
    _write(commit, rows, args.repeats)


def _write(commit: str, rows: list[dict], repeats: int) -> None:
    lines = [
        "# Unit importance for encoder pruning (bench/prune_obs.py)",
        "",
        f"Commit {commit}; x86_64, 2 cores, shared; onnxruntime CPU EP. Every row: ratio "
        f"0.25 under `{GUARD}`, one run. Weights: MatMul/Gemm params after / before. "
        "Cosine: the worst held-out sample of each float output (held-out data the "
        "calibration and the guard never saw). Seconds: the whole pass, guard included. "
        f"Latency (search rows): {repeats} windowed runs of input A, A again and pruned B "
        "(2 threads, rotating windows of about 50 ms of A), medians of per-window B/A.",
        "",
        "| model | allocation | importance | guard | weights | worst cosine per output "
        "| seconds | latency B/A | A'/A |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cos = ", ".join(f"{k}: {v:.4f}" for k, v in r["cosine_min_per_output"].items())
        timings = r.get("timings", [])
        lat = " / ".join(f"{t['latency']['median']:.3f}" for t in timings) or "-"
        band = " / ".join(f"{t['a_vs_a']['median']:.3f}" for t in timings) or "-"
        lines.append(
            f"| {r['model']} | {r['allocation']} | {r['importance']} | {r['guard_action']} "
            f"| {r['weights']:.3f} | {cos} | {r['seconds']} | {lat} | {band} |"
        )
    lines += ["", "Pipelines: " + "; ".join(f"{k}: `{v}`" for k, v in ALLOCATIONS.items())]
    write_results("prune_obs", {"commit": commit, "guard": GUARD, "rows": rows}, lines)


if __name__ == "__main__":
    main()

"""Pruned encoders' latency under the windowed protocol with the A-vs-A band.

prune_transformer.py times A/B in alternating rounds, whose per-round ratios on a 0.2 ms
model spread 0.08-9x. Here each encoder is pruned as in its search row
(`prune-channels{ratio=0.25 search=true protect-last=false}`, guard `cosine>=0.95`) and
timed as bench/target_cpu.py times its rows (time_against_input: input A, A again, pruned
B, rotating windows of about 50 ms of A, 2 threads, spinning off, >= 30 windows), three
times in a row.

Usage: python bench/prune_transformer_windowed.py [--models bert-encoder,minilm-l3-paraphrase]
    [--pipeline TEXT] [--name NAME]
Writes bench/results/NAME.{json,md} (default prune_transformer_windowed).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import prune_transformer as pt  # noqa: E402
from benchutil import commit_id  # noqa: E402
from target_cpu import time_against_input  # noqa: E402

from nnopt_graph import optimize  # noqa: E402

PIPELINE = "prune-channels{ratio=0.25 search=true protect-last=false}"
GUARD = "cosine>=0.95"


def main() -> None:
    """Prune, time three times per model, write the tables."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="bert-encoder,minilm-l3-paraphrase")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pipeline", default=PIPELINE)
    parser.add_argument("--name", default="prune_transformer_windowed", help="results file name")
    args = parser.parse_args()
    commit = commit_id()
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name in args.models.split(","):
            base, cal, held, feed = pt.baseline(name, tmp)
            out = tmp / f"{name}.pruned.onnx"
            optimize(str(base), out, args.pipeline, calib=str(cal), guard=GUARD, check=False)
            encoder = name in pt.ENCODERS
            weights = pt._weights(out, encoder) / pt._weights(base, encoder)
            for repeat in range(args.repeats):
                timed = time_against_input(base, out, feed)
                row = {"model": name, "repeat": repeat, "weights": round(weights, 4), **timed}
                row["commit"] = commit
                rows.append(row)
                print(json.dumps(row), flush=True)
    res = ROOT / "bench/results"
    (res / f"{args.name}.json").write_text(
        json.dumps(
            {"commit": commit, "pipeline": args.pipeline, "guard": GUARD, "rows": rows}, indent=2
        )
        + "\n"
    )
    lines = [
        "# Pruned encoders, windowed latency (bench/prune_transformer_windowed.py)",
        "",
        f"Commit {commit}; x86_64, 2 cores, shared; onnxruntime CPU EP, 2 threads, spinning "
        f"off. `{args.pipeline}` under `{GUARD}`, then input A, A again (A'/A: the noise band) "
        "and pruned B in rotating windows of about 50 ms of A (>= 30 windows, a model's "
        "window time its fastest run there); min / median / max of per-window B/A and the "
        "median's 95% CI. Weights: weight params after / before (MatMul/Gemm on encoders, "
        "also Conv on CNNs).",
        "",
        "| model | repeat | weights | B/A min / median / max | median 95% CI | A'/A median | "
        "windows | A ms | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lt = r["latency"]
        lines.append(
            f"| {r['model']} | {r['repeat']} | {r['weights']:.3f} | {lt['min']:.2f} / "
            f"**{lt['median']:.3f}** / {lt['max']:.2f} | [{lt['ci95_low']:.3f}, "
            f"{lt['ci95_high']:.3f}] | {r['a_vs_a']['median']:.3f} | {r['windows']} | "
            f"{r['p50_ms_in']:.3f} | {r['load_1min'][0]} → {r['load_1min'][1]} |"
        )
    (res / f"{args.name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

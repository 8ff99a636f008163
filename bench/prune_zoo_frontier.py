"""Fidelity against latency of the zoo bert-encoder's allocations at 0.75 of its weights.

#13 asks the zoo bert-encoder, pruned at 0.25 under `--guard cosine>=0.95`, for MatMul
weights <= 0.75 and latency <= 0.85. The search allocation (FFN neurons only) reaches
the weights at 0.88-0.90. This script maps what else the same weight budget can buy:
each row is one allocation (the pass's own, or per-group ratios set with
`group-ratios`), pruned once without a guard so its exact allocation is kept, then
measured on the 16 held-out samples (worst and median cosine, all outputs) and timed
against the unpruned model (bench/target_cpu.time_against_input: input A, A again,
pruned B, rotating windows, 2 threads) `--repeats` times. The same pipeline is also run
under `cosine>=0.95` to show the guard's verdict on its own held-out calibration slice.
Two rows below the budget (weights 0.43 and 0.15) show where width pruning's latency
ends up when fidelity is ignored. The `obs:` rows score units by structured OBS
(`importance=obs`); their hand allocations are the best of a grid over heads (0-2 per
layer) and FFN neurons (0-160 per layer, steps of 32) by held-out cosine.

Usage: python bench/prune_zoo_frontier.py [--repeats 3]
Writes bench/results/prune_zoo_frontier.{json,md}.
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
from benchutil import commit_id, guard_verdict, write_results  # noqa: E402
from target_cpu import time_against_input  # noqa: E402

from nnopt_graph import optimize  # noqa: E402
from nnopt_graph.check.compare import compare_models  # noqa: E402
from nnopt_graph.core.io import load  # noqa: E402
from nnopt_graph.runtime.data import input_specs, load_dataset  # noqa: E402

FREE_OBS = "max-layer-ratio=1 protect-first=false protect-last=false importance=obs"
FREE = "max-layer-ratio=1 protect-first=false protect-last=false importance=activation"
CANDIDATES = {
    "search (params budget; the #13 row)": (
        "prune-channels{ratio=0.25 search=true protect-last=false importance=activation}"
    ),
    "search, budget=units": (
        "prune-channels{ratio=0.25 search=true budget=units protect-last=false importance=activation}"
    ),
    "uniform 0.25 (1 head + 64 neurons per layer)": f"prune-channels{{ratio=0.25 {FREE}}}",
    "FFN only (96 neurons per layer)": (
        f'prune-channels{{group-ratios="*.ffn.*=0.375,*.attn.*=0" {FREE}}}'
    ),
    "heads first (2 heads + 32 neurons per layer)": (
        f'prune-channels{{group-ratios="*.attn.*=0.5,*.ffn.*=0.125" {FREE}}}'
    ),
    "2 heads in layer 1, 1 in layer 0": (
        'prune-channels{group-ratios="*layer.0.attn*=0.25,*layer.1.attn*=0.5,'
        f'*layer.0.ffn*=0.25,*layer.1.ffn*=0.125" {FREE}}}'
    ),
    "2 heads in layer 0, 1 in layer 1": (
        'prune-channels{group-ratios="*layer.0.attn*=0.5,*layer.1.attn*=0.25,'
        f'*layer.0.ffn*=0.125,*layer.1.ffn*=0.25" {FREE}}}'
    ),
    "obs: search (params budget)": (
        "prune-channels{ratio=0.25 search=true protect-last=false importance=obs}"
    ),
    "obs: search, budget=units": (
        "prune-channels{ratio=0.25 search=true budget=units protect-last=false importance=obs}"
    ),
    "obs: uniform 0.25": f"prune-channels{{ratio=0.25 {FREE_OBS}}}",
    "obs: 1 head per layer, 32 + 96 neurons": (
        'prune-channels{group-ratios="*.attn.*=0.25,*layer.0.ffn*=0.125,*layer.1.ffn*=0.375" '
        f"{FREE_OBS}}}"
    ),
    "obs: 2 heads in layer 1, 64 + 96 neurons (weights 0.708)": (
        'prune-channels{group-ratios="*layer.0.attn*=0,*layer.1.attn*=0.5,*layer.0.ffn*=0.25,'
        f'*layer.1.ffn*=0.375" {FREE_OBS}}}'
    ),
    "below the budget: uniform 0.6": f"prune-channels{{ratio=0.6 {FREE}}}",
    "below the budget: uniform 0.9 (width floor)": f"prune-channels{{ratio=0.9 {FREE}}}",
}
GUARD = "cosine>=0.95"


def prune_and_measure(base: Path, cal: Path, held: Path, pipeline: str, out: Path) -> tuple:
    """Prune once without a guard (the exact allocation) and compare on held-out data.

    Returns the row's common fields (pipeline, weights, worst cosine, samples) and the
    comparison itself.
    """
    optimize(str(base), out, pipeline, calib=str(cal), guard="cosine>=-1", check=False)
    return measure(base, held, pipeline, out)


def measure(base: Path, held: Path, pipeline: str, out: Path) -> tuple:
    """``prune_and_measure``'s row and comparison for a model ``out`` already written."""
    fid = compare_models(base, out, load_dataset(held, input_specs(load(base))))
    row = {
        "pipeline": pipeline,
        "weights": round(pt._weights(out, True) / pt._weights(base, True), 4),
        "cos_min": round(fid.metric("cosine"), 4),
        "samples": fid.samples,
    }
    return row, fid


def guard_action(base: Path, cal: Path, pipeline: str, tmp: Path) -> str:
    """What the guard does with ``pipeline`` (its verdict on its own calibration slice)."""
    result = optimize(
        str(base), tmp / "guarded.onnx", pipeline, calib=str(cal), guard=GUARD, check=False
    )
    return str(guard_verdict(result))


def main() -> None:
    """Prune each candidate, measure and time it, write the tables."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    commit = commit_id()
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        base, cal, held, feed = pt.baseline("bert-encoder", tmp)
        for index, (label, pipeline) in enumerate(CANDIDATES.items()):
            out = tmp / f"candidate{index}.onnx"
            measured, fid = prune_and_measure(base, cal, held, pipeline, out)
            row = {
                "candidate": label,
                **measured,
                "cos_median": round(fid.metric("cosine", "median"), 4),
                "guard_action": guard_action(base, cal, pipeline, tmp),
                "timings": [time_against_input(base, out, feed) for _ in range(args.repeats)],
                "commit": commit,
            }
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "timings"}), flush=True)
    lines = [
        "# Zoo bert-encoder: fidelity against latency per allocation (bench/prune_zoo_frontier.py)",
        "",
        f"Commit {commit}; x86_64, 2 cores, shared; onnxruntime CPU EP, 2 threads, spinning "
        "off. Each candidate pruned once without a guard (its exact allocation), measured on "
        "the 16 held-out samples (cosine over all outputs), and timed against the unpruned "
        f"model {args.repeats} times (input A, A again, pruned B in rotating windows of about "
        "50 ms of A; per run the median of per-window B/A). Guard: the verdict of the same "
        f"pipeline under `{GUARD}` on its own held-out calibration slice. Weights: MatMul "
        "weight params after / before.",
        "",
        "| candidate | weights | held-out cos min / median | guard `cosine>=0.95` | "
        "latency B/A medians | A'/A medians |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lat = " / ".join(f"{t['latency']['median']:.3f}" for t in r["timings"])
        band = " / ".join(f"{t['a_vs_a']['median']:.3f}" for t in r["timings"])
        lines.append(
            f"| {r['candidate']} | {r['weights']:.3f} | {r['cos_min']:.4f} / "
            f"{r['cos_median']:.4f} | {r['guard_action']} | {lat} | {band} |"
        )
    lines += ["", "Pipelines:", ""]
    lines += [f"- {r['candidate']}: `{r['pipeline']}`" for r in rows]
    write_results("prune_zoo_frontier", {"commit": commit, "guard": GUARD, "rows": rows}, lines)


if __name__ == "__main__":
    main()

"""Zoo bert-encoder: what each pruned structure costs and keeps, timed in fresh processes.

The windowed protocol's ratio for one pruned zoo bert moves 0.82-0.87 from one process
to the next (prune_zoo_heldout.md), so one process's figure cannot say whether a
structure meets the 0.85 latency goal. Here each structure (heads + FFN neurons kept per
layer) is pruned once as the pass prunes it for real (obs importance, 256 calibration
samples used whole, refit-heads on), its fidelity measured on 64 held-out samples, and
its latency against the unpruned model timed in PROCESSES fresh processes, one
structure after another in each round so that load drift spreads over all of them.
Each process runs bench/target_cpu.py's windowed comparison (input A, A again, pruned B;
2 threads, spinning off) and reports the median of per-window B/A. The #13 row's pruned
model also runs once more rewritten by merge-parallel-matmuls (lossless; the strict check
on, its fidelity measured again and its largest difference from the pruned model's
outputs recorded): what a CPU pipeline `prune-channels{...},merge-parallel-matmuls` gives.

Usage: python bench/prune_zoo_structures.py [--processes N]
Writes bench/results/prune_zoo_structures.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import prune_transformer as pt  # noqa: E402
from benchutil import commit_id, write_results  # noqa: E402
from prune_zoo_frontier import guard_action, measure, prune_and_measure  # noqa: E402
from prune_zoo_heldout import HELD_SAMPLES, _widths  # noqa: E402

from models import calib  # noqa: E402
from nnopt_graph.check.compare import compare_models  # noqa: E402
from nnopt_graph.core.io import load  # noqa: E402
from nnopt_graph.job import optimize  # noqa: E402
from nnopt_graph.runtime.data import input_specs, load_dataset  # noqa: E402

_COMMON = "max-layer-ratio=1 protect-first=false protect-last=false importance=obs"
_CALIB = 256
_ROW13 = "search, budget=units (the #13 row)"
# The #13 row's pruned model rewritten by a lossless pass (verified bit-identical), timed
# beside it: what `prune-channels{...},merge-parallel-matmuls` gives on CPU.
_MERGE = "merge-parallel-matmuls"
# label -> prune-channels options (all at 256 calibration samples, refit-heads on).
STRUCTURES = {
    "FFN only: 96 neurons per layer": 'group-ratios="*.attn.*=0,*.ffn.*=0.375"',
    _ROW13: "ratio=0.25 search=true budget=units protect-last=false importance=obs",
    "1 head + 64 neurons per layer": 'group-ratios="*.attn.*=0.25,*.ffn.*=0.25"',
    "2 heads in layer 1; 96 + 32 neurons": (
        'group-ratios="*layer.0.attn*=0,*layer.1.attn*=0.5,*layer.0.ffn*=0.375,*layer.1.ffn*=0.125"'
    ),
    "1 head + 80 neurons per layer": 'group-ratios="*.attn.*=0.25,*.ffn.*=0.3125"',
    "1 head + 96 neurons per layer": 'group-ratios="*.attn.*=0.25,*.ffn.*=0.375"',
}


def _pipeline(options: str) -> str:
    extra = "" if "search=true" in options else f" {_COMMON}"
    return f"prune-channels{{{options}{extra} calib-samples={_CALIB}}}"


def _time_in_child(base: Path, out: Path, held: Path) -> float:
    """The windowed B/A median of one fresh process."""
    done = subprocess.run(
        [sys.executable, __file__, "--time", str(base), str(out), str(held)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    return float(json.loads(done.stdout.strip().splitlines()[-1])["median"])


def _child(base: Path, out: Path, held: Path) -> None:
    from target_cpu import time_against_input

    feed = next(load_dataset(held, input_specs(load(base))).batches(1))
    print(json.dumps(time_against_input(base, out, feed)["latency"]))


def _merged_row(pruned_row: dict, base: Path, pruned: Path, held: Path, out: Path) -> dict:
    """The pruned model rewritten by the merge (the strict check on), measured again.

    ``max_abs_vs_pruned``: the largest difference from the pruned model's outputs over the
    held-out samples (0 when the merge is bit-identical there).
    """
    optimize(str(pruned), out, _MERGE, check=True)
    pipeline = f"{pruned_row['pipeline']},{_MERGE}"
    measured, _ = measure(base, held, pipeline, out)
    against_pruned = compare_models(pruned, out, load_dataset(held, input_specs(load(pruned))))
    return {
        **pruned_row,
        **measured,
        "structure": f"the #13 row, then {_MERGE} (lossless)",
        "max_abs_vs_pruned": against_pruned.metric("max_abs"),
        "latency": [],
    }


def main() -> None:
    """Prune every structure, time them round by round, write the tables."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--processes", type=int, default=6)
    parser.add_argument("--time", nargs=3, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.time:
        _child(*args.time)
        return
    commit = commit_id()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        base, _, timing_held, _ = pt.baseline("bert-encoder", tmp)
        cal = calib.write_calib_npz("bert-encoder", tmp / "cal.npz", samples=_CALIB, seed=0)
        held = calib.write_calib_npz(
            "bert-encoder", tmp / "held.npz", samples=HELD_SAMPLES, seed=10_000
        )
        rows, outs = [], []
        for index, (label, options) in enumerate(STRUCTURES.items()):
            out = tmp / f"structure{index}.onnx"
            measured, _ = prune_and_measure(base, cal, held, _pipeline(options), out)
            rows.append(
                {
                    "structure": label,
                    **measured,
                    "heads_neurons": _widths(out),
                    "guard_action": guard_action(base, cal, _pipeline(options), tmp),
                    "latency": [],
                    "commit": commit,
                }
            )
            outs.append(out)
            print(json.dumps(rows[-1]), flush=True)
            if label == _ROW13:
                rows.append(_merged_row(rows[-1], base, out, held, tmp / "merged.onnx"))
                outs.append(tmp / "merged.onnx")
                print(json.dumps(rows[-1]), flush=True)
        for _ in range(args.processes):
            for row, out in zip(rows, outs, strict=True):
                row["latency"].append(round(_time_in_child(base, out, timing_held), 4))
        for row in rows:
            print(json.dumps(row), flush=True)
    lines = [
        "# Zoo bert-encoder: pruned structures, fidelity and latency in fresh processes "
        "(bench/prune_zoo_structures.py)",
        "",
        f"Commit {commit}; x86_64, 2 cores, shared; onnxruntime CPU EP, 2 threads, spinning "
        f"off. Each structure pruned once by `prune-channels` with obs importance, "
        f"{_CALIB} calibration samples used whole and refit-heads on; cosine: worst of "
        f"{HELD_SAMPLES} held-out samples (seed 10000) over all outputs; guard: the verdict of "
        "the same pipeline under `cosine>=0.95`. Latency: "
        f"{args.processes} fresh processes per structure, the structures in turn in each "
        "round; per process the median of per-window B/A (input A, A again, pruned B). "
        "Weights: MatMul weight params after / before.",
        "",
        "| structure | heads + neurons kept | weights | held-out cos min | guard | "
        "latency B/A: median of processes | process min / max |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lat = r["latency"]
        lines.append(
            f"| {r['structure']} | {r['heads_neurons']} | {r['weights']:.3f} | "
            f"{r['cos_min']:.4f} | {r['guard_action']} | **{statistics.median(lat):.3f}** | "
            f"{min(lat):.3f} / {max(lat):.3f} |"
        )
    for r in rows:
        if "max_abs_vs_pruned" in r:
            lines += [
                "",
                f"{r['structure']}, against the pruned model it was made from: largest "
                f"output difference {r['max_abs_vs_pruned']:.3g} over the {r['samples']} "
                "held-out samples.",
            ]
    write_results("prune_zoo_structures", {"commit": commit, "rows": rows}, lines)


if __name__ == "__main__":
    main()

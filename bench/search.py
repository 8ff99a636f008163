"""Search vs the target preset and vs a full grid of the default space (--target cpu).

For each model: evaluate the full grid of the default cpu space (16 candidates) into a
cache, then run the seeded search with a small trial budget against that cache (the same
evaluations, so the search's order is what is measured), and time the search's best
against the cpu preset interleaved in one process (median of per-round ratios).

Run: python bench/search.py [--trials 4] [--models digits,rapidocr-cls]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nnopt_graph.runtime.data import input_specs, load_dataset  # noqa: E402
from nnopt_graph.runtime.quant_bench import compare_latency  # noqa: E402
from nnopt_graph.search.run import run_search  # noqa: E402
from nnopt_graph.search.space import default_space  # noqa: E402

GUARD = "cosine.min>=0.99"


def _inputs(name: str, work: Path) -> tuple[Path, Path, Path | None]:
    if name == "digits":
        d = ROOT / "models" / "digits"
        return d / "digits_cnn.onnx", d / "digits_calib.npz", d / "digits_heldout.npz"
    from models import calib, fetch

    model = fetch.fetch(name)
    cal = calib.write_calib_npz(name, work / f"{name}_calib.npz", samples=8, seed=0)
    held = calib.write_calib_npz(name, work / f"{name}_eval.npz", samples=4, seed=100)
    return model, cal, held


def _bench(name: str, trials: int, work: Path) -> dict:
    model, cal, held = _inputs(name, work)
    space = default_space("cpu")
    grid_dir = work / name / "grid"
    t0 = time.perf_counter()
    grid = run_search(
        model,
        grid_dir,
        target="cpu",
        calib=cal,
        eval_data=held,
        guard=GUARD,
        trials=space.size,
        workers=1,
    )[0]
    grid_seconds = time.perf_counter() - t0
    search_dir = work / name / "search"
    shutil.copytree(grid_dir, search_dir)
    search = run_search(
        model,
        search_dir,
        target="cpu",
        calib=cal,
        eval_data=held,
        guard=GUARD,
        trials=trials,
        workers=1,
    )[0]
    feasible = lambda r: r.get("status") == "ok" and r.get("guard_passed")  # noqa: E731
    grid_best = min(r["latency_ratio"]["median"] for r in grid.records if feasible(r))
    reached = None
    best_so_far = float("inf")
    for k, r in enumerate(search.records, 1):
        if feasible(r):
            best_so_far = min(best_so_far, r["latency_ratio"]["median"])
        if reached is None and best_so_far <= grid_best * 1.05:
            reached = k
    preset = next(r for r in grid.records if r["pipeline"] == "default,quantize-int8")
    best = search.best
    assert best is not None
    from nnopt_graph.core import io

    feed = next(load_dataset(held or cal, input_specs(io.load(model))).batches(1))
    direct = compare_latency(
        [preset["model"], best["model"]], feed, runs=20, warmup=3, threads=2, min_seconds=1.0
    )
    return {
        "model": name,
        "grid_candidates": len(grid.records),
        "grid_feasible": sum(1 for r in grid.records if feasible(r)),
        "grid_seconds": round(grid_seconds, 1),
        "grid_best_ratio_vs_input": grid_best,
        "search_trials": trials,
        "search_best_pipeline": best["pipeline"],
        "search_best_ratio_vs_input": best["latency_ratio"]["median"],
        "preset_guard_passed": preset.get("guard_passed"),
        "preset_ratio_vs_input": preset["latency_ratio"]["median"],
        "best_vs_preset_interleaved": direct.ratio[1],
        "best_vs_preset_runs": direct.runs,
        "trials_to_within_5pct_of_grid_best": reached,
        "search_order": [r["pipeline"] for r in search.records],
    }


def main() -> None:
    """Run the benchmark and write bench/results/search.{json,md}."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--models", default="digits,rapidocr-cls")
    args = parser.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            results.append(_bench(name, args.trials, Path(tmp)))
            print(json.dumps(results[-1], indent=1))
    out = {
        "commit": commit,
        "machine": f"{platform.machine()}, 2 cores, shared",
        "guard": GUARD,
        "target": "cpu",
        "results": results,
    }
    res = ROOT / "bench" / "results"
    (res / "search.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        f"# search vs preset vs full grid (--target cpu, guard {GUARD})",
        "",
        f"Commit {commit}, {out['machine']}. Grid = all 16 candidates of the default cpu space; "
        f"search = {args.trials} seeded trials (TPE, warm-started with the preset and the lossless "
        "default) over the same evaluations. Latency ratios: interleaved, median of per-round "
        "ratios (>= 20 rounds, >= 1 s, 2 threads); best vs preset: min / median / max.",
        "",
        "| model | grid feasible | grid best (x input) | search best (x input) | best vs preset (min/med/max) | trials to 5% of grid best | best pipeline |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        d = r["best_vs_preset_interleaved"]
        reached = r["trials_to_within_5pct_of_grid_best"] or f"not in {r['search_trials']}"
        lines.append(
            f"| {r['model']} | {r['grid_feasible']}/{r['grid_candidates']} | "
            f"{r['grid_best_ratio_vs_input']:.3f} | {r['search_best_ratio_vs_input']:.3f} | "
            f"{d['min']:.3f} / {d['median']:.3f} / {d['max']:.3f} | "
            f"{reached} | "
            f"`{r['search_best_pipeline']}` |"
        )
    (res / "search.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

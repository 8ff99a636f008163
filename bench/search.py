"""Search vs the target preset and vs a full grid (--target cpu); Ray local mode vs local.

Part 1, for each model: evaluate the full grid of the default cpu space (16 candidates)
into a cache, then run the seeded search with the same trial budget on every model
against that cache (the same evaluations, so what is measured is the order in which the
search asks), and time the search's best against the cpu preset interleaved in one
process, with an A-vs-A pair (the preset against itself) for the noise band.

Part 2 (``--ray``): the same search on digits from scratch, local pool vs Ray local mode
(``ray.init(num_cpus=2)``), 1 and 2 workers: wall time, candidates, guard outcomes,
sizes and model bytes compared.

Run: python bench/search.py [--trials 8] [--models digits,rapidocr-cls,...] [--ray]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
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
from nnopt_graph.search.space import SearchSpace, default_space  # noqa: E402

GUARD = "cosine.min>=0.99"
PRESET = "default,quantize-int8"
CALIB_SAMPLES = 8
EVAL_SAMPLES = 8
# The bigger models: 4 calibration and 4 held-out samples, and the space without 2:4
# (SparseGPT on them is the costliest stage): 8 candidates.
SMALL = ("nudenet-320n", "rapidocr-rec", "rapidocr-det")
SMALL_SAMPLES = 4
BUDGET = 6
# Best vs preset: >= 30 windows of >= 50 ms, >= 3 s of the preset, 2 threads.
DIRECT = {"runs": 30, "warmup": 5, "threads": 2, "min_seconds": 3.0, "window_seconds": 0.05}


def _log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)  # noqa: T201


def _samples(name: str) -> int:
    return SMALL_SAMPLES if name in SMALL else CALIB_SAMPLES


def _inputs(name: str, work: Path) -> tuple[Path, Path, Path]:
    if name == "digits":
        d = ROOT / "models" / "digits"
        return d / "digits_cnn.onnx", d / "digits_calib.npz", d / "digits_heldout.npz"
    from models import calib, fetch

    model = fetch.fetch(name)
    cal, held = work / f"{name}_calib.npz", work / f"{name}_eval.npz"
    # Reused when present: the cache is keyed by the data's bytes.
    if not cal.exists():
        calib.write_calib_npz(name, cal, samples=_samples(name), seed=0)
    if not held.exists():
        calib.write_calib_npz(name, held, samples=_samples(name), seed=100)
    return model, cal, held


def _space_for(name: str, work: Path) -> tuple[SearchSpace, Path | None]:
    """The default cpu space; for the bigger models the same without the 2:4 stage."""
    space = default_space("cpu")
    if name not in SMALL:
        return space, None
    stages = tuple(st for st in space.stages if st[0] != "sparsify")
    presets = tuple(tuple(c for c in p if c[0] != "sparsify") for p in space.presets)
    small = SearchSpace(space.base, stages, presets)
    path = work / "space-no-sparsify.json"
    path.write_text(json.dumps(small.to_json(), indent=1))
    return small, path


def _feasible(r: dict) -> bool:
    return r.get("status") == "ok" and bool(r.get("guard_passed"))


def _first_within(records: list[dict], target: float) -> int | None:
    """1-based index of the first feasible record at most ``target``, or None."""
    for k, r in enumerate(records, 1):
        if _feasible(r) and r["latency_ratio"]["median"] <= target:
            return k
    return None


def _random_order_expectation(n: int, good: int) -> float:
    """Expected draws (without replacement) until the first of ``good`` among ``n``."""
    return (n + 1) / (good + 1)


def _cos(r: dict) -> float | None:
    return (r.get("worst") or {}).get("cosine")


def _bench(name: str, trials: int, work: Path) -> dict:
    model, cal, held = _inputs(name, work)
    space, space_file = _space_for(name, work)
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
        space=space_file,
        workers=1,
    )[0]
    grid_seconds = time.perf_counter() - t0
    _log(f"{name}: grid of {len(grid.records)} in {grid_seconds:.0f} s")
    search_dir = work / name / "search"
    if search_dir.exists():
        shutil.rmtree(search_dir)
    shutil.copytree(grid_dir, search_dir)
    # Every trial, against the grid's cache: the order in which the search asks.
    search = run_search(
        model,
        search_dir,
        target="cpu",
        calib=cal,
        eval_data=held,
        guard=GUARD,
        trials=space.size,
        space=space_file,
        workers=1,
    )[0]
    assert search.evaluated == 0, "the search must only read the grid's cache"
    in_budget = [r for r in search.records[:trials] if _feasible(r)]
    best = min(in_budget, key=lambda r: r["latency_ratio"]["median"])
    feasible = [r for r in grid.records if _feasible(r)]
    grid_best = min(r["latency_ratio"]["median"] for r in feasible)
    within = [r for r in feasible if r["latency_ratio"]["median"] <= grid_best * 1.05]
    by_text = {r["pipeline"]: r for r in grid.records}
    preset = by_text[PRESET]
    from nnopt_graph.core import io

    feed = next(load_dataset(held, input_specs(io.load(model))).batches(1))
    # Preset, preset again (A-vs-A: the noise band), search best; rotating order.
    # The input last: the preset's ratio re-timed, against the search's own figure.
    direct = compare_latency(
        [preset["model"], preset["model"], best["model"], str(model)], feed, **DIRECT
    )
    return {
        "model": name,
        "calib_samples": _samples(name) if name != "digits" else "digits_calib.npz",
        "eval_samples": _samples(name) if name != "digits" else "digits_heldout.npz (360)",
        "space": "default cpu" if space_file is None else "default cpu without sparsify",
        "grid_candidates": len(grid.records),
        "grid_feasible": len(feasible),
        "grid_seconds": round(grid_seconds, 1),
        "grid_best_pipeline": min(feasible, key=lambda r: r["latency_ratio"]["median"])["pipeline"],
        "grid_best_ratio_vs_input": grid_best,
        "grid_within_5pct": len(within),
        "grid_order_trials_to_5pct": _first_within(
            [by_text[space.pipeline(c)] for c in space.candidates()], grid_best * 1.05
        ),
        "random_order_expected_trials_to_5pct": round(
            _random_order_expectation(len(grid.records), len(within)), 2
        ),
        "search_trials": trials,
        "search_best_pipeline": best["pipeline"],
        "search_best_ratio_vs_input": best["latency_ratio"]["median"],
        "search_best_worst_cosine": _cos(best),
        "search_best_size": best["size"],
        "preset_guard_passed": preset.get("guard_passed"),
        "preset_outcomes": preset.get("outcomes"),
        "preset_worst_cosine": _cos(preset),
        "preset_ratio_vs_input": preset["latency_ratio"]["median"],
        "preset_size": preset["size"],
        "input_size": os.path.getsize(model),
        "trials_to_within_5pct_of_grid_best": _first_within(search.records, grid_best * 1.05),
        "best_vs_preset": direct.ratio[2],
        "a_vs_a": direct.ratio[1],
        "input_vs_preset": direct.ratio[3],
        "direct_rounds": direct.runs,
        "direct_p50_ms": [round(t, 4) for t in direct.p50_ms],
        "search_order": [r["pipeline"] for r in search.records],
        "grid": [
            {
                "pipeline": r["pipeline"],
                "status": r.get("status"),
                "guard_passed": r.get("guard_passed"),
                "outcomes": r.get("outcomes"),
                "latency_ratio": r.get("latency_ratio"),
                "worst_cosine": _cos(r),
                "size": r.get("size"),
                "seconds": round(r.get("seconds", 0.0), 1),
            }
            for r in grid.records
        ],
    }


def _sha(path: str | None) -> str | None:
    return None if path is None else hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _ray_bench(trials: int, work: Path) -> dict:
    """The same digits search, fresh each time: local pool vs Ray local mode, 1 and 2 workers."""
    import ray

    model, cal, held = _inputs("digits", work)
    kwargs = {"target": "cpu", "calib": cal, "eval_data": held, "guard": GUARD, "trials": trials}
    runs: dict[str, dict] = {}

    def one(label: str, workers: int, use_ray: bool) -> None:
        if (work / "ray" / label).exists():
            shutil.rmtree(work / "ray" / label)
        t0 = time.perf_counter()
        r = run_search(
            model, work / "ray" / label, workers=workers, ray="auto" if use_ray else None, **kwargs
        )[0]
        seconds = time.perf_counter() - t0
        _log(f"ray bench {label}: {seconds:.0f} s, {r.evaluated} evaluated")
        runs[label] = {
            "seconds": round(seconds, 1),
            "evaluated": r.evaluated,
            "records": {
                x["pipeline"]: {
                    "status": x.get("status"),
                    "guard_passed": x.get("guard_passed"),
                    "size": x.get("size"),
                    "worst_cosine": _cos(x),
                    "sha256": _sha(x.get("model")),
                    "pid": x.get("worker_pid"),
                }
                for x in r.records
            },
            "front": [x["pipeline"] for x in r.front],
            "best": r.best["pipeline"] if r.best else None,
        }

    one("local-1", 1, False)
    one("local-2", 2, False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        one("ray-1", 1, True)
        one("ray-2", 2, True)
    finally:
        ray.shutdown()

    def same(a: str, b: str) -> dict:
        ra, rb = runs[a]["records"], runs[b]["records"]
        common = sorted(set(ra) & set(rb))
        keys = ("status", "guard_passed", "size", "worst_cosine", "sha256")
        return {
            "candidates_a": len(ra),
            "candidates_b": len(rb),
            "common": len(common),
            "identical_records": sum(all(ra[c][k] == rb[c][k] for k in keys) for c in common),
            "identical_bytes": sum(ra[c]["sha256"] == rb[c]["sha256"] for c in common),
            "same_front_set": sorted(runs[a]["front"]) == sorted(runs[b]["front"]),
            "front_a": runs[a]["front"],
            "front_b": runs[b]["front"],
        }

    return {
        "model": "digits",
        "trials": trials,
        "ray_version": ray.__version__,
        "runs": runs,
        "ray1_vs_local1": same("local-1", "ray-1"),
        "ray2_vs_local2": same("local-2", "ray-2"),
        "ray2_vs_ray1_wall": round(runs["ray-2"]["seconds"] / runs["ray-1"]["seconds"], 3),
        "local2_vs_local1_wall": round(runs["local-2"]["seconds"] / runs["local-1"]["seconds"], 3),
    }


def _fidelity_size_front(records: dict, names: set[str]) -> list[str]:
    """The front of the named feasible records on (1 - worst cosine, size) alone."""
    from nnopt_graph.search.run import pareto_front

    ok = sorted(
        n
        for n in names
        if records[n]["status"] == "ok"
        and records[n]["guard_passed"]
        and records[n]["worst_cosine"] is not None
    )
    points = [(1.0 - records[n]["worst_cosine"], float(records[n]["size"])) for n in ok]
    return [ok[i] for i in pareto_front(points)]


def _fmt(d: dict) -> str:
    return f"{d['min']:.3f} / **{d['median']:.3f}** / {d['max']:.3f}"


def _markdown(out: dict) -> list[str]:
    lines = [
        f"# search vs preset vs full grid (--target cpu, guard {out['guard']})",
        "",
        f"Commit {out['commit']}, {out['machine']} (load average at the start: "
        f"{out['load_start']}, at the end: {out['load_end']}; other jobs ran throughout). "
        "One run of this script per part (`python bench/search.py --models ... --part ...`, "
        "then `--merge`), each model once.",
        "",
        "Grid = every candidate of the space, each built, verified, guarded and timed once "
        "(1 worker): the default cpu space (16: `default` x prune-channels ratio "
        "0/0.1/0.25/0.4 x sparsify 2:4 off/on x quantize-int8 off/on) for digits and "
        "rapidocr-cls; for nudenet-320n and rapidocr-rec, to fit the machine, the same "
        "without the 2:4 stage (8 candidates) and 4 calibration + 4 held-out samples instead "
        "of 8 + 8 (real models: models.calib's generated inputs; digits: its calibration split "
        "and its 360 held-out images). Search = the seeded TPE search (seed 0, warm-started "
        "with the preset and the lossless default) run against the grid's cache, so only the "
        f"order of asking is measured; the same budget of {out['trials']} trials on every "
        "model. 'x input' figures are the search's own per-candidate latency ratios (input vs "
        "candidate, >= 20 windows of >= 10 ms and >= 0.5 s, each model's fastest run per "
        "window, median of per-window ratios, 2 threads), the objective the search ranks by.",
        "",
        "Best vs preset and A-vs-A (the preset against a second session of itself: the noise "
        "band) come from one interleaved run per model after the search: preset, preset "
        "again, best-in-budget, input, in rotating order, >= 30 windows of >= 50 ms and >= 3 s of "
        "the preset, 2 threads, spinning off; min / median / max of per-window ratios. Both "
        f"meet the guard `{out['guard']}` on the held-out samples (worst cosine shown).",
        "",
        "| model | space | grid feasible | grid best (x input) | preset (x input) | best in "
        f"{out['trials']} trials (x input) | **best vs preset** | A-vs-A | windows | trials "
        "to 5% of grid best: search / grid order / random (expected) | best in budget | "
        "worst cosine: best / preset | size: best / preset / input |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out["results"]:
        reached = r["trials_to_within_5pct_of_grid_best"]
        pc = r["preset_worst_cosine"]
        bc = r["search_best_worst_cosine"]
        lines.append(
            f"| {r['model']} | {r['grid_candidates']} ({r['calib_samples']}) | "
            f"{r['grid_feasible']}/{r['grid_candidates']} | "
            f"{r['grid_best_ratio_vs_input']:.3f} `{r['grid_best_pipeline']}` | "
            f"{r['preset_ratio_vs_input']:.3f} | {r['search_best_ratio_vs_input']:.3f} | "
            f"{_fmt(r['best_vs_preset'])} | {_fmt(r['a_vs_a'])} | {r['direct_rounds']} | "
            f"{reached} / {r['grid_order_trials_to_5pct']} / "
            f"{r['random_order_expected_trials_to_5pct']} | `{r['search_best_pipeline']}` | "
            f"{'-' if bc is None else f'{bc:.5f}'} / {'-' if pc is None else f'{pc:.5f}'} | "
            f"{r['search_best_size']} / {r['preset_size']} / {r['input_size']} |"
        )
    lines += [
        "",
        "Grid evaluation time (1 worker, sum over its candidates): "
        + ", ".join(
            f"{r['model']} {sum(g['seconds'] for g in r['grid']):.0f} s "
            f"({r['grid_candidates']} candidates)"
            for r in out["results"]
        )
        + ".",
    ]
    retimed = [r for r in out["results"] if "input_vs_preset" in r]
    if retimed:
        lines += [
            "",
            "The preset re-timed against the input in the same interleaved run (preset / "
            "input = 1 / median of per-window input / preset), against the search's own "
            "figure for it: "
            + ", ".join(
                f"{r['model']} {1 / r['input_vs_preset']['median']:.3f} (search: "
                f"{r['preset_ratio_vs_input']:.3f})"
                for r in retimed
            )
            + ".",
        ]
    ray_part = out.get("ray")
    if ray_part:
        rr = ray_part["runs"]
        lines += [
            "",
            f"## Ray local mode vs local pool (digits, {ray_part['trials']} trials, fresh "
            f"OUTDIR each, Ray {ray_part['ray_version']}, `ray.init(num_cpus=2)`)",
            "",
            "| run | wall s | evaluated | best |",
            "|---|---|---|---|",
        ]
        for label, run in rr.items():
            lines.append(f"| {label} | {run['seconds']} | {run['evaluated']} | `{run['best']}` |")
        for key, (a, b) in (
            ("ray1_vs_local1", ("local-1", "ray-1")),
            ("ray2_vs_local2", ("local-2", "ray-2")),
        ):
            s = ray_part[key]
            common = set(rr[a]["records"]) & set(rr[b]["records"])
            fa = _fidelity_size_front(rr[a]["records"], common)
            fb = _fidelity_size_front(rr[b]["records"], common)
            lines.append("")
            lines.append(
                f"{b} vs {a}: {s['common']} common candidates of {s['candidates_a']} / "
                f"{s['candidates_b']}; identical status, guard, size, worst cosine and model "
                f"sha256: {s['identical_records']} / {s['common']} (bytes "
                f"{s['identical_bytes']} / {s['common']}). Front on (worst cosine, size) of the "
                f"common candidates: {'the same' if fa == fb else 'different'} ({len(fa)} "
                f"candidates). Full front (latency too): "
                f"{'the same' if s['same_front_set'] else 'different'} "
                f"({len(s['front_a'])} / {len(s['front_b'])} candidates)."
            )
        lines += [
            "",
            f"Wall time, Ray 2 workers / 1 worker: **{ray_part['ray2_vs_ray1_wall']}**; local "
            f"pool 2 / 1: {ray_part['local2_vs_local1_wall']} (one run each, on 2 shared cores).",
        ]
    return lines


def _merge(parts: list[Path], res: Path) -> None:
    """Combine part files into bench/results/search.{json,md}."""
    loaded = [json.loads(p.read_text()) for p in parts]
    out = {
        "commit": ", ".join(sorted({x["commit"] for x in loaded})),
        "machine": loaded[0]["machine"],
        "guard": GUARD,
        "target": "cpu",
        "trials": loaded[0]["trials"],
        "load_start": "; ".join(x["load_start"] for x in loaded),
        "load_end": "; ".join(x["load_end"] for x in loaded),
        "parts": [
            {"commit": x["commit"], "models": [r["model"] for r in x["results"]], "ray": "ray" in x}
            for x in loaded
        ],
        "results": [r for x in loaded for r in x["results"]],
    }
    for x in loaded:
        if "ray" in x:
            out["ray"] = x["ray"]
    (res / "search.json").write_text(json.dumps(out, indent=2) + "\n")
    (res / "search.md").write_text("\n".join(_markdown(out)) + "\n")


def main() -> None:
    """Run the benchmark and write bench/results/search.{json,md} (or a part file)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=BUDGET, help="the search's trial budget")
    parser.add_argument("--models", default="digits,rapidocr-cls,nudenet-320n,rapidocr-rec")
    parser.add_argument("--ray", action="store_true", help="also the Ray local-mode part")
    parser.add_argument("--ray-trials", type=int, default=8)
    parser.add_argument("--work", help="keep evaluations here (a re-run resumes from them)")
    parser.add_argument("--part", help="write this JSON part instead of the results")
    parser.add_argument("--merge", help="comma-separated part files to combine into results")
    args = parser.parse_args()
    res = ROOT / "bench" / "results"
    if args.merge:
        _merge([Path(p) for p in args.merge.split(",")], res)
        return
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    out = {
        "commit": commit,
        "machine": f"{platform.machine()}, 2 cores, shared",
        "guard": GUARD,
        "target": "cpu",
        "trials": args.trials,
        "load_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "results": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name in [m for m in args.models.split(",") if m]:
            out["results"].append(_bench(name, args.trials, work))
            _log(json.dumps({k: v for k, v in out["results"][-1].items() if k != "grid"}))
        if args.ray:
            out["ray"] = _ray_bench(args.ray_trials, work)
    out["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if args.part:
        Path(args.part).write_text(json.dumps(out, indent=2) + "\n")
        return
    (res / "search.json").write_text(json.dumps(out, indent=2) + "\n")
    (res / "search.md").write_text("\n".join(_markdown(out)) + "\n")


if __name__ == "__main__":
    main()

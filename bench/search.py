"""Search vs the target preset and vs a full grid (--target cpu); Ray local mode vs local.

Part 1, for each model: evaluate the full grid of its space into a cache (strategy grid),
re-time every feasible grid candidate with the input in one interleaved windowed run (a
consistent latency table: 'the grid re-timed'), then replay the seeded strategies (tpe,
nsga2, random; several seeds) against that cache, so what is measured is the order in which
each asks (trials to reach within 5% of the grid's best, by the grid's own per-candidate
figures and by the re-timed table). Then the search with its budget of trials and the
confirmation stage (the k fastest of its front, the preset, an A-vs-A copy and the input
in one run) chooses best.onnx; an independent interleaved run checks best vs preset.

Part 2 (``--ray``): the same search on digits from scratch, local pool vs Ray local mode
(``ray.init(num_cpus=2)``), 1 and 2 workers: wall time, candidates, guard outcomes,
sizes and model bytes compared; then a re-run of one OUTDIR (resume: 0 evaluated).

Run: python bench/search.py [--models digits,rapidocr-cls,...] [--ray] [--work DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchutil import commit_id  # noqa: E402

from nnopt_graph.pipeline.presets import CPU_BEFORE_INT8  # noqa: E402
from nnopt_graph.runtime.data import input_specs, load_dataset  # noqa: E402
from nnopt_graph.runtime.quant_bench import compare_latency  # noqa: E402
from nnopt_graph.search.run import ASK_BATCH, run_search  # noqa: E402
from nnopt_graph.search.space import SearchSpace, default_space  # noqa: E402

GUARD = "cosine.min>=0.99"
INT8 = f"{CPU_BEFORE_INT8},quantize-int8"  # the cpu space's and preset's int8 choice
PRESET = f"default,{INT8}"
# Real models: 4 calibration and 4 held-out samples (models.calib's generated inputs), and
# the space without 2:4 and the int8 variants (8 candidates): their grids cost 5-60 s a
# candidate on the shared machine. digits: its calibration split, 360 held-out images,
# the whole default cpu space (48 candidates).
REAL_SAMPLES = 4
SMALL_SPACE = SearchSpace(
    "default",
    (
        (
            "prune",
            (
                "",
                "prune-channels{ratio=0.1}",
                "prune-channels{ratio=0.25}",
                "prune-channels{ratio=0.4}",
            ),
        ),
        ("quantize", ("", INT8)),
    ),
    ((("prune", ""), ("quantize", INT8)), (("prune", ""), ("quantize", ""))),
    ("prune",),
)
BUDGET = {"digits": 8}
REAL_BUDGET = 5
STRATEGIES = ("tpe", "nsga2", "random")
SEEDS = (0, 1, 2, 3, 4)
# Replays stop after this many distinct candidates (trials beyond it are reported as >).
REPLAY_CAP = 24
# The grid re-timed: every feasible candidate and the input in one windowed run.
RETIME = {"runs": 20, "warmup": 2, "threads": 2, "min_seconds": 2.0, "window_seconds": 0.01}
# The independent check of best vs preset: >= 30 windows of >= 50 ms, >= 3 s of the preset.
DIRECT = {"runs": 30, "warmup": 5, "threads": 2, "min_seconds": 3.0, "window_seconds": 0.05}


def _log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)  # noqa: T201


def _inputs(name: str, work: Path) -> tuple[Path, Path, Path]:
    if name == "digits":
        d = ROOT / "models" / "digits"
        return d / "digits_cnn.onnx", d / "digits_calib.npz", d / "digits_heldout.npz"
    from models import calib, fetch

    model = fetch.fetch(name)
    cal, held = work / f"{name}_calib.npz", work / f"{name}_eval.npz"
    # Reused when present: the cache is keyed by the data's bytes.
    if not cal.exists():
        calib.write_calib_npz(name, cal, samples=REAL_SAMPLES, seed=0)
    if not held.exists():
        calib.write_calib_npz(name, held, samples=REAL_SAMPLES, seed=100)
    return model, cal, held


# --full-space: the real models get the whole default cpu space too (48 candidates).
FULL_SPACE = {"on": False}


def _space_for(name: str, work: Path) -> tuple[SearchSpace, Path]:
    space = default_space("cpu") if name == "digits" or FULL_SPACE["on"] else SMALL_SPACE
    path = work / f"space-{name}.json"
    path.write_text(json.dumps(space.to_json(), indent=1))
    return space, path


def _feasible(r: dict) -> bool:
    return r.get("status") == "ok" and bool(r.get("guard_passed"))


def _first_within(order: list[str], good: set[str]) -> int | None:
    """1-based index of the first pipeline of ``order`` in ``good``, or None."""
    for k, text in enumerate(order, 1):
        if text in good:
            return k
    return None


def _random_order_expectation(n: int, good: int) -> float:
    """Expected draws (without replacement) until the first of ``good`` among ``n``."""
    return (n + 1) / (good + 1)


def _modelled(r: dict) -> float | None:
    return (r.get("modelled") or {}).get("ratio")


def _ranks(values: list[float]) -> list[float]:
    """Average ranks (1-based), ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation of two equally long lists (None below 3 points)."""
    if len(a) < 3:
        return None
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = statistics.mean(ra), statistics.mean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va = sum((x - ma) ** 2 for x in ra) ** 0.5
    vb = sum((y - mb) ** 2 for y in rb) ** 0.5
    return round(cov / (va * vb), 3) if va and vb else None


def _cos(r: dict) -> float | None:
    return (r.get("worst") or {}).get("cosine")


def _fresh(work: Path, label: str, grid_dir: Path) -> Path:
    """A fresh OUTDIR holding only the grid's cache (its model paths point into the grid)."""
    d = work / label
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    shutil.copyfile(grid_dir / "cache.jsonl", d / "cache.jsonl")
    return d


def _bench(name: str, work: Path) -> dict:
    model, cal, held = _inputs(name, work)
    space, space_file = _space_for(name, work)
    kw = {"target": "cpu", "calib": cal, "eval_data": held, "guard": GUARD, "space": space_file}
    grid_dir = work / name / "grid"
    t0 = time.perf_counter()
    grid = run_search(
        model, grid_dir, trials=space.size, strategy="grid", confirm=0, workers=1, **kw
    )[0]
    _log(
        f"{name}: grid of {len(grid.records)} ({grid.evaluated} evaluated now) "
        f"in {time.perf_counter() - t0:.0f} s"
    )
    by_text = {r["pipeline"]: r for r in grid.records}
    feasible = [r for r in grid.records if _feasible(r)]
    from nnopt_graph.core import io

    feed = next(load_dataset(held, input_specs(io.load(model))).batches(1))
    # The grid re-timed: the input first (ratios = candidate / input), every feasible one.
    load_retime = os.getloadavg()[0]
    retime = compare_latency([str(model)] + [r["model"] for r in feasible], feed, **RETIME)
    retimed = {r["pipeline"]: retime.ratio[i + 1]["median"] for i, r in enumerate(feasible)}
    own = {r["pipeline"]: r["latency_ratio"]["median"] for r in feasible}
    good = {}
    for label, table in (("own", own), ("retimed", retimed)):
        best = min(table.values())
        good[label] = {t for t, v in table.items() if v <= best * 1.05}
    grid_order = [space.pipeline(c) for c in space.candidates()]
    # The grid walked in the model's order (fastest modelled first): how far down the
    # model's ranking the measured best lies.
    modelled = {r["pipeline"]: _modelled(r) for r in feasible}
    model_order = sorted(
        (t for t, v in modelled.items() if v is not None), key=lambda t: (modelled[t], t)
    )
    names = [t for t in model_order if t in retimed]
    cap = min(space.size, REPLAY_CAP)
    replays = _replays(name, model, kw, work, grid_dir, good, cap)
    budget = BUDGET.get(name, BUDGET["digits"] if FULL_SPACE["on"] else REAL_BUDGET)
    d = _fresh(work / name, "search", grid_dir)
    load_confirm = os.getloadavg()[0]
    search = run_search(model, d, trials=budget, strategy="tpe", seed=0, confirm=3, **kw)[0]
    assert search.evaluated == 0 and search.best is not None
    conf = search.confirmation.to_json()
    best = search.best
    preset = by_text[PRESET]
    best_entry = next(e for e in conf["entries"] if e["pipeline"] == best["pipeline"])
    # An independent run: preset, preset again (A-vs-A), best, input; rotating order.
    load_direct = os.getloadavg()[0]
    direct = compare_latency(
        [preset["model"], preset["model"], best["model"], str(model)], feed, **DIRECT
    )
    first_pick = min(
        (r for r in search.records if _feasible(r)), key=lambda r: r["latency_ratio"]["median"]
    )
    model_pick = search.front[0]

    return {
        "model": name,
        "data": "digits_calib.npz / digits_heldout.npz (360)"
        if name == "digits"
        else f"{REAL_SAMPLES} calib / {REAL_SAMPLES} held-out (models.calib)",
        "space": space.to_json(),
        "space_size": space.size,
        "grid_candidates": len(grid.records),
        "grid_feasible": len(feasible),
        "grid_eval_seconds": round(sum(r.get("seconds", 0.0) for r in grid.records), 1),
        "retime_windows": retime.runs,
        "retime_load": round(load_retime, 2),
        "grid_best_own": min(own, key=own.get),
        "grid_best_own_ratio": min(own.values()),
        "grid_best_retimed": min(retimed, key=retimed.get),
        "grid_best_retimed_ratio": min(retimed.values()),
        "within_5pct_own": sorted(good["own"]),
        "within_5pct_retimed": sorted(good["retimed"]),
        "retimed": retimed,
        "modelled": modelled,
        "model_order": model_order,
        "model_pick": model_order[0] if model_order else None,
        "model_order_to_5pct_own": _first_within(model_order, good["own"]),
        "model_order_to_5pct_retimed": _first_within(model_order, good["retimed"]),
        "spearman_model_vs_retimed": _spearman(
            [modelled[t] for t in names], [retimed[t] for t in names]
        ),
        "spearman_model_vs_own": _spearman([modelled[t] for t in names], [own[t] for t in names]),
        "spearman_own_vs_retimed": _spearman([own[t] for t in names], [retimed[t] for t in names]),
        "grid_order_to_5pct_own": _first_within(grid_order, good["own"]),
        "grid_order_to_5pct_retimed": _first_within(grid_order, good["retimed"]),
        "random_expected_to_5pct_own": round(
            _random_order_expectation(len(feasible), len(good["own"])), 2
        ),
        "random_expected_to_5pct_retimed": round(
            _random_order_expectation(len(feasible), len(good["retimed"])), 2
        ),
        "replay_cap": cap,
        "replays": replays,
        "to_5pct": _to_5pct(replays),
        "budget": budget,
        "search_order": [r["pipeline"] for r in search.records],
        "first_figure_pick": first_pick["pipeline"],
        "first_figure_pick_retimed": retimed.get(first_pick["pipeline"]),
        "search_model_pick": model_pick["pipeline"],
        "search_model_pick_retimed": retimed.get(model_pick["pipeline"]),
        "confirmation": conf,
        "confirm_load": round(load_confirm, 2),
        "best_pipeline": best["pipeline"],
        "best_vs_preset_confirmation": best_entry["ratio"],
        "a_vs_a_confirmation": conf["noise_a_vs_a"],
        "best_vs_preset_direct": direct.ratio[2],
        "a_vs_a_direct": direct.ratio[1],
        "input_vs_preset_direct": direct.ratio[3],
        "direct_windows": direct.runs,
        "direct_load": round(load_direct, 2),
        "best_worst_cosine": _cos(best),
        "preset_worst_cosine": _cos(preset),
        "preset_outcomes": preset.get("outcomes"),
        "best_size": best["size"],
        "preset_size": preset["size"],
        "input_size": os.path.getsize(model),
        "grid": [
            {
                "pipeline": r["pipeline"],
                "status": r.get("status"),
                "guard_passed": r.get("guard_passed"),
                "outcomes": r.get("outcomes"),
                "modelled": r.get("modelled"),
                "latency_ratio": r.get("latency_ratio"),
                "retimed": retimed.get(r["pipeline"]),
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

    from nnopt_graph.search.strategy import objectives

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
            "load": round(os.getloadavg()[0], 2),
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
            "order": [x["pipeline"] for x in r.records],
            "front": [x["pipeline"] for x in r.front],
            "front_objectives": [[x["pipeline"], list(objectives(x) or ())] for x in r.front],
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
    t0 = time.perf_counter()
    again = run_search(model, work / "ray" / "local-1", workers=1, **kwargs)[0]
    resume = {
        "evaluated": again.evaluated,
        "candidates": len(again.records),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    _log(f"resume: {resume}")

    def same(a: str, b: str) -> dict:
        ra, rb = runs[a]["records"], runs[b]["records"]
        common = sorted(set(ra) & set(rb))
        keys = ("status", "guard_passed", "size", "worst_cosine", "sha256")
        return {
            "candidates_a": len(ra),
            "candidates_b": len(rb),
            "common": len(common),
            "same_order": runs[a]["order"] == runs[b]["order"],
            "identical_records": sum(all(ra[c][k] == rb[c][k] for k in keys) for c in common),
            "identical_bytes": sum(ra[c]["sha256"] == rb[c]["sha256"] for c in common),
            "same_front_set": sorted(runs[a]["front"]) == sorted(runs[b]["front"]),
            "same_front_objectives": runs[a]["front_objectives"] == runs[b]["front_objectives"],
            "front_a": runs[a]["front"],
            "front_b": runs[b]["front"],
        }

    return {
        "model": "digits",
        "trials": trials,
        "ray_version": ray.__version__,
        "runs": runs,
        "resume": resume,
        "batch": ASK_BATCH,
        "ray1_vs_local1": same("local-1", "ray-1"),
        "ray2_vs_local2": same("local-2", "ray-2"),
        "local2_vs_local1": same("local-1", "local-2"),
        "ray2_vs_local1": same("local-1", "ray-2"),
        "ray2_vs_ray1_wall": round(runs["ray-2"]["seconds"] / runs["ray-1"]["seconds"], 3),
        "local2_vs_local1_wall": round(runs["local-2"]["seconds"] / runs["local-1"]["seconds"], 3),
    }


def _replays(
    name: str, model: Path, kw: dict, work: Path, grid_dir: Path, good: dict, cap: int
) -> dict[str, list[dict]]:
    """Each strategy and seed replayed against the grid's cache (0 evaluations)."""
    replays: dict[str, list[dict]] = {}
    for kind in STRATEGIES:
        replays[kind] = []
        for seed in SEEDS:
            d = _fresh(work / name, f"replay-{kind}-{seed}", grid_dir)
            r = run_search(model, d, trials=cap, strategy=kind, seed=seed, confirm=0, **kw)[0]
            assert r.evaluated == 0, "a replay must only read the grid's cache"
            order = [x["pipeline"] for x in r.records if x.get("status") != "skipped"]
            replays[kind].append(
                {
                    "seed": seed,
                    "order": order,
                    "skipped": sum(x.get("status") == "skipped" for x in r.records),
                    "to_5pct_own": _first_within(order, good["own"]),
                    "to_5pct_retimed": _first_within(order, good["retimed"]),
                }
            )
        _log(f"{name}: replays of {kind} done")
    return replays


def _to_5pct(replays: dict[str, list[dict]]) -> dict:
    def summary(kind: str, key: str) -> dict:
        vals = [x[key] for x in replays[kind]]
        known = [v for v in vals if v is not None]
        return {
            "per_seed": vals,
            "mean": round(statistics.mean(known), 2) if len(known) == len(vals) else None,
            "median": statistics.median(known) if len(known) == len(vals) else None,
            "missed": len(vals) - len(known),
        }

    return {
        kind: {"own": summary(kind, "to_5pct_own"), "retimed": summary(kind, "to_5pct_retimed")}
        for kind in STRATEGIES
    }


def _replay_part(part_in: Path, work: Path, commit: str) -> dict:
    """A part file's replays re-done against its grids' caches in ``work`` (no evaluation).

    The grids, their re-timed tables and within-5% sets, the confirmation and independent
    runs stay those of the part; only the strategies' orders (and trials to 5%) are new.
    """
    part = json.loads(part_in.read_text())
    for r in part["results"]:
        name = r["model"]
        model, cal, held = _inputs(name, work)
        _, space_file = _space_for(name, work)
        kw = {"target": "cpu", "calib": cal, "eval_data": held, "guard": GUARD}
        kw["space"] = space_file
        good = {"own": set(r["within_5pct_own"]), "retimed": set(r["within_5pct_retimed"])}
        previous = r["to_5pct"]
        r["replays"] = _replays(name, model, kw, work, work / name / "grid", good, r["replay_cap"])
        r["to_5pct"] = _to_5pct(r["replays"])
        r["to_5pct_previous"] = previous
        r["replay_commit"] = commit
    part["replay_commit"] = commit
    return part


def _fmt(d: dict) -> str:
    return f"{d['min']:.3f} / **{d['median']:.3f}** / {d['max']:.3f}"


def _trials(d: dict, cap: int) -> str:
    """Mean over seeds (per seed); a seed that never got there counts cap + 1 (a bound)."""
    vals = [cap + 1 if v is None else v for v in d["per_seed"]]
    mean = statistics.mean(vals)
    per = "/".join(f">{cap}" if v is None else str(v) for v in d["per_seed"])
    return f"{'>=' if d['missed'] else ''}{mean:.1f} ({per})"


def _markdown(out: dict) -> list[str]:
    lines = [
        f"# search vs preset vs full grid (--target cpu, guard {out['guard']})",
        "",
        f"Commit {out['commit']}, {out['machine']} (load average at the start: "
        f"{out['load_start']}, at the end: {out['load_end']}; other jobs ran throughout). "
        "Each model's grid evaluated once, each replay once per strategy and seed, one "
        "confirmation run and one independent direct run per model.",
        "",
        "The strategies rank candidates by the **modelled latency** (nnopt_graph/search/"
        "modelled.py: deterministic, from the built candidate and ONNX Runtime's optimized "
        "graph); every candidate's latency is still **measured** (its own figure: input vs "
        "candidate, >= 20 windows of >= 10 ms, >= 0.5 s, 2 threads), and 'within 5%' below is "
        "always judged by measured latency: 'own' = the grid's per-candidate figures, "
        "'re-timed' = every feasible grid candidate and the input in ONE interleaved windowed "
        "run (>= 20 windows of >= 10 ms, >= 2 s), a consistent table.",
        "",
        "Spaces: digits = the default cpu space (48: prune-channels ratio 0/0.1/0.2/0.3/0.4/0.5 "
        "x sparsify 2:4 off/on x quantize none / quantize-int8 defaults / per-channel=false / "
        f"calibrator=entropy, each int8 after {CPU_BEFORE_INT8}); the real models = "
        f"prune 0/0.1/0.25/0.4 x {INT8} off/on (8), with {REAL_SAMPLES} calibration + "
        f"{REAL_SAMPLES} held-out samples (models.calib), to fit the machine.",
        "",
        "Trials to reach within 5% of the grid's best measured latency (guard-passing "
        f"candidates): each strategy replayed against the grid's cache with seeds {list(SEEDS)} "
        f"(mean, per seed; stops at {REPLAY_CAP} candidates). Grid order, random order "
        "(expected, (n+1)/(good+1)) and 'model order' (the grid sorted by modelled latency, "
        "fastest first: how far down the model's ranking the measured best is) for comparison.",
        "",
        "| model | space | within 5%: own / re-timed | tpe (own) | nsga2 (own) | random (own) | "
        "grid / random exp. / model order (own) | tpe (re-timed) | nsga2 (re-timed) | random "
        "(re-timed) | grid / random exp. / model order (re-timed) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out["results"]:
        t = r["to_5pct"]
        cap = r["replay_cap"]
        lines.append(
            f"| {r['model']} | {r['space_size']} | {len(r['within_5pct_own'])} / "
            f"{len(r['within_5pct_retimed'])} | {_trials(t['tpe']['own'], cap)} | "
            f"{_trials(t['nsga2']['own'], cap)} | {_trials(t['random']['own'], cap)} | "
            f"{r['grid_order_to_5pct_own']} / {r['random_expected_to_5pct_own']} / "
            f"{r['model_order_to_5pct_own']} | "
            f"{_trials(t['tpe']['retimed'], cap)} | {_trials(t['nsga2']['retimed'], cap)} | "
            f"{_trials(t['random']['retimed'], cap)} | {r['grid_order_to_5pct_retimed']} / "
            f"{r['random_expected_to_5pct_retimed']} / {r['model_order_to_5pct_retimed']} |"
        )
    lines += [
        "",
        "The model's ranking against the measured ones (Spearman rank correlation over the "
        "feasible grid candidates; 'own vs re-timed' = how well two measurements of the same "
        "candidates agree, the ceiling for any ranking on this machine):",
        "",
        "| model | model vs re-timed | model vs own | own vs re-timed | model's pick (re-timed x "
        "input) | measured best re-timed (x input) |",
        "|---|---|---|---|---|---|",
    ]
    for r in out["results"]:
        pick = r["model_pick"]
        lines.append(
            f"| {r['model']} | {r['spearman_model_vs_retimed']} | {r['spearman_model_vs_own']} | "
            f"{r['spearman_own_vs_retimed']} | `{pick}` ({r['retimed'][pick]:.3f}) | "
            f"`{r['grid_best_retimed']}` ({r['grid_best_retimed_ratio']:.3f}) |"
        )
    lines += [
        "",
        "Best vs preset: the tpe search (seed 0) with its budget of trials, then the "
        "confirmation stage (the 3 fastest of its front by modelled latency, the fastest by "
        "its own measured figure, the preset, a second session of the preset = A-vs-A, the "
        "input; one interleaved run, >= 20 windows of >= 50 ms, >= 2 s) chooses best.onnx; then "
        "an independent run (preset, preset, best, input, >= 30 windows of >= 50 ms, >= 3 s) "
        "checks it. Ratios best / preset, min / median / max of per-window ratios. Both meet "
        f"`{out['guard']}` on the held-out samples.",
        "",
        "| model | budget | search's model pick (re-timed x input) | best.onnx (confirmed) | "
        "**best vs preset (confirmation)** | A-vs-A (confirmation) | windows | **best vs preset "
        "(independent)** | A-vs-A (independent) | windows | worst cosine best / preset | "
        "size best / preset / input | load conf. / ind. |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out["results"]:
        pick_rt = r["search_model_pick_retimed"]
        bc, pc = r["best_worst_cosine"], r["preset_worst_cosine"]
        lines.append(
            f"| {r['model']} | {r['budget']} | `{r['search_model_pick']}` "
            f"({'-' if pick_rt is None else f'{pick_rt:.3f}'}) | `{r['best_pipeline']}` | "
            f"{_fmt(r['best_vs_preset_confirmation'])} | {_fmt(r['a_vs_a_confirmation'])} | "
            f"{r['confirmation']['windows']} | {_fmt(r['best_vs_preset_direct'])} | "
            f"{_fmt(r['a_vs_a_direct'])} | {r['direct_windows']} | "
            f"{'-' if bc is None else f'{bc:.5f}'} / {'-' if pc is None else f'{pc:.5f}'} | "
            f"{r['best_size']} / {r['preset_size']} / {r['input_size']} | "
            f"{r['confirm_load']} / {r['direct_load']} |"
        )
    lines += ["", "Grid's best, by its own figures, re-timed and by the model (x input):", ""]
    for r in out["results"]:
        lines.append(
            f"- {r['model']}: own `{r['grid_best_own']}` {r['grid_best_own_ratio']:.3f} "
            f"(re-timed {r['retimed'][r['grid_best_own']]:.3f}); re-timed "
            f"`{r['grid_best_retimed']}` {r['grid_best_retimed_ratio']:.3f} (modelled "
            f"{r['modelled'][r['grid_best_retimed']]:.3f}); model's pick `{r['model_pick']}` "
            f"modelled {r['modelled'][r['model_pick']]:.3f}, re-timed "
            f"{r['retimed'][r['model_pick']]:.3f}; preset re-timed "
            f"{r['retimed'].get(PRESET, float('nan')):.3f}; {r['grid_feasible']}/"
            f"{r['grid_candidates']} feasible; grid evaluation {r['grid_eval_seconds']:.0f} s "
            f"(sum over candidates, 1 worker); re-timing {r['retime_windows']} windows at load "
            f"{r['retime_load']}."
        )
    ray_part = out.get("ray")
    if ray_part:
        rr = ray_part["runs"]
        lines += [
            "",
            f"## Ray local mode vs local pool (digits, default space, {ray_part['trials']} "
            f"trials, seed 0, batch {ray_part.get('batch', 'the worker count')}, fresh OUTDIR "
            f"each, Ray {ray_part['ray_version']}, "
            "`ray.init(num_cpus=2)`)",
            "",
            "| run | wall s | evaluated | load after | best |",
            "|---|---|---|---|---|",
        ]
        for label, run in rr.items():
            lines.append(
                f"| {label} | {run['seconds']} | {run['evaluated']} | {run.get('load', '-')} "
                f"| `{run['best']}` |"
            )
        for key, (a, b) in (
            ("ray1_vs_local1", ("local-1", "ray-1")),
            ("ray2_vs_local2", ("local-2", "ray-2")),
            ("local2_vs_local1", ("local-1", "local-2")),
            ("ray2_vs_local1", ("local-1", "ray-2")),
        ):
            if key not in ray_part:  # parts from before the fixed ask batch
                continue
            s = ray_part[key]
            lines.append("")
            lines.append(
                f"{b} vs {a}: {s['common']} common candidates of {s['candidates_a']} / "
                f"{s['candidates_b']} (same order asked: {s['same_order']}); identical status, "
                f"guard, size, worst cosine and model sha256: {s['identical_records']} / "
                f"{s['common']} (bytes {s['identical_bytes']} / {s['common']}). Front "
                f"(modelled latency, worst cosine, size): "
                f"{'the same' if s['same_front_objectives'] else 'different'} "
                f"({len(s['front_a'])} / {len(s['front_b'])} candidates, pipelines and objective "
                "values compared)."
            )
        res = ray_part["resume"]
        lines += [
            "",
            f"Wall time, Ray 2 workers / 1 worker: **{ray_part['ray2_vs_ray1_wall']}**; local "
            f"pool 2 / 1: {ray_part['local2_vs_local1_wall']} (one run each, on 2 shared cores).",
            "",
            f"Resume: local-1's OUTDIR searched again: {res['evaluated']} evaluated of "
            f"{res['candidates']} candidates, {res['seconds']} s (the confirmation run included).",
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
        "load_start": "; ".join(x["load_start"] for x in loaded),
        "load_end": "; ".join(x["load_end"] for x in loaded),
        "parts": [
            {"commit": x["commit"], "models": [r["model"] for r in x["results"]], "ray": "ray" in x}
            for x in loaded
        ],
        "results": [r for x in loaded for r in x["results"]],
    }
    replayed = sorted({x["replay_commit"] for x in loaded if x.get("replay_commit")})
    if replayed:
        out["replay_commit"] = ", ".join(replayed)
    for x in loaded:
        if "ray" in x:
            out["ray"] = x["ray"]
    (res / "search.json").write_text(json.dumps(out, indent=2) + "\n")
    (res / "search.md").write_text("\n".join(_markdown(out)) + "\n")


def main() -> None:
    """Run the benchmark and write bench/results/search.{json,md} (or a part file)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="digits,rapidocr-cls,nudenet-320n,rapidocr-rec")
    parser.add_argument("--ray", action="store_true", help="also the Ray local-mode part")
    parser.add_argument("--ray-trials", type=int, default=8)
    parser.add_argument("--work", help="keep evaluations here (a re-run resumes from them)")
    parser.add_argument("--part", help="write this JSON part instead of the results")
    parser.add_argument("--merge", help="comma-separated part files to combine into results")
    parser.add_argument(
        "--replay", help="a part file: redo only its replays against --work's grids (to --part)"
    )
    parser.add_argument(
        "--full-space", action="store_true", help="the real models on the default cpu space (48)"
    )
    args = parser.parse_args()
    FULL_SPACE["on"] = args.full_space
    res = ROOT / "bench" / "results"
    if args.merge:
        _merge([Path(p) for p in args.merge.split(",")], res)
        return
    commit = commit_id()
    if args.replay:
        if not (args.work and args.part):
            parser.error("--replay needs --work (the grids' folder) and --part (the output)")
        out = _replay_part(Path(args.replay), Path(args.work), commit)
        Path(args.part).write_text(json.dumps(out, indent=2) + "\n")
        return
    out = {
        "commit": commit,
        "machine": f"{platform.machine()}, 2 cores, shared",
        "guard": GUARD,
        "target": "cpu",
        "load_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "results": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name in [m for m in args.models.split(",") if m]:
            out["results"].append(_bench(name, work))
            r = out["results"][-1]
            _log(
                json.dumps(
                    {
                        k: r[k]
                        for k in (
                            "model",
                            "to_5pct",
                            "best_pipeline",
                            "best_vs_preset_confirmation",
                            "best_vs_preset_direct",
                            "a_vs_a_direct",
                        )
                    }
                )
            )
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

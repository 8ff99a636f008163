"""Ablation of the search's warm start and ask batch: tpe replayed against cached grids.

Variants, "warm start / batch" (each warm start followed by TPE; batch = candidates asked per
round before any is told, run_search's ``batch``): B = presets + the aggressive corner (up to
8 candidates: each variant of the unordered stages; the default before this ablation);
E = presets + the corner's first candidate + the middle candidate (each ordered stage at its
middle choice, rounded to the less lossy side; the unordered stages at the target preset's
choice); F = presets + the corner's first candidate; G = E + the middle rounded to the
lossier side; H = E + the rest of B's corner; I = B + the middle (less lossy side). For each part file's model and within-5% set (own, re-timed): mean trials
over seeds 0-4 (a seed that never got there counts cap + 1). Replays evaluate nothing:
every candidate comes from the grid's cache.

Run: python bench/search_warm_ablation.py PART.json:WORK[:full] [...]
(WORK holds the grids, as bench/search.py --work leaves them; ``full``: the part searched
the real models on the 48-candidate default space, bench/search.py --full-space.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import search as bs  # noqa: E402
from benchutil import commit_id  # noqa: E402

import nnopt_graph.search.strategy as strategy_mod  # noqa: E402

VARIANTS = ("B/1", "B/4", "E/4", "F/4", "G/4", "H/1", "H/2", "H/4", "I/4")


def _middle(space, lead, upper: bool):  # noqa: ANN001, ANN202
    out = {}
    for name, choices in space.stages:
        if name in space.ordered:
            out[name] = choices[len(choices) // 2 if upper else (len(choices) - 1) // 2]
        else:
            out[name] = lead[name] if lead else choices[0]
    return out


def _warm(variant: str):  # noqa: ANN202
    def warm(space):  # noqa: ANN001, ANN202
        pre = space.preset_choices()
        lead = pre[0] if pre else None
        corner = space.most_lossy(lead)
        limit = strategy_mod.CORNER_LIMIT
        seq = {
            "B": pre + corner[:limit],
            "E": pre + corner[:1] + [_middle(space, lead, False)],
            "F": pre + corner[:1],
            "G": pre + corner[:1] + [_middle(space, lead, False), _middle(space, lead, True)],
            "H": pre + corner[:1] + [_middle(space, lead, False)] + corner[1:limit],
            "I": pre + corner[:limit] + [_middle(space, lead, False)],
        }[variant]
        out = []
        for c in seq:
            if c not in out:
                out.append(c)
        return out

    return warm


def main() -> None:
    """Write bench/results/search_warm_ablation.{json,md}."""
    parser = argparse.ArgumentParser()
    parser.add_argument("sets", nargs="+", help="PART.json:WORK[:full]")
    args = parser.parse_args()
    sets = []
    for spec in args.sets:
        part, work, *flag = spec.split(":")
        for r in json.loads(Path(part).read_text())["results"]:
            sets.append((Path(part).name, Path(work), bool(flag and flag[0] == "full"), r))
    commit = commit_id()
    load_start = " ".join(f"{x:.2f}" for x in __import__("os").getloadavg())
    rows = []
    original = strategy_mod.warm_start
    t0 = time.monotonic()
    for variant in VARIANTS:
        warm, batch = variant.split("/")
        strategy_mod.warm_start = _warm(warm)
        for part, work, full, r in sets:
            bs.FULL_SPACE["on"] = full
            name = r["model"]
            model, cal, held = bs._inputs(name, work)
            _, space_file = bs._space_for(name, work)
            kw = {"target": "cpu", "calib": cal, "eval_data": held, "guard": bs.GUARD}
            kw["space"] = space_file
            orders = []
            for seed in bs.SEEDS:
                d = bs._fresh(work / name, f"ablation-{seed}", work / name / "grid")
                res = bs.run_search(
                    model,
                    d,
                    trials=r["replay_cap"],
                    strategy="tpe",
                    seed=seed,
                    confirm=0,
                    batch=int(batch),
                    **kw,
                )[0]
                assert res.evaluated == 0, "a replay must only read the grid's cache"
                orders.append([x["pipeline"] for x in res.records if x.get("status") != "skipped"])
            for label in ("own", "retimed"):
                good = set(r[f"within_5pct_{label}"])
                vals = []
                for order in orders:
                    v = bs._first_within(order, good)
                    vals.append(r["replay_cap"] + 1 if v is None else v)
                rows.append(
                    {
                        "variant": variant,
                        "model": f"{name} ({r['space_size']})",
                        "part": part,
                        "set": label,
                        "per_seed": vals,
                        "mean": statistics.mean(vals),
                        "grid_order": r[f"grid_order_to_5pct_{label}"],
                        "random_expected": r[f"random_expected_to_5pct_{label}"],
                    }
                )
            bs._log(f"{variant} {name} ({r['space_size']}) done")
    strategy_mod.warm_start = original
    res_dir = ROOT / "bench" / "results"
    meta = {
        "commit": commit,
        "load_start": load_start,
        "seconds": round(time.monotonic() - t0, 1),
        "seeds": list(bs.SEEDS),
    }
    (res_dir / "search_warm_ablation.json").write_text(
        json.dumps({**meta, "rows": rows}, indent=1) + "\n"
    )
    keys = sorted({(r["model"], r["part"], r["set"]) for r in rows}, key=str)
    lines = [
        "# search warm-start and batch ablation (tpe replayed against cached grids, seeds 0-4)",
        "",
        __doc__.split("\n\n")[1].replace("\n", " "),
        "",
        f"Commit {commit}; the grids and within-5% sets are the part files' "
        f"({', '.join(sorted({p for p, *_ in sets}))}; their commits in bench/results/search.json).",
        "",
        "| model (space) / part / set | grid order | random exp. | " + " | ".join(VARIANTS) + " |",
        "|---|---|---|" + "---|" * len(VARIANTS),
    ]
    for k in keys:
        got = {r["variant"]: r for r in rows if (r["model"], r["part"], r["set"]) == k}
        first = got[VARIANTS[0]]
        lines.append(
            f"| {' / '.join(k)} | {first['grid_order']} | {first['random_expected']} | "
            + " | ".join(f"{got[v]['mean']:.1f}" for v in VARIANTS)
            + " |"
        )
    (res_dir / "search_warm_ablation.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

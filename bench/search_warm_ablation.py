"""Ablation of the search's warm start: tpe replayed against cached grids (0 evaluations).

Variants (each followed by TPE): old = presets + the target preset's one-step-lossier
neighbours; A = presets + the aggressive corner + one step back from its first candidate;
B = presets + the corner (made the default after this ablation, on these same grids); C = presets + corner +
preset neighbours + back; D = presets + corner + back + preset neighbours. For each part
file's model and within-5% set (own, re-timed): mean trials over seeds 0-4 (a seed that
never got there counts cap + 1).

Run: python bench/search_warm_ablation.py --work DIR PART.json [PART.json ...]
(DIR holds the grids, as bench/search.py --work leaves them.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import search as bs  # noqa: E402

import nnopt_graph.search.strategy as strategy_mod  # noqa: E402

VARIANTS = ("old", "A", "B", "C", "D")


def _warm(variant: str):  # noqa: ANN202
    def warm(space):  # noqa: ANN001, ANN202
        pre = space.preset_choices()
        corner = space.most_lossy(pre[0] if pre else None)
        c0 = corner[0]
        back = []
        for name, choices in space.stages:  # one step less lossy, one stage at a time
            i = choices.index(c0[name])
            if name in space.ordered and i > 0:
                back.append({**c0, name: choices[i - 1]})
            elif name not in space.ordered and c0[name] and "" in choices:
                back.append({**c0, name: ""})
        nb = space.neighbours(pre[0]) if pre else []
        seq = {
            "old": pre + nb,
            "A": pre + corner + back,
            "B": pre + corner,
            "C": pre + corner + nb + back,
            "D": pre + corner + back + nb,
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
    parser.add_argument("--work", required=True)
    parser.add_argument("parts", nargs="+")
    args = parser.parse_args()
    work = Path(args.work)
    sets = [
        (Path(p).name, r) for p in args.parts for r in json.loads(Path(p).read_text())["results"]
    ]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    rows = []
    for variant in VARIANTS:
        strategy_mod.warm_start = _warm(variant)
        for part, r in sets:
            name = r["model"]
            model, cal, held = bs._inputs(name, work)
            _, space_file = bs._space_for(name, work)
            kw = {"target": "cpu", "calib": cal, "eval_data": held, "guard": bs.GUARD}
            kw["space"] = space_file
            for label in ("own", "retimed"):
                good = set(r[f"within_5pct_{label}"])
                vals = []
                for seed in bs.SEEDS:
                    d = bs._fresh(work / name, f"ablation-{seed}", work / name / "grid")
                    res = bs.run_search(
                        model, d, trials=r["replay_cap"], strategy="tpe", seed=seed, confirm=0, **kw
                    )[0]
                    assert res.evaluated == 0, "a replay must only read the grid's cache"
                    order = [x["pipeline"] for x in res.records if x.get("status") != "skipped"]
                    v = bs._first_within(order, good)
                    vals.append(r["replay_cap"] + 1 if v is None else v)
                rows.append(
                    {
                        "variant": variant,
                        "model": name,
                        "part": part,
                        "set": label,
                        "per_seed": vals,
                        "mean": statistics.mean(vals),
                        "grid_order": r[f"grid_order_to_5pct_{label}"],
                        "random_expected": r[f"random_expected_to_5pct_{label}"],
                    }
                )
    res_dir = ROOT / "bench" / "results"
    (res_dir / "search_warm_ablation.json").write_text(
        json.dumps({"commit": commit, "rows": rows}, indent=1) + "\n"
    )
    keys = sorted({(r["model"], r["part"], r["set"]) for r in rows}, key=str)
    lines = [
        "# search warm-start ablation (tpe replayed against cached grids, seeds 0-4)",
        "",
        __doc__.split("\n\n")[1].replace("\n", " "),
        "",
        f"Commit {commit}; the grids and within-5% sets are the part files' "
        f"({', '.join(sorted({p for p, _ in sets}))}, the previous run at 50b7215 / 09aba32).",
        "",
        "| model / part / set | grid order | random exp. | " + " | ".join(VARIANTS) + " |",
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

"""`--target cpu` on the digits CNN and every real model: worst held-out sample, latency.

Per model: calibration on CALIB samples, the guard on EVAL other samples (digits: its
training split for calibration, its 360 labelled held-out images for the guard); the
int8 decision by the default cost model. Then, against the input model, on the held-out
data: the worst sample's cosine (all outputs), and CPU latency under compare_latency's
windowed interleaved protocol in one process (input A, a second session of the input A',
output B; windows of about 50 ms of A in rotating order, a model's window time its fastest
run there; 2 threads, pool spinning off, >= 30 windows and about 4 s of A, after warm-up):
min/median/max of per-window ratios and the median's 95% CI, plus A'/A as the noise band,
and the load average. The modelled cost ratio of the int8 candidate is printed beside the measured
one, so the cost model can be checked. Writes bench/results/target_cpu.{json,md}.

Usage: python bench/target_cpu.py [--calib 48] [--eval 16] [--models a,b] [--merge]

--merge keeps the rows of bench/results/target_cpu.json for models not re-run (each row
records the commit it measured).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchutil import commit_id  # noqa: E402

from models import fetch  # noqa: E402
from models.calib import write_calib_npz  # noqa: E402
from nnopt_graph import optimize  # noqa: E402
from nnopt_graph.check.compare import compare_models  # noqa: E402
from nnopt_graph.core.io import load  # noqa: E402
from nnopt_graph.runtime.data import input_specs, load_dataset  # noqa: E402
from nnopt_graph.runtime.quant_bench import compare_latency  # noqa: E402


def _sources(
    tmp: Path, calib: int, held: int, names: list[str] | None
) -> dict[str, tuple[Path, Path, Path]]:
    digits = ROOT / "models/digits"
    out = {
        "digits-cnn": (
            digits / "digits_cnn.onnx",
            digits / "digits_calib.npz",
            digits / "digits_heldout.npz",
        )
    }
    for name in fetch.REAL_MODELS:
        if names and name not in names:
            continue
        c = write_calib_npz(name, tmp / f"{name}.calib.npz", samples=calib, seed=0)
        e = write_calib_npz(name, tmp / f"{name}.eval.npz", samples=held, seed=10_000)
        out[name] = (fetch.fetch(name), c, e)
    return out


def _median_ci(times: list[float], base: list[float]) -> dict[str, float]:
    """The 95% CI (order statistics) of the median per-window ratio of ``times`` to ``base``."""
    ratios = sorted(t / b for t, b in zip(times, base, strict=True))
    n = len(ratios)
    half = 1.96 * math.sqrt(n) / 2
    lo, hi = max(0, math.floor(n / 2 - half)), min(n - 1, math.ceil(n / 2 + half) - 1)
    return {"ci95_low": ratios[lo], "ci95_high": ratios[hi]}


def windowed_latency(paths: list[Path], feed: Any) -> Any:
    """The models of ``paths`` in one windowed interleaved run: the protocol of every row.

    Windows of about 50 ms of the first model, rotating order, 2 threads, spinning off,
    >= 30 windows and about 4 s of the first model.
    """
    return compare_latency(
        paths,
        feed,
        runs=30,
        warmup=5,
        threads=2,
        min_seconds=4.0,
        max_runs=400,
        window_seconds=0.05,
    )


def time_against_input(src: Path, out: Path, feed: Any) -> dict[str, Any]:
    """Input A, the input again A' (noise band) and ``out`` B in one windowed run.

    Ratios to A (min/median/max and the median's 95% CI), windows, runs per window, the
    1-minute load average before and after, and B's file size relative to A's.
    """
    load_before = os.getloadavg()[0]
    lat = windowed_latency([src, src, out], feed)
    return {
        "latency": {**lat.ratio[2], **_median_ci(lat.times[2], lat.times[0])},
        "a_vs_a": {**lat.ratio[1], **_median_ci(lat.times[1], lat.times[0])},
        "p50_ms_in": lat.p50_ms[0],
        "windows": lat.runs,
        "runs_per_window": lat.runs_per_window,
        "load_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "size_ratio": out.stat().st_size / Path(src).stat().st_size,
    }


def _modelled(record) -> float | None:
    for d in record.decisions:
        if "modelled" in d:
            return d["modelled"]["ratio"]
    return None


def main() -> None:
    """Run every model and write the tables."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--calib", type=int, default=48)
    parser.add_argument("--eval", type=int, default=16)
    parser.add_argument("--models")
    parser.add_argument("--merge", action="store_true")
    args = parser.parse_args()
    commit = commit_id()
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        names = args.models.split(",") if args.models else None
        for name, (src, calib, held) in _sources(tmp, args.calib, args.eval, names).items():
            out = tmp / f"{name}.cpu.onnx"
            result = optimize(src, out, target="cpu", calib=calib, eval_data=held)
            rec = next(r for r in result.records if r.name == "quantize-int8")
            dyn = next((r for r in result.records if r.name == "quantize-dynamic-int8"), None)
            data = load_dataset(held, input_specs(load(src)))
            fid = compare_models(src, out, data)
            feed = next(data.batches(1))
            row = {
                "model": name,
                "outcome": rec.outcome,
                "detail": rec.outcome_detail[:300],
                "modelled_ratio": _modelled(rec),
                "dynamic_outcome": dyn.outcome if dyn is not None else None,
                "dynamic_detail": dyn.outcome_detail[:300] if dyn is not None else None,
                "dynamic_modelled_ratio": _modelled(dyn) if dyn is not None else None,
                "worst_cosine": fid.metric("cosine"),
                "worst_index": next((o.worst_index("cosine") for o in fid.outputs), None),
                "samples": fid.samples,
                "commit": commit,
                **time_against_input(src, out, feed),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    res = ROOT / "bench/results"
    if args.merge:
        old = json.loads((res / "target_cpu.json").read_text())
        fresh = {r["model"]: r for r in rows}
        rows = [fresh.pop(r["model"], {"commit": old["commit"], **r}) for r in old["rows"]]
        rows += list(fresh.values())
    commits = sorted({r.get("commit", commit) for r in rows})
    (res / "target_cpu.json").write_text(
        json.dumps(
            {
                "commit": commit,
                "machine": "x86_64, 2 cores, shared",
                "calib": args.calib,
                "eval": args.eval,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    geo = math.exp(np.mean([math.log(r["latency"]["median"]) for r in rows]))
    lines = [
        "# `--target cpu`: worst held-out sample and latency",
        "",
        f"Commit {commit} (rows measured at: {', '.join(commits)}; see each row's commit in "
        "the json), x86_64 (AVX-512 VNNI), 2 cores shared with other jobs; ONNX Runtime CPU EP. "
        f"Calibration {args.calib} samples, guard and figures on {args.eval} other samples "
        "(digits: training split / 360 labelled held-out images). Latency: compare_latency's "
        "windowed interleaved protocol, one run per model (input A, input again A', output B; "
        "windows of about 50 ms of A, rotating order, a model's window time its fastest run "
        "there), 2 threads, spinning off, >= 30 windows and about 4 s of A; min / median / max "
        "of per-window ratios and the median's 95% CI. A'/A is the input against itself: the "
        "noise band. Load: 1-minute load average before → after the timing. 'dynamic int8' is "
        "quantize-dynamic-int8's outcome (the target-cpu preset runs it before quantize-int8, "
        "on the MatMuls and LSTMs where its cost model says it pays; static int8 then takes "
        "the rest).",
        "",
        "| model | int8 outcome | modelled cost | dynamic int8 | worst-sample cosine | "
        "latency B/A | B/A median 95% CI | A'/A | windows × runs | load | size |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lt, aa = r["latency"], r["a_vs_a"]
        mod = "-" if r["modelled_ratio"] is None else f"{r['modelled_ratio']:.3f}"
        dyn = r.get("dynamic_outcome") or "-"
        if r.get("dynamic_modelled_ratio") is not None:
            dyn += f" (modelled {r['dynamic_modelled_ratio']:.3f})"
        lines.append(
            f"| {r['model']} | {r['outcome']} | {mod} | {dyn} | "
            f"{r['worst_cosine']:.5f} (#{r['worst_index']}, "
            f"{r['samples']} samples) | {lt['min']:.2f} / **{lt['median']:.3f}** / {lt['max']:.2f} | "
            f"[{lt['ci95_low']:.3f}, {lt['ci95_high']:.3f}] | "
            f"{aa['min']:.2f} / {aa['median']:.3f} / {aa['max']:.2f} | "
            f"{r['windows']} × {r['runs_per_window']} | "
            f"{r['load_1min'][0]:.2f} → {r['load_1min'][1]:.2f} | {r['size_ratio']:.3f} |"
        )
    lines += [
        "",
        f"Geometric mean of the median latency ratios: **{geo:.3f}** over {len(rows)} models.",
    ]
    (res / "target_cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

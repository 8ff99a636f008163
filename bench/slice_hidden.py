"""Benchmark slice-hidden against prune-channels on a trained encoder and the zoo encoder.

Models and data as bench/prune_transformer.py: minilm-l3-paraphrase (calibration: the
Declaration of Independence; held out: the Gettysburg Address, Preamble and Bill of
Rights, models/text/) and the zoo bert-encoder (generated token ids; 64 calibration,
16 held-out samples of other seeds). Each model first goes through the lossless default
pipeline (the baseline); every pipeline then runs under ``--guard`` (default
``cosine>=0.95``, measured on the last 20% of the calibration data, never the held-out
set). Reported per row:
  - weights: MatMul/Gemm weight params, pipeline output / baseline (the rotations that
    slice-hidden adds are MatMul weights and are counted);
  - latency: CPU EP, 2 threads, one held-out sample, every model of a row set timed in
    one interleaved windowed comparison (runtime.quant_bench.compare_latency with
    ``window_seconds``: per round each model's fastest run in a window of rotating
    order), ratio to the baseline, min/median/max over rounds; the baseline's own copy
    is in the same comparison (A vs A: the noise band);
  - cosine: per held-out sample, all float outputs flattened (min / p5 / median), and
    the worst sample of each float output separately.

Run: .venv/bin/python bench/slice_hidden.py [--runs 30] [--window 0.25] [--models a,b]
[--pipeline P ...] [--out STEM]

``--energy`` instead measures why slicing loses on unseen text (writes
slice_hidden_energy.{json,md}): for each LayerNorm of minilm-l3-paraphrase, the PCA basis
of its normalized input at k = 288 of 384 (hidden ratio 0.25) from the calibration
sentences, and the fraction of energy it keeps on the calibration tokens, on the guard's
held-out sentences (the Declaration's last 20%) and on the held-out documents (attended
tokens only; padding separately); then the same basis grown by more sentences, on the
second half of the held-out documents.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import prune_transformer as pt  # noqa: E402

from nnopt_graph.job import optimize  # noqa: E402
from nnopt_graph.runtime.quant_bench import compare_latency  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ["minilm-l3-paraphrase", "bert-encoder"]
_SEARCH = "prune-channels{ratio=%g search=true protect-last=false}"
PIPELINES = [
    "prune-channels{ratio=0.25}",
    _SEARCH % 0.25,
    "slice-hidden{ratio=0.25 budget=hidden}",
    "slice-hidden{ratio=0.25}",
    f"{_SEARCH % 0.15},slice-hidden{{ratio=0.25 budget=hidden}}",
    f"{_SEARCH % 0.2},slice-hidden{{ratio=0.2 budget=hidden}}",
]


def _per_output(a: ort.InferenceSession, b: ort.InferenceSession, feeds: list) -> dict:
    """Worst held-out sample's cosine of each float output."""
    worst: dict[str, float] = {}
    names = [o.name for o in a.get_outputs()]
    for feed in feeds:
        for name, x, y in zip(names, a.run(None, feed), b.run(None, feed), strict=True):
            x, y = np.asarray(x), np.asarray(y)
            if x.dtype.kind != "f":
                continue
            x64, y64 = x.astype(np.float64).ravel(), y.astype(np.float64).ravel()
            cos = float(x64 @ y64 / max(np.linalg.norm(x64) * np.linalg.norm(y64), 1e-30))
            worst[name] = round(min(worst.get(name, 1.0), cos), 5)
    return worst


def _row(name: str, pipeline: str, guard: str, base: Path, cal: Path, held: Path, out: Path):
    start = time.perf_counter()
    result = optimize(str(base), out, pipeline, calib=str(cal), guard=guard, check=False)
    seconds = time.perf_counter() - start
    a, b = pt._session(base), pt._session(out)
    feeds = pt._feeds(held, a)
    cos = pt._cosines(a, b, feeds)
    records = [r.to_json() for r in result.records]
    layers = []
    for record in records:
        if record.get("guard_action") not in ("applied", "backed off"):
            continue
        for d in record.get("decisions", []):
            if "layer" in d and "k" in d:
                keys = ("layer", "d", "k", "energy_kept", "weights_removed")
                layers.append({k: d[k] for k in keys})
    return {
        "model": name,
        "pipeline": pipeline,
        "guard": guard,
        "passes": [
            {
                "pass": r.get("name"),
                "guard_action": r.get("guard_action"),
                "options": r.get("options"),
            }
            for r in records
            if r.get("guard_action") is not None
        ],
        "seconds": round(seconds, 1),
        "weight_params_base": pt._weights(base, True),
        "weight_params_ratio": round(pt._weights(out, True) / pt._weights(base, True), 4),
        "heldout_samples": len(cos),
        "cosine": {
            "min": round(float(cos.min()), 5),
            "p5": round(float(np.percentile(cos, 5)), 5),
            "median": round(float(np.median(cos)), 5),
        },
        "cosine_min_per_output": _per_output(a, b, feeds),
        "slice_layers": layers,
    }


def _model(name: str, args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    model_path, cal, held = pt._inputs(name, tmp)
    base = tmp / f"{name}_base.onnx"
    optimize(str(model_path), base, None, calib=str(cal), check=False)
    copy = tmp / f"{name}_base_copy.onnx"
    shutil.copyfile(base, copy)
    rows, paths = [], [base, copy]
    for i, pipeline in enumerate(args.pipeline or PIPELINES):
        out = tmp / f"{name}_{i}.onnx"
        rows.append(_row(name, pipeline, args.guard, base, cal, held, out))
        paths.append(out)
        print(json.dumps(rows[-1]), flush=True)
    feed = pt._feeds(held, pt._session(base))[0]
    load_before = os.getloadavg()
    comparison = compare_latency(
        paths, feed, runs=args.runs, window_seconds=args.window, max_runs=args.runs
    )
    load_after = os.getloadavg()
    band = comparison.ratio[1]
    for row, ratio in zip(rows, comparison.ratio[2:], strict=True):
        row["latency_ratio"] = {k: round(v, 4) for k, v in ratio.items()}
        row["latency_noise_band"] = {k: round(v, 4) for k, v in band.items()}
        row["latency_rounds"] = comparison.runs
        row["base_ms"] = round(comparison.p50_ms[0], 3)
        row["load_avg"] = [round(x, 2) for x in (*load_before, *load_after)]
    return rows


def _normalized_streams(path: Path, data: Path, samples: range) -> list[dict[str, np.ndarray]]:
    """Per LayerNorm, its normalized input on the attended and the padding tokens."""
    import onnx

    model = onnx.load(str(path))
    names = [n.input[0] for n in model.graph.node if n.op_type == "LayerNormalization"]
    for name in names:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, 1, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    arrays = np.load(data)
    real: list[list[np.ndarray]] = [[] for _ in names]
    pad: list[list[np.ndarray]] = [[] for _ in names]
    for i in samples:
        feed = {k: arrays[k][i : i + 1] for k in ("input_ids", "attention_mask")}
        keep = feed["attention_mask"][0] != 0
        for j, x in enumerate(session.run(names, feed)):
            x = x[0].astype(np.float64)
            x = x - x.mean(axis=1, keepdims=True)
            x = x / np.sqrt(np.square(x).mean(axis=1, keepdims=True) + 1e-12)
            real[j].append(x[keep])
            pad[j].append(x[~keep])
    return [
        {"name": n, "real": np.concatenate(r), "pad": np.concatenate(p)}
        for n, r, p in zip(names, real, pad, strict=True)
    ]


def _energy(x: np.ndarray, basis: np.ndarray) -> float:
    return float(np.square(x @ basis).sum() / np.square(x).sum())


def _top(x: np.ndarray, k: int) -> np.ndarray:
    _, vectors = np.linalg.eigh(x.T @ x)
    return vectors[:, ::-1][:, :k]


def energy_main(k: int = 288) -> int:
    """Write bench/results/slice_hidden_energy.{json,md} (see the module docstring)."""
    path, cal, held = pt._inputs("minilm-l3-paraphrase", Path(tempfile.gettempdir()))
    calib = _normalized_streams(path, cal, range(38))
    guard = _normalized_streams(path, cal, range(38, 48))
    held_all = _normalized_streams(path, held, range(20))
    held_a = _normalized_streams(path, held, range(10))
    held_b = _normalized_streams(path, held, range(10, 20))
    rows = []
    for c, g, h, ha, hb in zip(calib, guard, held_all, held_a, held_b, strict=True):
        basis = _top(c["real"], k)
        grown = _top(np.concatenate([c["real"], g["real"]]), k)
        grown2 = _top(np.concatenate([c["real"], g["real"], ha["real"]]), k)
        rows.append(
            {
                "layer_norm": c["name"].removesuffix("_output_0"),
                "calib_real": round(_energy(c["real"], basis), 4),
                "guard_real": round(_energy(g["real"], basis), 4),
                "heldout_real": round(_energy(h["real"], basis), 4),
                "heldout_pad": round(_energy(h["pad"], basis), 4),
                "heldout_b_by_calib": round(_energy(hb["real"], basis), 4),
                "heldout_b_by_calib_guard": round(_energy(hb["real"], grown), 4),
                "heldout_b_by_calib_guard_heldout_a": round(_energy(hb["real"], grown2), 4),
                "heldout_b_in_sample": round(_energy(hb["real"], _top(hb["real"], k)), 4),
            }
        )
    tokens = {
        "calib": len(calib[0]["real"]),
        "guard": len(guard[0]["real"]),
        "heldout_a": len(held_a[0]["real"]),
        "heldout_b": len(held_b[0]["real"]),
    }
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    RESULTS.mkdir(exist_ok=True)
    data = {"commit": commit, "k": k, "d": 384, "attended_tokens": tokens, "rows": rows}
    (RESULTS / "slice_hidden_energy.json").write_text(json.dumps(data, indent=1))
    lines = [
        "# Does the PCA basis of slice-hidden hold on unseen text? (bench/slice_hidden.py --energy)",
        "",
        f"Commit {commit}; minilm-l3-paraphrase; k = {k} of 384 kept (hidden ratio 0.25).",
        "Energy kept: fraction of the normalized LayerNorm input's energy the basis keeps.",
        f"Attended tokens: {tokens}. Basis from the calibration sentences (38, the",
        "Declaration minus the guard's last 20%) unless the column says otherwise.",
        "",
        "| LayerNorm | calib (in-sample) | guard sentences | held-out docs | held-out padding "
        "| held-out B: calib basis | + guard sentences | + held-out A | B in-sample |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['layer_norm']} | {r['calib_real']:.4f} | {r['guard_real']:.4f} | "
            f"{r['heldout_real']:.4f} | {r['heldout_pad']:.4f} | {r['heldout_b_by_calib']:.4f} | "
            f"{r['heldout_b_by_calib_guard']:.4f} | {r['heldout_b_by_calib_guard_heldout_a']:.4f} | "
            f"{r['heldout_b_in_sample']:.4f} |"
        )
    (RESULTS / "slice_hidden_energy.md").write_text("\n".join(lines) + "\n")
    return 0


def main() -> int:
    """Run the rows and write bench/results/slice_hidden.{json,md}."""
    if "--energy" in sys.argv[1:]:
        return energy_main()
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--window", type=float, default=0.25)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--pipeline", action="append")
    parser.add_argument("--guard", default="cosine>=0.95")
    parser.add_argument("--out", default="slice_hidden")
    args = parser.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            rows.extend(_model(name, args, Path(tmp)))
    meta = {
        "commit": commit,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared",
        "onnxruntime": ort.__version__,
        "runs": args.runs,
        "window_seconds": args.window,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
    lines = [
        "# Hidden-size slicing vs head/FFN pruning (bench/slice_hidden.py)",
        "",
        f"Commit {commit}; {meta['machine']}; onnxruntime {meta['onnxruntime']} CPU EP, 2 threads.",
        "Weights: MatMul/Gemm weight params after / baseline (slice-hidden's rotations counted).",
        f"Latency: one interleaved windowed comparison per model ({args.runs} rounds, windows of",
        f"{args.window} s, per round each model's fastest run), ratio to the baseline min/median/max;",
        "A-vs-A: the baseline's copy in the same comparison (noise band). Load: 1/5/15-min load",
        "average before and after the timing. Cosine: per held-out sample (all float outputs",
        "flattened); 'worst per output': the worst sample of each float output.",
        "",
        "| model | pipeline | guard actions | weights | latency min/med/max | A-vs-A min/med/max "
        "| cos min / p5 / median (n) | worst per output |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lat, band, cos = r["latency_ratio"], r["latency_noise_band"], r["cosine"]
        actions = "; ".join(f"{p['pass']}: {p['guard_action']}" for p in r["passes"])
        per_output = ", ".join(f"{k}: {v:.4f}" for k, v in r["cosine_min_per_output"].items())
        lines.append(
            f"| {r['model']} | `{r['pipeline']}` | {actions} | {r['weight_params_ratio']:.3f} | "
            f"{lat['min']:.3f} / {lat['median']:.3f} / {lat['max']:.3f} | "
            f"{band['min']:.3f} / {band['median']:.3f} / {band['max']:.3f} | "
            f"{cos['min']:.4f} / {cos['p5']:.4f} / {cos['median']:.4f} ({r['heldout_samples']}) | "
            f"{per_output} |"
        )
    lines += ["", "Base latency (ms, median) and load average per model:", ""]
    seen = set()
    for r in rows:
        if r["model"] not in seen:
            seen.add(r["model"])
            lines.append(f"- {r['model']}: {r['base_ms']} ms; load {r['load_avg']}")
    lines += [
        "",
        "## slice-hidden per layer (d -> k kept, PCA energy kept, net weights removed)",
        "",
        "| model | pipeline | layer | d -> k | energy kept | weights removed |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        for d in r["slice_layers"]:
            lines.append(
                f"| {r['model']} | `{r['pipeline']}` | {d['layer']} | {d['d']} -> {d['k']} | "
                f"{d['energy_kept']:.4f} | {d['weights_removed']} |"
            )
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

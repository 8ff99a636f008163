"""Benchmark prune-channels: size, CPU latency and held-out fidelity, with and without refit.

Tables written to bench/results/:
  prune_main.{json,md}    ratio 0.25 (round-to 8) on nudenet-320n, rapidocr det/rec, the zoo
                          bert-encoder and the digits CNN; with and without reconstruction.
  prune_digits.{json,md}  the digits CNN at 2x fewer FLOPs: held-out accuracy on real labels.
  prune_sweep.{json,md}   all 10 real models at ratios 0.1/0.3/0.5: a valid model (checker
                          full_check + ONNX Runtime run) or a "nothing prunable" stat.
  prune_latency_aware.{json,md}  nudenet-320n at ratio 0.25 with latency-aware=false/true.

Every model first goes through the lossless default pipeline; that result is the baseline,
so the ratios measure pruning alone. Calibration data: models.calib.write_calib_npz (64
seeded samples; digits: digits_calib.npz). Held-out data: 16 samples from other seeds
(digits: digits_heldout.npz with labels); calibration never sees it. Latency: runtime.bench
interleaved on the CPU EP, 2 threads, median of the per-round ratios.

Run: .venv/bin/python bench/prune.py [--runs 30] [--only main,digits,sweep] [--models a,b]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import calib, fetch, zoo  # noqa: E402
from nnopt_graph.analysis.stats import summarize  # noqa: E402
from nnopt_graph.check.compare import compare_models  # noqa: E402
from nnopt_graph.core import io  # noqa: E402
from nnopt_graph.pipeline.base import PassContext  # noqa: E402
from nnopt_graph.pipeline.grammar import Pipeline  # noqa: E402
from nnopt_graph.pipeline.manager import PassManager  # noqa: E402
from nnopt_graph.runtime.bench import benchmark  # noqa: E402
from nnopt_graph.runtime.data import Dataset, input_specs, load_dataset  # noqa: E402
from nnopt_graph.runtime.session import create_session  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DIGITS = Path(__file__).resolve().parents[1] / "models" / "digits"
MAIN_MODELS = ["nudenet-320n", "rapidocr-det", "rapidocr-rec", "bert-encoder", "digits"]
WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
# (result key, importance, refit) of each pruned variant in the main table.
VARIANTS = [
    ("no_refit", "l2", False),
    ("refit", "l2", True),
    ("refit_activation", "activation", True),
]

logger = logging.getLogger("bench.prune")


def _load(name: str) -> ir.Model:
    if name == "digits":
        return io.load(DIGITS / "digits_cnn.onnx")
    if name in zoo.ZOO:
        return ir.serde.deserialize_model(zoo.ZOO[name]())
    return io.load(fetch.fetch(name))


def _data(
    name: str, model: ir.Model, tmp: Path, calib_samples: int = 64
) -> tuple[Dataset, Dataset]:
    specs = input_specs(model)
    if name == "digits":
        return (
            load_dataset(DIGITS / "digits_calib.npz", specs),
            load_dataset(DIGITS / "digits_heldout.npz", specs),
        )
    cal = calib.write_calib_npz(name, tmp / f"{name}_calib.npz", samples=calib_samples, seed=0)
    held = calib.write_calib_npz(name, tmp / f"{name}_heldout.npz", samples=16, seed=10_000)
    return load_dataset(cal, specs), load_dataset(held, specs)


def _shapes(dataset: Dataset) -> dict[str, list[int]]:
    feed = next(dataset.batches(1))
    return {k: list(v.shape) for k, v in feed.items()}


def _weight_params(path: Path) -> int:
    model = io.load(path)
    total = 0
    for graph in model.graphs():
        for node in graph:
            if node.op_type in WEIGHTED:
                for value in node.inputs[:2]:
                    if value is not None and value.const_value is not None:
                        total += value.const_value.size
    return total


def _run_pipeline(
    model: ir.Model, text: str, calibration: Dataset | None
) -> tuple[ir.Model, list[Any], float]:
    start = time.perf_counter()
    manager = PassManager(Pipeline.parse(text), context=PassContext(calibration=calibration))
    records = manager.run(model)
    assert manager.model is not None
    return manager.model, records, time.perf_counter() - start


def _check(path: Path, dataset: Dataset) -> None:
    onnx.checker.check_model(str(path), full_check=True)
    session = create_session(path, "cpu", threads=2)
    names = [o.name for o in session.get_outputs()]
    session.run(names, next(dataset.batches(1)))


def _accuracy(path: Path, held: Dataset, labels: np.ndarray) -> float:
    session = create_session(path, "cpu", threads=2)
    logits = session.run(None, {"input": np.asarray(held.arrays["input"])})[0]
    return float((logits.argmax(axis=1) == labels).mean())


def _main_entry(name: str, ratio: float, runs: int, tmp: Path) -> dict[str, Any]:
    model = _load(name)
    calibration, held = _data(name, model, tmp)
    base, _, _ = _run_pipeline(model, "default", None)
    base_path = tmp / f"{name}_base.onnx"
    io.save(base, base_path)
    shapes = _shapes(calibration)
    entry: dict[str, Any] = {
        "model": name,
        "ratio": ratio,
        "calib_samples": min(64, calibration.num_samples),
    }
    base_summary = summarize(base_path, shapes)
    base_weights = _weight_params(base_path)
    paths = [base_path]
    for key, importance, refit in VARIANTS:
        text = (
            f"prune-channels{{ratio={ratio} round-to=8 importance={importance} "
            f"reconstruct={'true' if refit else 'false'}}}"
        )
        pruned, records, seconds = _run_pipeline(base.clone(), text, calibration)
        path = tmp / f"{name}_pruned_{key}.onnx"
        io.save(pruned, path)
        _check(path, held)
        summary = summarize(path, shapes)
        fidelity = compare_models(base_path, path, held)
        record = records[-1]
        entry[key] = {
            "pipeline": text,
            "seconds": round(seconds, 1),
            "stats": {k: v for k, v in record.stats.items() if v},
            "params_ratio": summary.params / base_summary.params,
            "weight_params_ratio": _weight_params(path) / base_weights,
            "flops_ratio": (summary.flops / base_summary.flops) if base_summary.flops else None,
            "cosine_min": fidelity.cosine_min,
            "groups": [
                {
                    k: d.get(k)
                    for k in ("group", "status", "channels", "units", "units_after", "importance")
                }
                for d in record.decisions
            ],
        }
        if name == "digits":
            labels = np.load(DIGITS / "digits_heldout_labels.npy")
            entry[key]["accuracy"] = _accuracy(path, held, labels)
            entry["accuracy_base"] = _accuracy(base_path, held, labels)
        paths.append(path)
        logger.info(
            "%s %s: cosine %.4f params %.3f",
            name,
            key,
            fidelity.cosine_min,
            entry[key]["params_ratio"],
        )
    results = benchmark(paths, ["cpu"], input_shapes=shapes, runs=runs, warmup=5, threads=2)
    entry["latency"] = {"runs": runs, "threads": 2, "base_ms_p50": results[0].latency_ms["p50"]}
    for (key, _, _), result in zip(VARIANTS, results[1:], strict=True):
        entry[key]["latency_ratio"] = result.ratio_vs_first
        entry[key]["latency_ms_p50"] = result.latency_ms["p50"]
    entry["base"] = {
        "params": base_summary.params,
        "weight_params": base_weights,
        "flops": base_summary.flops,
    }
    return entry


def _flops_of(model: ir.Model, shapes: dict[str, list[int]], tmp: Path) -> int:
    path = tmp / "probe.onnx"
    io.save(model, path)
    return int(summarize(path, shapes).flops or 0)


def _digits_entry(runs: int, tmp: Path) -> dict[str, Any]:
    """Find the smallest ratio giving <= 0.5x FLOPs, then prune with and without refit."""
    model = _load("digits")
    calibration, held = _data("digits", model, tmp)
    labels = np.load(DIGITS / "digits_heldout_labels.npy")
    base, _, _ = _run_pipeline(model, "default", None)
    base_path = tmp / "digits_base.onnx"
    io.save(base, base_path)
    shapes = _shapes(calibration)
    base_flops = _flops_of(base, shapes, tmp)
    options = "round-to=8 calib-samples=512"
    lo, hi = 0.0, 0.75
    for _ in range(12):
        mid = (lo + hi) / 2
        pruned, _, _ = _run_pipeline(
            base.clone(),
            f"prune-channels{{ratio={mid:.4f} reconstruct=false {options}}}",
            calibration,
        )
        if _flops_of(pruned, shapes, tmp) <= 0.5 * base_flops:
            hi = mid
        else:
            lo = mid
    ratio = round(hi, 4)
    entry: dict[str, Any] = {
        "model": "digits",
        "ratio_for_half_flops": ratio,
        "accuracy_base": _accuracy(base_path, held, labels),
        "heldout_samples": int(len(labels)),
        "calib_samples": 512,
    }
    paths = [base_path]
    for refit, importance in ((False, "l2"), (True, "l2"), (True, "activation")):
        text = f"prune-channels{{ratio={ratio} importance={importance} reconstruct={'true' if refit else 'false'} {options}}}"
        pruned, records, seconds = _run_pipeline(base.clone(), text, calibration)
        path = tmp / f"digits_half_{importance}_{refit}.onnx"
        io.save(pruned, path)
        _check(path, held)
        summary = summarize(path, shapes)
        key = f"{'refit' if refit else 'no_refit'}_{importance}"
        entry[key] = {
            "pipeline": text,
            "seconds": round(seconds, 2),
            "flops_ratio": summary.flops / base_flops,
            "params_ratio": summary.params / summarize(base_path, shapes).params,
            "accuracy": _accuracy(path, held, labels),
            "cosine_min": compare_models(base_path, path, held).cosine_min,
            "channels": [
                d.get("channels") for d in records[-1].decisions if d.get("status") == "pruned"
            ],
        }
        entry[key]["accuracy_loss_points"] = 100 * (entry["accuracy_base"] - entry[key]["accuracy"])
        paths.append(path)
    results = benchmark(
        paths, ["cpu"], input_shapes={"input": [1, 1, 8, 8]}, runs=runs, warmup=5, threads=2
    )
    entry["latency_ratio_refit_l2"] = results[2].ratio_vs_first
    entry["latency_runs"] = runs
    return entry


def _sweep_entry(name: str, tmp: Path) -> list[dict[str, Any]]:
    model = _load(name)
    calibration, held = _data(name, model, tmp, calib_samples=8)
    base, _, _ = _run_pipeline(model, "default", None)
    base_path = tmp / f"{name}_sweep_base.onnx"
    io.save(base, base_path)
    shapes = _shapes(calibration)
    base_params = summarize(base_path, shapes, with_flops=False).params
    rows = []
    for ratio in (0.1, 0.3, 0.5):
        text = f"prune-channels{{ratio={ratio} reconstruct=false}}"
        row: dict[str, Any] = {"model": name, "ratio": ratio, "pipeline": text}
        try:
            pruned, records, seconds = _run_pipeline(base.clone(), text, calibration)
            path = tmp / f"{name}_sweep_{ratio}.onnx"
            io.save(pruned, path)
            _check(path, held)
            fidelity = compare_models(base_path, path, held)
            stats = records[-1].stats
            row.update(
                {
                    "valid": True,
                    "nothing_prunable": bool(stats.get("skipped-nothing-prunable")),
                    "groups_pruned": stats["groups-pruned"],
                    "groups_frozen": stats["skipped-groups-frozen"],
                    "groups_protected": stats["skipped-groups-protected"],
                    "params_ratio": summarize(path, shapes, with_flops=False).params / base_params,
                    "shapes_match": fidelity.shapes_match,
                    "cosine_min": fidelity.cosine_min,
                    "seconds": round(seconds, 2),
                }
            )
        except Exception as exc:  # noqa: BLE001  (a failure is a result to report)
            row.update({"valid": False, "error": f"{type(exc).__name__}: {exc}"[:300]})
        rows.append(row)
        logger.info(
            "sweep %s %.1f: %s",
            name,
            ratio,
            {k: row.get(k) for k in ("valid", "groups_pruned", "params_ratio")},
        )
    return rows


def _latency_aware_entry(name: str, runs: int, tmp: Path) -> dict[str, Any]:
    """The same ratio with and without latency-aware widths (no refit, to isolate widths)."""
    model = _load(name)
    calibration, _ = _data(name, model, tmp, calib_samples=8)
    base, _, _ = _run_pipeline(model, "default", None)
    base_path = tmp / f"{name}_la_base.onnx"
    io.save(base, base_path)
    shapes = _shapes(calibration)
    base_summary = summarize(base_path, shapes)
    entry: dict[str, Any] = {"model": name, "runs": runs}
    paths = [base_path]
    for aware in (False, True):
        text = f"prune-channels{{ratio=0.25 round-to=8 reconstruct=false latency-aware={str(aware).lower()}}}"
        pruned, records, seconds = _run_pipeline(base.clone(), text, calibration)
        path = tmp / f"{name}_la_{aware}.onnx"
        io.save(pruned, path)
        _check(path, calibration)
        summary = summarize(path, shapes)
        choices: dict[str, int] = {}
        changed = []
        for d in records[-1].decisions:
            if "width_choice" in d:
                choices[d["width_choice"]] = choices.get(d["width_choice"], 0) + 1
                if d["width_choice"] != "as planned":
                    changed.append(
                        {k: d[k] for k in ("group", "channels", "latency_ms", "width_choice")}
                    )
        entry["aware" if aware else "plain"] = {
            "pipeline": text,
            "seconds": round(seconds, 1),
            "flops_ratio": summary.flops / base_summary.flops,
            "params_ratio": summary.params / base_summary.params,
            "width_choices": choices,
            "changed": changed,
        }
        paths.append(path)
    results = benchmark(paths, ["cpu"], input_shapes=shapes, runs=runs, warmup=5, threads=2)
    entry["plain"]["latency_ratio"] = results[1].ratio_vs_first
    entry["aware"]["latency_ratio"] = results[2].ratio_vs_first
    return entry


def _write_latency_aware(entry: dict[str, Any]) -> None:
    (RESULTS / "prune_latency_aware.json").write_text(
        json.dumps(entry, indent=2, default=float) + "\n"
    )
    lines = [
        f"# latency-aware widths on {entry['model']} (ratio 0.25, round-to 8, no refit)",
        "",
        "Each group's producer and consumers are timed as a small model at the planned width and",
        "one step of 8 around it (20 runs each, 2 threads); a wider width is taken when it costs",
        "nothing, a narrower one only when latency falls faster than the channel count.",
        f"End-to-end latency: {entry['runs']} interleaved runs, CPU EP, 2 threads, median ratio to the",
        "default-pipeline model (min-max); the machine was shared with other benchmarks.",
        "",
        "| variant | FLOPs | params | CPU latency | width choices |",
        "|---|---|---|---|---|",
    ]
    for key in ("plain", "aware"):
        r = entry[key]
        lines.append(
            f"| latency-aware={'true' if key == 'aware' else 'false'} | {r['flops_ratio']:.3f} | "
            f"{r['params_ratio']:.3f} | {_fmt_ratio(r['latency_ratio'])} | {r['width_choices'] or '-'} |"
        )
    lines += ["", "Widths changed (planned width first; latency_ms per candidate width):", ""]
    lines += [
        f"- {c['group']}: {c['channels']} {c['width_choice']} {c['latency_ms']}"
        for c in entry["aware"]["changed"]
    ]
    lines.append("")
    (RESULTS / "prune_latency_aware.md").write_text("\n".join(lines))


def _fmt_ratio(r: dict[str, float] | None) -> str:
    if not r:
        return "-"
    return f"{r['median']:.3f} ({r['min']:.2f}-{r['max']:.2f})"


def _write_main(entries: list[dict[str, Any]], runs: int) -> None:
    (RESULTS / "prune_main.json").write_text(json.dumps(entries, indent=2, default=float) + "\n")
    lines = [
        "# prune-channels at ratio 0.25 (round-to 8)",
        "",
        "Each model went through the lossless default pipeline first; that is the baseline (1.000).",
        "Calibration: 64 seeded samples from `models.calib.write_calib_npz` (digits: the first 64 of",
        "`digits_calib.npz`); held-out: 16 samples from other seeds (digits: the 360 `digits_heldout.npz`",
        "images). Real-model inputs are synthetic (random images, rendered text pages), not photos.",
        f"Latency: `runtime.bench.benchmark`, CPU EP, 2 threads, {runs} interleaved rounds after 5 warm-up",
        "runs, median of per-round ratios to the baseline (min-max in brackets); a shared 2-core machine.",
        "Goals: weight params <= 0.7, latency <= 0.85, held-out cosine >= 0.95. 'weight params' counts",
        "the constant weight operands of Conv/ConvTranspose/Gemm/MatMul; 'params' every initializer",
        "(biases, embeddings, shape constants too).",
        "",
        "| model | importance | refit | params | weight params | FLOPs | CPU latency | held-out cosine | prune time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        for key, importance, refit in VARIANTS:
            r = e[key]
            lat = r["latency_ratio"]
            label = f"{importance} | {'yes' if refit else 'no'}"
            flops = f"{r['flops_ratio']:.3f}" if r["flops_ratio"] else "-"
            acc = (
                f", acc {r['accuracy']:.4f} (base {e['accuracy_base']:.4f})"
                if "accuracy" in r
                else ""
            )
            lines.append(
                f"| {e['model']} | {label} | {r['params_ratio']:.3f} | {r['weight_params_ratio']:.3f} | {flops} | "
                f"{_fmt_ratio(lat)} | {r['cosine_min']:.4f}{acc} | {r['seconds']:.1f} s |"
            )
    lines.append("")
    (RESULTS / "prune_main.md").write_text("\n".join(lines))


def _write_digits(entry: dict[str, Any]) -> None:
    (RESULTS / "prune_digits.json").write_text(json.dumps(entry, indent=2, default=float) + "\n")
    lines = [
        "# digits CNN at 2x fewer FLOPs",
        "",
        f"Ratio {entry['ratio_for_half_flops']} (bisection: the smallest ratio giving <= 0.5x the FLOPs of the",
        "default-pipeline model), first and last layers protected. Calibration: 512 training images;",
        f"accuracy on the {entry['heldout_samples']} held-out images with their real labels. Goal: <= 1 point lost.",
        "",
        f"Baseline accuracy: {entry['accuracy_base']:.4f}.",
        "",
        "| variant | FLOPs | params | accuracy | loss (points) | cosine | channels kept |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in ("no_refit_l2", "refit_l2", "refit_activation"):
        r = entry[key]
        lines.append(
            f"| {key} | {r['flops_ratio']:.3f} | {r['params_ratio']:.3f} | {r['accuracy']:.4f} | "
            f"{r['accuracy_loss_points']:.2f} | {r['cosine_min']:.4f} | {r['channels']} |"
        )
    lines += [
        "",
        f"CPU latency ratio (refit l2, {entry['latency_runs']} interleaved runs): {_fmt_ratio(entry['latency_ratio_refit_l2'])}",
        "",
    ]
    (RESULTS / "prune_digits.md").write_text("\n".join(lines))


def _write_sweep(rows: list[dict[str, Any]]) -> None:
    (RESULTS / "prune_sweep.json").write_text(json.dumps(rows, indent=2, default=float) + "\n")
    lines = [
        "# prune-channels on the 10 real models at ratios 0.1, 0.3, 0.5 (no refit)",
        "",
        "After the default pipeline; each result is saved, passes `onnx.checker` full_check, runs under",
        "ONNX Runtime (CPU) and is compared with the baseline on 16 held-out synthetic samples.",
        "",
        "| model | ratio | valid | groups pruned / frozen / protected | params | shapes match | cosine | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if not r.get("valid"):
            lines.append(f"| {r['model']} | {r['ratio']} | NO | - | - | - | - | {r.get('error')} |")
            continue
        note = "nothing prunable" if r["nothing_prunable"] else ""
        lines.append(
            f"| {r['model']} | {r['ratio']} | yes | {r['groups_pruned']} / {r['groups_frozen']} / {r['groups_protected']} | "
            f"{r['params_ratio']:.3f} | {r['shapes_match']} | {r['cosine_min']:.4f} | {note} |"
        )
    lines.append("")
    (RESULTS / "prune_sweep.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks and write their tables."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--only", default="main,digits,sweep,latency")
    parser.add_argument("--models", default=",".join(MAIN_MODELS))
    parser.add_argument("--sweep-models", default=",".join(fetch.REAL_MODELS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("nnopt_graph", "onnxscript", "onnx_ir"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    RESULTS.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(","))
    with tempfile.TemporaryDirectory(prefix="bench-prune-") as tmp_name:
        tmp = Path(tmp_name)
        if "main" in only:
            entries = [_main_entry(n, 0.25, args.runs, tmp) for n in args.models.split(",")]
            _write_main(entries, args.runs)
        if "digits" in only:
            _write_digits(_digits_entry(args.runs, tmp))
        if "latency" in only:
            _write_latency_aware(_latency_aware_entry("nudenet-320n", args.runs, tmp))
        if "sweep" in only:
            rows = []
            for name in args.sweep_models.split(","):
                rows.extend(_sweep_entry(name, tmp))
            _write_sweep(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Quantization presets on zoo, digits and real models, side by side with onnxruntime.quantization.

--target cpu: nnopt-graph's ``--target cpu`` preset (lossless cleanup + quantize-int8 under
the default guard cosine>=0.99) against onnxruntime.quantization's quantize_static (QDQ,
same calibration data) and quantize_dynamic, per model: validity, output cosine on
held-out data (digits: top-1 accuracy on the held-out labels), and CPU EP latency ratios
to the input model, all four models timed in one interleaved run — once with
runtime.bench.benchmark (thread-pool spinning on, ONNX Runtime's default) and once with
runtime.quant_bench.compare_latency (spinning off; see the notes in the results).

--target cuda: the ``--target cuda`` preset (cleanup + quantize-fp16 + quantize-int4 for
large MatMuls): validity, size and output cosine, compared on the CPU (no GPU here).

--calib-rss: peak RSS of quantize-int8's calibration on rapidocr det with 256 samples,
in a separate process under /usr/bin/time -v, as bench/calib_streaming.py measures
plain streaming.

Writes bench/results/quantize_{cpu,cuda,calib_rss}.{json,md}.

Usage: python bench/quantize.py --target cpu [--models a,b] [--samples 64] [--runs 20]
       python bench/quantize.py --target cuda
       python bench/quantize.py --calib-rss [--rss-samples 256]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models import fetch, zoo  # noqa: E402
from models.calib import write_calib_npz  # noqa: E402
from nnopt_graph import optimize  # noqa: E402
from nnopt_graph.check.compare import compare_models  # noqa: E402
from nnopt_graph.core.io import load  # noqa: E402
from nnopt_graph.pipeline.registry import PRESETS  # noqa: E402
from nnopt_graph.runtime.bench import benchmark  # noqa: E402
from nnopt_graph.runtime.data import input_specs, load_dataset  # noqa: E402
from nnopt_graph.runtime.quant_bench import compare_latency  # noqa: E402

RESULTS = ROOT / "bench" / "results"
CPU_MODELS = [
    "digits-cnn",
    "digits-cnn@64",
    "zoo/bert-encoder",
    "nudenet-320n",
    "rapidocr-det",
    "rapidocr-rec",
    "rapidocr-cls",
]
CUDA_MODELS = [f"zoo/{n}" for n in zoo.ZOO] + [
    "digits-cnn",
    "nudenet-320n",
    "rapidocr-det",
    "rapidocr-rec",
    "rapidocr-cls",
]
DIGITS = ROOT / "models" / "digits"


def _load_avg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _prepare(name: str, work: Path, samples: int, heldout: int) -> tuple[Path, Path, Path]:
    """(model, calibration npz, held-out npz) for a model name."""
    if _digits(name):
        return (
            DIGITS / "digits_cnn.onnx",
            DIGITS / "digits_calib.npz",
            DIGITS / "digits_heldout.npz",
        )
    key = name.removeprefix("zoo/")
    if name.startswith("zoo/"):
        path = work / f"{key}.onnx"
        onnx.save(zoo.ZOO[key](), path)
    else:
        path = fetch.fetch(key)
    calib = write_calib_npz(key, work / f"{key}_calib.npz", samples=samples, seed=0)
    # Held-out feeds come from seeds calibration never used.
    held = write_calib_npz(key, work / f"{key}_heldout.npz", samples=heldout, seed=10_000)
    return path, calib, held


class _Reader:
    """onnxruntime.quantization CalibrationDataReader over an npz (one feed per sample)."""

    def __init__(self, path: Path, model: Path) -> None:
        self.data = load_dataset(path, input_specs(load(model)))
        self.iterator = iter(self.data.batches())

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.iterator, None)

    def rewind(self) -> None:
        self.iterator = iter(self.data.batches())


def _ort_static(model: Path, calib: Path, out: Path) -> str | None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    try:
        quantize_static(
            str(model),
            str(out),
            _Reader(calib, model),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=False,
        )
    except Exception as exc:  # what the user would see
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    return None


def _ort_dynamic(model: Path, out: Path) -> str | None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        quantize_dynamic(str(model), str(out), weight_type=QuantType.QInt8)
    except Exception as exc:
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    return None


def _valid(path: Path) -> str | None:
    try:
        onnx.checker.check_model(str(path))
        from nnopt_graph.runtime.session import create_session

        create_session(path, "cpu", threads=1)
    except Exception as exc:
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    return None


def _fidelity(reference: Path, candidate: Path, held: Path) -> dict[str, Any]:
    data = load_dataset(held, input_specs(load(reference)))
    result = compare_models(reference, candidate, data, threads=2)
    return {"cosine": result.cosine_min, "samples": result.samples}


def _digits_accuracy(path: Path) -> float:
    from nnopt_graph.runtime.session import create_session

    session = create_session(path, "cpu", threads=2)
    x = np.load(DIGITS / "digits_heldout.npz")["input"]
    labels = np.load(DIGITS / "digits_heldout_labels.npy")
    logits = session.run(None, {session.get_inputs()[0].name: x})[0]
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def _class_score_cosine(reference: Path, candidate: Path, held: Path) -> float:
    """nudenet: cosine of its 18 class-score rows alone.

    The 4 box rows (pixels) dominate the whole output's cosine.
    """
    from nnopt_graph.runtime.session import create_session

    data = load_dataset(held, input_specs(load(reference)))
    ref, cand = (
        create_session(reference, "cpu", threads=2),
        create_session(candidate, "cpu", threads=2),
    )
    dot = rr = cc = 0.0
    for feed in data.batches():
        a = ref.run(None, feed)[0][:, 4:].astype(np.float64).ravel()
        b = cand.run(None, feed)[0][:, 4:].astype(np.float64).ravel()
        dot, rr, cc = dot + float(a @ b), rr + float(a @ a), cc + float(b @ b)
    return dot / (rr * cc) ** 0.5 if rr > 0 and cc > 0 else 0.0  # all-zero scores: 0


def _first_feed(held: Path, model: Path, batch: int) -> dict[str, np.ndarray]:
    data = load_dataset(held, input_specs(load(model)))
    return next(data.batches(batch))


def _digits(name: str) -> bool:
    return name.split("@")[0] == "digits-cnn"


def run_cpu(
    names: list[str], samples: int, heldout: int, runs: int, work: Path
) -> list[dict[str, Any]]:
    """The --target cpu table, one row per model."""
    rows = []
    for name in names:
        print(f"== {name} (load {_load_avg()})", flush=True)
        model, calib, held = _prepare(name, work, samples, heldout)
        tag = name.replace("/", "_")
        variants: dict[str, Path] = {"input": model}
        # The lossless default pipeline alone, to tell its effect from quantization's.
        cleaned = work / f"{tag}_cleanup.onnx"
        optimize(model, cleaned, calib=held)
        variants["cleanup"] = cleaned
        row: dict[str, Any] = {"model": name, "calib": str(calib.name), "cleanup": {}}
        # nnopt-graph --target cpu
        ours = work / f"{tag}_nnopt.onnx"
        start = time.perf_counter()
        try:
            # name@B: the preset with quantize-int8 timing batches of B (speed-batch).
            pipeline = None
            if "@" in name:
                speed_batch = name.split("@")[1]
                pipeline = f"{PRESETS['default']},quantize-int8{{speed-batch={speed_batch}}}"
            result = optimize(model, ours, pipeline, target="cpu", calib=calib, eval_data=held)
            record = next(r for r in result.records if r.name == "quantize-int8")
            row["nnopt"] = {
                "seconds": round(time.perf_counter() - start, 1),
                "guard_action": record.guard_action,
                "stats": record.stats,
                "excluded": len([x for x in record.options.get("exclude", "").split(",") if x]),
                "decisions": record.decisions,
                "guard": result.report.get("guard"),
            }
            variants["nnopt"] = ours
        except Exception as exc:
            row["nnopt"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            traceback.print_exc()
        # onnxruntime.quantization
        static = work / f"{tag}_ort_static.onnx"
        start = time.perf_counter()
        error = _ort_static(model, calib, static)
        row["ort_static"] = {"seconds": round(time.perf_counter() - start, 1), "error": error}
        if error is None:
            variants["ort_static"] = static
        dynamic = work / f"{tag}_ort_dynamic.onnx"
        error = _ort_dynamic(model, dynamic)
        row["ort_dynamic"] = {"error": error}
        if error is None:
            variants["ort_dynamic"] = dynamic
        for key in list(variants):
            if key == "input":
                continue
            invalid = _valid(variants[key])
            row[key]["valid"] = invalid is None
            if invalid:
                row[key]["error"] = invalid
                del variants[key]
                continue
            row[key]["size_bytes"] = variants[key].stat().st_size
            try:
                row[key].update(_fidelity(model, variants[key], held))
            except Exception as exc:
                row[key]["error"] = f"fidelity: {str(exc)[:200]}"
            if _digits(name):
                row[key]["top1"] = _digits_accuracy(variants[key])
            if name == "nudenet-320n":
                row[key]["class_cosine"] = _class_score_cosine(model, variants[key], held)
        row["input_size_bytes"] = model.stat().st_size
        if _digits(name):
            row["input_top1"] = _digits_accuracy(model)
        # Latency: all variants in one interleaved run, ratios to the input model.
        keys = list(variants)
        paths = [variants[k] for k in keys]
        # digits: a batch of 64 images (one 8x8 image is too small to time); others: 1 feed.
        batch = 64 if _digits(name) else 1
        feed = _first_feed(held, model, batch)
        shapes = {k: list(v.shape) for k, v in feed.items()}
        # At least 3 s of rounds (up to 5000) so that sub-millisecond models are timed
        # long enough; runtime.bench.benchmark then gets the same round count.
        spinless = compare_latency(
            paths, feed, runs=runs, warmup=5, threads=2, min_seconds=3.0, max_runs=5000
        )
        bench = benchmark(
            paths, ["cpu"], input_shapes=shapes, runs=spinless.runs, warmup=5, threads=2
        )
        row["latency"] = {
            k: {
                "bench_p50_ms": b.latency_ms["p50"],
                "bench_ratio": b.ratio_vs_first,
                "nospin_p50_ms": spinless.p50_ms[i],
                "nospin_ratio": spinless.ratio[i],
            }
            for i, (k, b) in enumerate(zip(keys, bench, strict=True))
        }
        row["runs"] = spinless.runs
        row["batch"] = {k: list(v.shape) for k, v in feed.items()}
        row["load_avg"] = _load_avg()
        rows.append(row)
        print(
            json.dumps({k: v for k, v in row.items() if k != "nnopt"}, default=str)[:1500],
            flush=True,
        )
        write_cpu(rows, runs)  # after every model, so a failure keeps what was measured
        if "nnopt" in row and "stats" in row["nnopt"]:
            print("nnopt", row["nnopt"]["guard_action"], row["nnopt"]["stats"], flush=True)
    return rows


def _fmt_ratio(entry: dict[str, Any] | None, key: str) -> str:
    if not entry:
        return "—"
    r = entry[key]
    return f"{r['median']:.2f} ({r['min']:.2f}–{r['max']:.2f})"


def _cell(row: dict[str, Any], variant: str) -> str:
    entry = row.get(variant) or {}
    if entry.get("error"):
        return "failed: " + entry["error"][:60].replace("|", "/")
    if "cosine" not in entry:
        return "—"
    text = f"{entry['cosine']:.4f}"
    if "top1" in entry:
        text += f" / top-1 {entry['top1'] * 100:.2f}%"
    if "class_cosine" in entry:
        text += f" (class scores {entry['class_cosine']:.4f})"
    return text


def write_cpu(rows: list[dict[str, Any]], runs: int) -> None:
    """bench/results/quantize_cpu.{json,md}."""
    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared with other jobs",
        "onnxruntime": __import__("onnxruntime").__version__,
        "runs": runs,
    }
    (RESULTS / "quantize_cpu.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2, default=str) + "\n"
    )
    lines = [
        "# int8 on the CPU EP: nnopt-graph --target cpu vs onnxruntime.quantization",
        "",
        f"Machine: {meta['machine']}; onnxruntime {meta['onnxruntime']} CPU EP, 2 threads. "
        "Calibration: 64 generated samples per real/zoo model (models.calib.write_calib_npz, "
        "seeds 0-63), the digits training split for digits; held-out: 16 other seeds "
        "(digits: its 360 held-out images with labels). nnopt-graph: `--target cpu` preset "
        "under the default guard `cosine>=0.99` measured on the held-out data. ORT static: "
        "quantize_static QDQ, QUInt8 activations, QInt8 weights, per-tensor, MinMax, same "
        "calibration data, on the input model. ORT dynamic: quantize_dynamic QInt8. "
        "`digits-cnn@64`: the same preset with `quantize-int8{speed-batch=64}` (its speed "
        "check times batches of 64 images instead of one).",
        "",
        "Cosine: minimum over outputs against the input model on the held-out data; for "
        "nudenet also of its 18 class-score rows alone (its 4 box rows, in pixels, dominate "
        "the whole output). The generated inputs (uniform noise images, text-like pages for "
        "OCR) are not real photos or text: no detections, and accuracy cannot be judged on "
        "them; only the digits CNN has real held-out labels.",
        "",
        "| model | nnopt-graph cosine | ORT static cosine | ORT dynamic cosine | nnopt int8 nodes / excluded | nnopt decision |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        ours = row.get("nnopt", {})
        stats = ours.get("stats", {})
        decision = ours.get("guard_action", ours.get("error", "?"))
        if stats.get("skipped-not-faster-or-unfused"):
            decision += " (int8 not faster: float kept)"
        lines.append(
            f"| {row['model']} | {_cell(row, 'nnopt')} | {_cell(row, 'ort_static')} | "
            f"{_cell(row, 'ort_dynamic')} | {stats.get('nodes-quantized', 0)} / {ours.get('excluded', 0)} | "
            f"{decision} |"
        )
    lines += [
        "",
        "Latency relative to the input model, median (min–max) of per-round ratios, interleaved "
        f"rounds (at least {runs}, and at least 3 s of the input model; the count is in the "
        "table) after 5 warm-up runs, all variants in the same run. Left: "
        "runtime.bench.benchmark (ONNX Runtime's default thread-pool spinning); right: "
        "runtime.quant_bench.compare_latency (spinning off). 'cleanup' is the lossless "
        "default pipeline alone (what nnopt-graph writes when quantize-int8 keeps float).",
        "",
        "| model | input shape | rounds | input p50 ms (no spin) | cleanup | nnopt-graph | ORT static | ORT dynamic | cleanup (no spin) | nnopt (no spin) | ORT static (no spin) | ORT dynamic (no spin) | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lat = row["latency"]
        lines.append(
            f"| {row['model']} | {'x'.join(map(str, next(iter(row['batch'].values()))))} | "
            f"{row['runs']} | {lat['input']['nospin_p50_ms']:.2f} | "
            f"{_fmt_ratio(lat.get('cleanup'), 'bench_ratio')} | "
            f"{_fmt_ratio(lat.get('nnopt'), 'bench_ratio')} | "
            f"{_fmt_ratio(lat.get('ort_static'), 'bench_ratio')} | "
            f"{_fmt_ratio(lat.get('ort_dynamic'), 'bench_ratio')} | "
            f"{_fmt_ratio(lat.get('cleanup'), 'nospin_ratio')} | "
            f"{_fmt_ratio(lat.get('nnopt'), 'nospin_ratio')} | "
            f"{_fmt_ratio(lat.get('ort_static'), 'nospin_ratio')} | "
            f"{_fmt_ratio(lat.get('ort_dynamic'), 'nospin_ratio')} | {row['load_avg']} |"
        )
    (RESULTS / "quantize_cpu.md").write_text("\n".join(lines) + "\n")


def run_cuda(names: list[str], samples: int, heldout: int, work: Path) -> list[dict[str, Any]]:
    """The --target cuda table (fp16/int4 checked on the CPU EP)."""
    rows = []
    for name in names:
        print(f"== {name}", flush=True)
        model, calib, held = _prepare(name, work, samples, heldout)
        out = work / f"{name.replace('/', '_')}_cuda.onnx"
        row: dict[str, Any] = {"model": name}
        try:
            result = optimize(
                model, out, target="cuda", calib=calib, eval_data=held, guard="cosine>=0.999"
            )
            records = {r.name: r for r in result.records}
            row.update(
                valid=_valid(out) is None,
                cosine=result.fidelity.cosine_min if result.fidelity else None,
                size_in=model.stat().st_size,
                size_out=out.stat().st_size,
                fp16=records["quantize-fp16"].stats,
                fp16_action=records["quantize-fp16"].guard_action,
                int4=records["quantize-int4"].stats,
            )
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        # TensorRT-style int8 on the same model (QDQ run by the CPU EP: no TensorRT here).
        trt = work / f"{name.replace('/', '_')}_trt.onnx"
        try:
            result = optimize(model, trt, target="tensorrt", calib=calib, eval_data=held)
            record = next(r for r in result.records if r.name == "quantize-int8")
            row["tensorrt"] = {
                "cosine": result.fidelity.cosine_min if result.fidelity else None,
                "guard_action": record.guard_action,
                "nodes": record.stats.get("nodes-quantized", 0),
                "excluded": len([x for x in record.options.get("exclude", "").split(",") if x]),
            }
        except Exception as exc:
            row["tensorrt"] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        rows.append(row)
        print(json.dumps(row, default=str)[:800], flush=True)
    return rows


INT4_CASES = [
    ("zoo/bert-encoder", "quantize-int4{min-elements=4096 method=rtn}"),
    ("zoo/bert-encoder", "quantize-int4{min-elements=4096 method=awq}"),
    ("zoo/bert-encoder", "quantize-int4{min-elements=4096 method=rtn symmetric=false}"),
    ("zoo/bert-encoder", "quantize-int4{min-elements=4096 method=rtn format=qdq}"),
    ("rapidocr-rec", "quantize-int4{min-elements=4096 method=rtn}"),
    ("rapidocr-rec", "quantize-int4{min-elements=4096 method=awq}"),
]


def run_int4(samples: int, heldout: int, work: Path) -> list[dict[str, Any]]:
    """int4 weight-only on models whose MatMuls are below the preset's size threshold."""
    rows = []
    for name, text in INT4_CASES:
        model, calib, held = _prepare(name, work, samples, heldout)
        out = work / "int4.onnx"
        row: dict[str, Any] = {"model": name, "pipeline": text}
        try:
            result = optimize(
                model, out, f"default,{text}", calib=calib, eval_data=held, guard="cosine>=0.0"
            )
            record = next(r for r in result.records if r.name == "quantize-int4")
            row.update(
                cosine=result.fidelity.cosine_min,
                size_in=model.stat().st_size,
                size_out=out.stat().st_size,
                matmuls=record.stats.get("matmuls-int4", 0),
            )
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        rows.append(row)
        print(json.dumps(row, default=str), flush=True)
    return rows


def write_cuda(rows: list[dict[str, Any]], int4: list[dict[str, Any]]) -> None:
    """bench/results/quantize_cuda.{json,md}."""
    (RESULTS / "quantize_cuda.json").write_text(
        json.dumps({"rows": rows, "int4": int4}, indent=2, default=str) + "\n"
    )
    lines = [
        "# --target cuda: fp16 (+ int4 for large MatMuls), checked on the CPU",
        "",
        "`nnopt-graph --target cuda` preset (cleanup, quantize-fp16, quantize-int4) under the guard "
        "`cosine>=0.999`; calibration 64 generated samples (digits: training split), cosine on 16 "
        "held-out samples (digits: 360 held-out images) with the CPU EP, which runs float16 "
        "nodes through its own Casts to float32 where it lacks float16 kernels: the cosine "
        "reflects float16 storage between nodes, not float16 arithmetic. No GPU was available: "
        "CUDA EP latency of fp16 against fp32 is not measured.",
        "",
        "| model | valid | cosine | size in → out (MB) | fp16 nodes | kept fp32 (blocked / overflow / reductions / subgraph) | Casts | int4 MatMuls |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['model']} | failed: {row['error'][:80]} | | | | | | |")
            continue
        s = row["fp16"]
        kept = " / ".join(
            str(s.get(k, 0))
            for k in (
                "skipped-blocked-ops",
                "skipped-overflow",
                "skipped-large-reductions",
                "skipped-nodes-in-subgraphs",
            )
        )
        lines.append(
            f"| {row['model']} | {'yes' if row['valid'] else 'NO'} | {row['cosine']:.6f} | "
            f"{row['size_in'] / 1e6:.2f} → {row['size_out'] / 1e6:.2f} | {s.get('nodes-fp16', 0)} | {kept} | "
            f"{s.get('casts-inserted', 0)} | {row['int4'].get('matmuls-int4', 0)} |"
        )
    lines += [
        "",
        "## int4 weight-only below the preset's size threshold",
        "",
        "The preset quantizes MatMuls of >= 262144 weights; none of these models has one, so "
        "the preset's int4 step changes nothing above. Here `quantize-int4{min-elements=4096}` "
        "after the default pipeline (no guard), cosine on the held-out data with the CPU EP "
        "(MatMulNBits has CPU kernels):",
        "",
        "| model | pipeline | MatMuls int4 | size in → out (MB) | cosine |",
        "|---|---|---|---|---|",
    ]
    for row in int4:
        if "error" in row:
            lines.append(
                f"| {row['model']} | `{row['pipeline']}` | failed: {row['error'][:80]} | | |"
            )
            continue
        lines.append(
            f"| {row['model']} | `{row['pipeline']}` | {row['matmuls']} | "
            f"{row['size_in'] / 1e6:.2f} → {row['size_out'] / 1e6:.2f} | {row['cosine']:.5f} |"
        )
    lines += [
        "",
        "## TensorRT-style int8 (`--target tensorrt`), checked on the CPU",
        "",
        "Symmetric int8 QDQ on the inputs of Conv/Gemm/MatMul and residual Add inputs, default "
        "guard `cosine>=0.99` on the held-out data; the CPU EP runs the QDQ model (no TensorRT "
        "here: no QDQ pair was verified to fuse, and no latency is measured).",
        "",
        "| model | cosine | int8 weighted nodes / left float by back-off | guard |",
        "|---|---|---|---|",
    ]
    for row in rows:
        trt = row.get("tensorrt", {})
        if "error" in trt:
            lines.append(f"| {row['model']} | failed: {trt['error'][:80]} | | |")
        elif trt:
            cos = f"{trt['cosine']:.5f}" if trt.get("cosine") is not None else "—"
            lines.append(
                f"| {row['model']} | {cos} | {trt['nodes']} / {trt['excluded']} | "
                f"{trt['guard_action']} |"
            )
    (RESULTS / "quantize_cuda.md").write_text("\n".join(lines) + "\n")


RSS_WORKER = """
import sys, time, json
from models import fetch
from nnopt_graph.core.io import load
from nnopt_graph.pipeline.base import PassContext
from nnopt_graph.pipeline.grammar import Pipeline, PassSpec
from nnopt_graph.pipeline.manager import PassManager
from nnopt_graph.runtime.data import input_specs, load_dataset
model = load(fetch.fetch("rapidocr-det"))
PassManager(Pipeline.parse("default")).run(model)
data = load_dataset(sys.argv[1], input_specs(model))
quant = PassSpec.create("quantize-int8", calibrator=sys.argv[2], speed_check=False,
                        fallback=False).instantiate()
start = time.perf_counter()
result = quant.run(model, PassContext(target="cpu", calibration=data))
print(json.dumps({"seconds": round(time.perf_counter() - start, 1), "samples": data.num_samples,
                  "stats": result.stats}))
"""


def run_rss(samples: int, work: Path) -> dict[str, Any]:
    """Peak RSS of quantize-int8 (min-max and percentile) on rapidocr det with N samples."""
    data = work / f"det_{samples}.npz"
    if not data.exists():
        shape = (samples, *fetch.REAL_MODELS["rapidocr-det"].input_shapes["x"])
        npy = work / "x.npy"
        array = np.lib.format.open_memmap(npy, mode="w+", dtype=np.float32, shape=shape)
        for i in range(samples):
            array[i] = fetch.example_inputs("rapidocr-det", seed=i)["x"]
        array.flush()
        del array
        with zipfile.ZipFile(data, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            archive.write(npy, "x.npy")
        npy.unlink()
    runs = []
    for calibrator in ("minmax", "percentile"):
        start = time.perf_counter()
        proc = subprocess.run(
            ["/usr/bin/time", "-v", sys.executable, "-c", RSS_WORKER, str(data), calibrator],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-3000:])
        rss = (
            int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
            / 1024
        )
        runs.append(
            {
                "calibrator": calibrator,
                "wall_s": round(time.perf_counter() - start, 1),
                "peak_rss_mb": round(rss),
                "worker": json.loads(proc.stdout.strip().splitlines()[-1]),
            }
        )
        print(runs[-1], flush=True)
    result = {
        "model": "rapidocr-det, 1x3x640x640",
        "samples": samples,
        "data_bytes": data.stat().st_size,
        "goal_mb": 2048,
        "runs": runs,
    }
    (RESULTS / "quantize_calib_rss.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# quantize-int8 calibration memory: rapidocr det",
        "",
        f"{samples} samples ({data.stat().st_size / 1e9:.2f} GB .npz, uncompressed, memory-mapped); the "
        "default pipeline then the whole quantize-int8 pass (sweeps, QDQ insertion, fusion check; "
        "speed check and sensitivity off), one process per calibrator under /usr/bin/time -v, 1 run each.",
        "",
        "| calibrator | sweeps | wall s | peak RSS MB | goal |",
        "|---|---|---|---|---|",
    ]
    for r in runs:
        sweeps = "min/max" if r["calibrator"] == "minmax" else "min/max + 2048-bin histograms"
        lines.append(
            f"| {r['calibrator']} | {sweeps} | {r['wall_s']:.0f} | {r['peak_rss_mb']} | "
            f"< 2048 MB: {'met' if r['peak_rss_mb'] < 2048 else 'NOT met'} |"
        )
    (RESULTS / "quantize_calib_rss.md").write_text("\n".join(lines) + "\n")
    return result


def main() -> None:
    """Parse arguments and run the chosen benchmark."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", choices=("cpu", "cuda"))
    parser.add_argument("--models", default="", help="comma list (default: all for the target)")
    parser.add_argument("--samples", type=int, default=64, help="calibration samples per model")
    parser.add_argument("--heldout", type=int, default=16, help="held-out samples per model")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--calib-rss", action="store_true")
    parser.add_argument("--rss-samples", type=int, default=256)
    parser.add_argument("--workdir", default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nnopt-quant-bench-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.calib_rss:
            run_rss(args.rss_samples, work)
        if args.target == "cpu":
            names = args.models.split(",") if args.models else CPU_MODELS
            run_cpu(names, args.samples, args.heldout, args.runs, work)
        elif args.target == "cuda":
            names = args.models.split(",") if args.models else CUDA_MODELS
            write_cuda(
                run_cuda(names, args.samples, args.heldout, work),
                run_int4(args.samples, args.heldout, work),
            )


if __name__ == "__main__":
    main()

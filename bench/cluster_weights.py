"""cluster-weights at bits 8 and 4, both methods, on the 10 real models and the digits CNN.

For each model and each of bits 8/4 x method uniform/kmeans (encoding=auto: uniform ->
DequantizeLinear, kmeans -> Gather codebook; granularity=channel, min-elements=4096):

* unguarded: ``optimize(model, out, "default,cluster-weights{bits=B method=M}",
  guard="cosine>=-1")`` (a guard that always holds, so the pass is kept as asked), then
  the file size ratio against the input file, and the output cosine (worst output)
  and top-1 agreement against the original on held-out inputs;
* guarded: the same pipeline with the default guard (cosine>=0.99): kept, backed off
  (to how many bits) or rolled back (nothing written), and the ratio/cosine of what
  was written;
* memory: resident memory of a fresh process after creating an ONNX Runtime CPU
  session (default optimizations, 2 threads), minus its memory before, median of
  --memory-runs processes, for the input, the default-pipeline output and each
  unguarded output;
* digits CNN: top-1 accuracy on models/digits/digits_heldout.npz (labels
  digits_heldout_labels.npy) instead of generated inputs.

Data: real models calibrate on ``write_calib_npz(name, seed=0)`` and are measured on
``write_calib_npz(name, seed=1000)`` (held out; cluster-weights itself reads no data);
digits calibrate on digits_calib.npz and are measured on digits_heldout.npz.
Writes bench/results/cluster_weights.{json,md}.

Usage: python bench/cluster_weights.py [--models a,b] [--samples N] [--memory-runs N]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models import fetch  # noqa: E402
from models.calib import write_calib_npz  # noqa: E402
from nnopt_graph import optimize  # noqa: E402
from nnopt_graph.check.compare import compare_models  # noqa: E402
from nnopt_graph.core import io  # noqa: E402
from nnopt_graph.errors import CheckFailedError  # noqa: E402
from nnopt_graph.runtime.data import input_specs, load_dataset  # noqa: E402

CONFIGS = [(8, "uniform"), (8, "kmeans"), (4, "uniform"), (4, "kmeans")]
DIGITS = "digits-cnn"
HELD_OUT_SEED = 1000
ALWAYS = "cosine>=-1"

_RSS_SCRIPT = """
import os, sys
import onnxruntime as ort
def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
options = ort.SessionOptions()
options.intra_op_num_threads = 2
options.log_severity_level = 3
before = rss()
session = ort.InferenceSession(sys.argv[1], options, providers=['CPUExecutionProvider'])
print(rss() - before)
"""


def _pipeline(bits: int, method: str) -> str:
    return f"default,cluster-weights{{bits={bits} method={method}}}"


def _data(name: str, work: Path, samples: int) -> tuple[Path, Path, Path]:
    """(model, calibration npz, held-out npz)."""
    if name == DIGITS:
        digits = ROOT / "models" / "digits"
        return (
            digits / "digits_cnn.onnx",
            digits / "digits_calib.npz",
            digits / "digits_heldout.npz",
        )
    calib = write_calib_npz(name, work / f"{name}-calib.npz", samples, seed=0)
    held = write_calib_npz(name, work / f"{name}-heldout.npz", samples, seed=HELD_OUT_SEED)
    return fetch.fetch(name), calib, held


def _accuracy(path: Path) -> float:
    """Top-1 accuracy of a digits model on the held-out split."""
    digits = ROOT / "models" / "digits"
    images = np.load(digits / "digits_heldout.npz")["input"]
    labels = np.load(digits / "digits_heldout_labels.npy")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: images})[0]
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def _session_rss(path: Path, runs: int) -> float | None:
    """Median resident-memory growth (MB) of creating a session on ``path``."""
    if runs <= 0:
        return None
    values = []
    for _ in range(runs):
        proc = subprocess.run(
            [sys.executable, "-c", _RSS_SCRIPT, str(path)],
            capture_output=True,
            text=True,
            check=True,
        )
        values.append(int(proc.stdout.strip()) / 2**20)
    return statistics.median(values)


def _fidelity(original: Path, candidate: Path, held: Any) -> dict[str, Any]:
    result = compare_models(original, candidate, held)
    top1 = [o.top1 for o in result.outputs if o.top1 is not None]
    return {
        "cosine_min": result.cosine_min,
        "cosine_per_output": {o.name: o.cosine for o in result.outputs},
        "top1_min": min(top1) if top1 else None,
        "samples": result.samples,
    }


def _pass_record(result: Any) -> Any:
    return next(r for r in result.records if r.name == "cluster-weights")


def _summary(record: Any) -> dict[str, Any]:
    """What the pass did: stats, encodings used, opset decision, fallback notes."""
    weights = [d for d in record.decisions if "weight" in d]
    kinds = collections.Counter(f"{d['encoding']} {d['storage']}" for d in weights)
    notes = collections.Counter(
        note.split(":")[0] for d in weights for note in d.get("notes", "").split("; ") if note
    )
    sqnr = [d["sqnr_db"] for d in weights if isinstance(d["sqnr_db"], float)]
    return {
        "stats": record.stats,
        "storage": dict(kinds),
        "opset": next((d for d in record.decisions if "opset" in d), None),
        "notes": dict(notes),
        "sqnr_db_min": min(sqnr) if sqnr else None,
        "sqnr_db_median": statistics.median(sqnr) if sqnr else None,
        "pass_seconds": record.seconds,
        "bytes_disk_before": sum(d["bytes_disk_before"] for d in weights),
        "bytes_disk_after": sum(d["bytes_disk_after"] for d in weights),
        "bytes_memory_after": sum(d["bytes_memory_after"] for d in weights),
    }


def run_model(name: str, work: Path, samples: int, memory_runs: int) -> dict[str, Any]:
    """Every configuration on one model."""
    model, calib, held_path = _data(name, work, samples)
    held = load_dataset(held_path, input_specs(io.load(model)))
    size_in = model.stat().st_size
    default_out = work / f"{name}-default.onnx"
    optimize(model, default_out, "default", calib=calib, eval_data=held_path)
    row: dict[str, Any] = {
        "model": name,
        "size_in": size_in,
        "size_default": default_out.stat().st_size,
        "rss_mb_input": _session_rss(model, memory_runs),
        "rss_mb_default": _session_rss(default_out, memory_runs),
        "configs": [],
    }
    if name == DIGITS:
        row["accuracy_input"] = _accuracy(model)
    for bits, method in CONFIGS:
        pipeline = _pipeline(bits, method)
        entry: dict[str, Any] = {"bits": bits, "method": method, "pipeline": pipeline}
        out = work / f"{name}-{bits}-{method}.onnx"
        start = time.perf_counter()
        result = optimize(model, out, pipeline, calib=calib, eval_data=held_path, guard=ALWAYS)
        entry["job_seconds"] = time.perf_counter() - start
        entry["size_out"] = out.stat().st_size
        entry["ratio"] = entry["size_out"] / size_in
        entry.update(_fidelity(model, out, held))
        entry["pass"] = _summary(_pass_record(result))
        entry["rss_mb"] = _session_rss(out, memory_runs)
        if name == DIGITS:
            entry["accuracy"] = _accuracy(out)
        guarded_out = work / f"{name}-{bits}-{method}-guarded.onnx"
        guarded: dict[str, Any] = {"expr": "cosine>=0.99"}
        try:
            result = optimize(model, guarded_out, pipeline, calib=calib, eval_data=held_path)
            record = _pass_record(result)
            guarded["action"] = record.guard_action
            guarded["bits"] = record.options["bits"]
            guarded["ratio"] = guarded_out.stat().st_size / size_in
            guarded["cosine_min"] = result.fidelity.cosine_min if result.fidelity else None
            if name == DIGITS:
                guarded["accuracy"] = _accuracy(guarded_out)
        except CheckFailedError as exc:
            guarded["action"] = "rolled back"
            guarded["error"] = str(exc)[:300]
        entry["guarded"] = guarded
        row["configs"].append(entry)
        print(
            f"{name:24s} {bits} {method:7s} ratio {entry['ratio']:.3f} "
            f"cos {entry['cosine_min']:.5f} guard {guarded['action']}"
            + (f" -> {guarded.get('bits')} bits" if guarded["action"] == "backed off" else ""),
            flush=True,
        )
    return row


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _markdown(results: dict[str, Any]) -> str:
    lines = [
        "# cluster-weights on real models",
        "",
        f"Run: `python bench/cluster_weights.py` on {results['host']} ({results['cpus']} CPUs), "
        f"onnxruntime {results['onnxruntime']} CPU. Each configuration ran once per model "
        "(the pass is deterministic); pipeline `default,cluster-weights{bits=B method=M}` "
        "with granularity=channel, min-elements=4096, encoding=auto (uniform → "
        "DequantizeLinear, kmeans → Gather codebook).",
        f"Cosine and top-1 agreement: worst output against the original on {results['samples']} "
        "held-out feeds (`write_calib_npz(seed=1000)`; calibration seed 0); digits CNN on its "
        "360 held-out images, with top-1 accuracy against the labels.",
        f"Session RSS: memory growth of creating an ONNX Runtime CPU session in a fresh process, "
        f"median of {results['memory_runs']} processes (MB; noisy at this size). ONNX Runtime "
        "keeps DequantizeLinear weights as integers; it constant-folds a codebook's decode at "
        "load, so the floats come back, and the folding's intermediates (int32 indices, "
        "unpacked nibbles) raise the resident memory further.",
        "Top-1 agreement: argmax over the last axis of each output (meaningful for class "
        "scores only; recurrent-state outputs of silero are included as they come).",
        "Guard: the same pipeline with the default guard `cosine>=0.99`; back-off adds one bit "
        "at a time up to 8, then the pass is rolled back and nothing is written.",
        "",
        "| model | bits | method | stored as | size ratio | cosine | top-1 agree | "
        "session RSS MB (input / default / out) | guard cosine>=0.99 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        for c in row["configs"]:
            storage = ", ".join(f"{n}× {k}" for k, n in c["pass"]["storage"].items()) or "—"
            g = c["guarded"]
            if g["action"] == "rolled back":
                outcome = "rolled back"
            else:
                outcome = f"{g['action']} ({g['bits']} bits, ratio {g['ratio']:.3f})"
            acc = f" (acc {c['accuracy']:.4f})" if "accuracy" in c else ""
            lines.append(
                f"| {row['model']} | {c['bits']} | {c['method']} | {storage} | "
                f"{c['ratio']:.3f} | {c['cosine_min']:.5f}{acc} | {_fmt(c['top1_min'], '.3f')} | "
                f"{_fmt(row['rss_mb_input'], '.1f')} / {_fmt(row['rss_mb_default'], '.1f')} / "
                f"{_fmt(c['rss_mb'], '.1f')} | {outcome} |"
            )
    lines += [
        "",
        "Size ratio = output file / input file. The lossless default pipeline alone gives: "
        + ", ".join(f"{r['model']} {r['size_default'] / r['size_in']:.3f}" for r in results["rows"])
        + ".",
    ]
    digits = next((r for r in results["rows"] if r["model"] == DIGITS), None)
    if digits:
        lines.append(f"Digits CNN accuracy before: {digits['accuracy_input']:.4f}.")
    lines += [
        "",
        "## Opset decisions and fallbacks",
        "",
        "| model | bits | method | opset | fallbacks | weights clustered | "
        "saved on disk / in memory (MB, pass stats) | SQNR dB min / median | pass + guard s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        for c in row["configs"]:
            p = c["pass"]
            opset = p["opset"]
            text = (
                "—"
                if not opset
                else opset["opset"]
                + (f" (wanted {opset['wanted']}: {opset['reason']})" if "reason" in opset else "")
            )
            notes = ", ".join(f"{n}× {k}" for k, n in p["notes"].items()) or "—"
            lines.append(
                f"| {row['model']} | {c['bits']} | {c['method']} | {text} | {notes} | "
                f"{p['stats']['weights-clustered']} | "
                f"{p['stats']['bytes-saved-disk'] / 2**20:.2f} / "
                f"{p['stats']['bytes-saved-memory'] / 2**20:.2f} | "
                f"{_fmt(p['sqnr_db_min'], '.1f')} / "
                f"{_fmt(p['sqnr_db_median'], '.1f')} | {p['pass_seconds']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run every model and configuration; write the JSON and markdown results."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default=",".join([*fetch.REAL_MODELS, DIGITS]))
    parser.add_argument("--samples", type=int, default=8, help="calibration and held-out feeds")
    parser.add_argument("--memory-runs", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="nnopt-cluster-") as tmp:
        for name in args.models.split(","):
            rows.append(run_model(name, Path(tmp), args.samples, args.memory_runs))
    results = {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "onnxruntime": ort.__version__,
        "samples": args.samples,
        "memory_runs": args.memory_runs,
        "configs": [{"bits": b, "method": m, "pipeline": _pipeline(b, m)} for b, m in CONFIGS],
        "runs_per_config": 1,
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cluster_weights.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "cluster_weights.md").write_text(_markdown(results))
    print(_markdown(results))


if __name__ == "__main__":
    main()

"""Would dynamic int8 pay on this CPU? ONNX Runtime's own quantize_dynamic, measured.

A probe, not a pass: for the MatMul/LSTM/GRU-heavy models (the real text encoder,
rapidocr-rec/cls, silero-vad, the zoo encoder), quantize the lossless default pipeline's
output with ``onnxruntime.quantization.quantize_dynamic`` (int8 weights; activations
quantized at run time: DynamicQuantizeLinear + MatMulInteger / DynamicQuantizeMatMul /
DynamicQuantizeLSTM) and measure against the input, on held-out samples the calibration
did not see: the worst sample's cosine (all outputs), and CPU latency under
compare_latency's windowed interleaved protocol (input A, a second session A', dynamic
int8 B; windows of about 50 ms of A, rotating order, a window's fastest run; 2 threads,
spinning off, >= 30 windows, about 4 s of A), with the load average.

Writes bench/results/dynamic_int8_probe.{json,md}.

Usage: python bench/dynamic_int8_probe.py [--models a,b] [--eval 16]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchutil import commit_id  # noqa: E402
from target_cpu import time_against_input  # noqa: E402

from models import fetch, zoo  # noqa: E402
from models.calib import write_calib_npz  # noqa: E402
from nnopt_graph import optimize  # noqa: E402
from nnopt_graph.check.compare import compare_models  # noqa: E402
from nnopt_graph.core.io import load  # noqa: E402
from nnopt_graph.runtime.data import input_specs, load_dataset  # noqa: E402

MODELS = [
    "zoo/bert-encoder",
    "minilm-l3-paraphrase",
    "rapidocr-rec",
    "rapidocr-cls",
    "silero-vad-16k-op15",
    "silero-vad-half",
    "silero-vad-16k-sequence",
    "silero-vad-openvino-16k",
]
OPS = ["MatMul", "Gemm", "LSTM", "GRU", "Attention"]


def _source(name: str, tmp: Path, held: int) -> tuple[Path, Path]:
    key = name.removeprefix("zoo/")
    if name.startswith("zoo/"):
        path = tmp / f"{key}.onnx"
        onnx.save(zoo.ZOO[key](), path)
    else:
        path = fetch.fetch(key)
    return path, write_calib_npz(key, tmp / f"{key}.eval.npz", samples=held, seed=10_000)


def _probe(name: str, tmp: Path, held: int) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, evalset = _source(name, tmp, held)
    stem = name.replace("/", "_")
    lossless = tmp / f"{stem}.default.onnx"
    optimize(src, lossless, calib=evalset, check=True)
    out = tmp / f"{stem}.dynamic.onnx"
    row: dict[str, Any] = {"model": name}
    try:
        quantize_dynamic(
            lossless, out, op_types_to_quantize=OPS, per_channel=True, weight_type=QuantType.QInt8
        )
    except Exception as exc:  # a probe: report, go on
        row["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        return row
    graph = onnx.load(str(out), load_external_data=False).graph
    ops = sorted(
        {n.op_type for n in graph.node if "Integer" in n.op_type or "Dynamic" in n.op_type}
    )
    data = load_dataset(evalset, input_specs(load(src)))
    fid = compare_models(src, out, data)
    feed = next(data.batches(1))
    row.update(
        {
            "int8_ops": ops,
            "worst_cosine": fid.metric("cosine"),
            "samples": fid.samples,
            **time_against_input(src, out, feed),
        }
    )
    return row


def main() -> None:
    """Probe every model and write the tables."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--models")
    parser.add_argument("--eval", type=int, default=16)
    args = parser.parse_args()
    names = args.models.split(",") if args.models else MODELS
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            row = _probe(name, Path(tmp), args.eval)
            rows.append(row)
            print(json.dumps(row), flush=True)
    commit = commit_id()
    res = ROOT / "bench/results"
    meta = {"commit": commit, "machine": "x86_64, 2 cores, shared", "eval": args.eval}
    (res / "dynamic_int8_probe.json").write_text(
        json.dumps({**meta, "ops": OPS, "rows": rows}, indent=2) + "\n"
    )
    lines = [
        "# Dynamic int8 (ONNX Runtime's quantize_dynamic) on the MatMul/LSTM-heavy models",
        "",
        f"Commit {commit}, x86_64 (AVX-512 VNNI), 2 cores shared with other jobs; ONNX "
        "Runtime CPU EP. Produced by `python bench/dynamic_int8_probe.py`. B = "
        "`quantize_dynamic` (ops " + ", ".join(OPS) + ", int8 per-channel weights) of the "
        "lossless default pipeline's output; A = the input. Worst-sample cosine over all "
        f"outputs on {args.eval} held-out samples. Latency: compare_latency's windowed "
        "interleaved protocol (A, A' = a second session of A, B; windows of about 50 ms of "
        "A, rotating order, a model's window time its fastest run there), 2 threads, "
        "spinning off, >= 30 windows and about 4 s of A: min / median / max of per-window "
        "ratios and the median's 95% CI. A'/A is the noise band. A probe of whether a "
        "dynamic int8 mode would pay, not a pass of nnopt-graph.",
        "",
        "| model | int8 ops | worst cosine | B/A | B/A median 95% CI | A'/A | A p50 ms | "
        "windows × runs | load | size |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | failed: {r['error']} | | | | | | | | |")
            continue
        lt, aa = r["latency"], r["a_vs_a"]
        lines.append(
            f"| {r['model']} | {', '.join(r['int8_ops']) or 'none'} | {r['worst_cosine']:.5f} "
            f"({r['samples']}) | {lt['min']:.2f} / **{lt['median']:.3f}** / {lt['max']:.2f} | "
            f"[{lt['ci95_low']:.3f}, {lt['ci95_high']:.3f}] | "
            f"{aa['min']:.2f} / {aa['median']:.3f} / {aa['max']:.2f} | {r['p50_ms_in']:.3f} | "
            f"{r['windows']} × {r['runs_per_window']} | "
            f"{r['load_1min'][0]:.2f} → {r['load_1min'][1]:.2f} | {r['size_ratio']:.3f} |"
        )
    lines.append("")
    (res / "dynamic_int8_probe.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Which activations make static int8 fail the cosine budget: per-value attribution.

For each model: the lossless default pipeline's output (float reference), then
quantize-int8 on it with no back-off and no speed check (every placement kept). On the
held-out samples, the worst-sample cosine of the model output against the float input is
measured for: the full int8 model under ORT_ENABLE_ALL (ORT's fused QLinear kernels) and
ORT_DISABLE_ALL (plain QDQ arithmetic), int8 weights only (every activation QDQ
bypassed), and each activation QDQ alone (float weights, one value fake-quantized: its
Q/DQ kept, all others bypassed), ranked worst first. Finally leave-k-out: the full model
with the k worst values (by that ranking) left float. Writes
bench/results/quantize_cpu_attribution.{json,md}.

Usage: python bench/int8_attribution.py [--models rapidocr-det,rapidocr-rec] [--samples 8]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchutil import commit_id  # noqa: E402

from models import fetch  # noqa: E402
from models.calib import write_calib_npz  # noqa: E402
from nnopt_graph import optimize  # noqa: E402

_WEIGHTED = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _session(model: onnx.ModelProto | str, level: Any) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    data = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


class _Variants:
    """Variants of the fully quantized model: activation QDQ and int8 weights on or off."""

    def __init__(self, quantized: onnx.ModelProto, base: onnx.ModelProto) -> None:
        self.q, self.base = quantized, base
        self.inits = {i.name for i in quantized.graph.initializer}
        self.producers = {o: n for n in quantized.graph.node for o in n.output}
        self.act_q = {
            n.output[0]: n
            for n in quantized.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in self.inits
        }
        self.base_nodes = {n.name: n for n in base.graph.node}

    def value(self, q_out: str) -> str:
        return self.act_q[q_out].input[0]

    def build(self, int8_weights: bool, keep: set[str]) -> onnx.ModelProto:
        """Q outputs in ``keep`` stay quantized; float weights/biases from ``base`` if asked."""
        m = copy.deepcopy(self.q)
        if not int8_weights:
            for n in m.graph.node:
                b = self.base_nodes.get(n.name)
                if b is None or n.op_type not in _WEIGHTED:
                    continue
                for i in range(1, len(n.input)):
                    p = self.producers.get(n.input[i])
                    if p is not None and p.op_type == "DequantizeLinear" and i < len(b.input):
                        n.input[i] = b.input[i]
                del n.input[len(b.input) :]
            have = {i.name for i in m.graph.initializer}
            m.graph.initializer.extend(i for i in self.base.graph.initializer if i.name not in have)
        bypass = {}
        for n in m.graph.node:
            if n.op_type == "DequantizeLinear" and n.input[0] in self.act_q:
                if n.input[0] not in keep:
                    bypass[n.output[0]] = self.act_q[n.input[0]].input[0]
        for n in m.graph.node:
            for i, x in enumerate(n.input):
                if x in bypass:
                    n.input[i] = bypass[x]
        return m


def _attribute(name: str, tmp: Path, samples: int) -> dict[str, Any]:
    src = fetch.fetch(name)
    calib = write_calib_npz(name, tmp / f"{name}.calib.npz", samples=48, seed=0)
    held = write_calib_npz(name, tmp / f"{name}.eval.npz", samples=16, seed=10_000)
    base_path, q_path = tmp / f"{name}.base.onnx", tmp / f"{name}.q.onnx"
    optimize(src, base_path, "default", calib=calib)
    optimize(
        base_path,
        q_path,
        "quantize-int8{fallback=false speed-check=false}",
        target="cpu",
        calib=calib,
        eval_data=held,
        guard="cosine.min>=-1",
    )
    feeds = dict(np.load(held))
    key = next(iter(feeds))
    xs = feeds[key]
    ref = [
        _session(str(src), ort.GraphOptimizationLevel.ORT_ENABLE_ALL).run(None, {key: x})[0]
        for x in xs
    ]

    def worst(model: onnx.ModelProto | str, level: Any, n: int = samples) -> list[float]:
        s = _session(model, level)
        cs = [_cos(r, s.run(None, {key: x})[0]) for r, x in zip(ref[:n], xs[:n], strict=True)]
        return [round(min(cs), 5), round(float(np.median(cs)), 5)]

    basic = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    v = _Variants(onnx.load(q_path), onnx.load(base_path))
    row: dict[str, Any] = {
        "model": name,
        "values_quantized": len(v.act_q),
        "full_enable_all_16": worst(str(q_path), ort.GraphOptimizationLevel.ORT_ENABLE_ALL, 16),
        "full_disable_all_16": worst(str(q_path), ort.GraphOptimizationLevel.ORT_DISABLE_ALL, 16),
        "weights_only": worst(v.build(True, set()), basic),
        "none": worst(v.build(False, set()), basic),
    }
    alone = []
    for q_out in v.act_q:
        w = worst(v.build(False, {q_out}), basic)
        alone.append([*w, v.value(q_out)])
    alone.sort()
    row["alone_worst_first"] = alone[:12]
    order = [a[2] for a in alone]
    leave = {}
    for k in (0, 1, 2, 3, 5, 8, 12, 16, 24):
        drop = {q for q in v.act_q if v.value(q) in set(order[:k])}
        leave[k] = worst(v.build(True, set(v.act_q) - drop), basic)
    row["leave_k_out"] = leave
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    """Attribute every model and write the tables."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="rapidocr-det,rapidocr-rec")
    parser.add_argument("--samples", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [_attribute(n, Path(tmp), args.samples) for n in args.models.split(",")]
    commit = commit_id()
    res = ROOT / "bench/results"
    (res / "quantize_cpu_attribution.json").write_text(
        json.dumps({"commit": commit, "samples": args.samples, "rows": rows}, indent=2) + "\n"
    )
    lines = [
        "# Static int8 on CPU: which activations break the cosine budget",
        "",
        f"Commit {commit}, x86_64, 2 cores shared; produced by `python bench/int8_attribution.py`. "
        "quantize-int8 without back-off or speed check on the default pipeline's output "
        "(calibration 48 samples, auto calibrator); worst / median per-sample cosine of the "
        "model output against the float input on held-out samples (16 for the full model, "
        f"the first {args.samples} for the variants; variants run at ORT_ENABLE_BASIC). "
        "'alone': float weights, only that value's Q/DQ kept. 'leave k out': int8 weights, "
        "every activation QDQ but the k worst by 'alone'.",
        "",
    ]
    for r in rows:
        lines += [
            f"## {r['model']} ({r['values_quantized']} activation values quantized)",
            "",
            "| variant | worst | median |",
            "|---|---|---|",
            f"| full int8, ORT_ENABLE_ALL (16) | {r['full_enable_all_16'][0]} | {r['full_enable_all_16'][1]} |",
            f"| full int8, ORT_DISABLE_ALL (16) | {r['full_disable_all_16'][0]} | {r['full_disable_all_16'][1]} |",
            f"| int8 weights only | {r['weights_only'][0]} | {r['weights_only'][1]} |",
            f"| nothing quantized (check) | {r['none'][0]} | {r['none'][1]} |",
            "",
            "| value alone in int8 | worst | median |",
            "|---|---|---|",
        ]
        lines += [f"| {a[2]} | {a[0]} | {a[1]} |" for a in r["alone_worst_first"]]
        lines += ["", "| k worst values left float | worst | median |", "|---|---|---|"]
        lines += [f"| {k} | {w[0]} | {w[1]} |" for k, w in r["leave_k_out"].items()]
        lines.append("")
    (res / "quantize_cpu_attribution.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

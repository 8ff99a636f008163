"""What bounds the zoo bert-encoder's latency, and which pruning choices move it.

The zoo bert-encoder (2 layers, hidden 64, 4 heads, FFN 256; random weights) runs in a
fraction of a millisecond: ONNX Runtime's per-kernel cost, not arithmetic, sets its
latency. This script measures, on the model after the lossless default pipeline (the
baseline), for each candidate:
  - weights: MatMul/Gemm weight params / baseline;
  - kernels: nodes of ONNX Runtime's optimized CPU graph (what it dispatches per run);
  - cosine: per held-out sample (16 samples of other seeds), min and median;
  - latency: one interleaved windowed comparison of every candidate with the baseline
    (runtime.quant_bench.compare_latency, ``window_seconds``), ratio min/median/max, and
    the baseline's copy in the same comparison (A vs A: the noise band);
  - for the baseline and prune-channels: ONNX Runtime's profile, kernel time by op type
    (shares; the profiler's own cost inflates absolute times).
Candidates: the baseline with shape annotations (onnx shape inference only: lossless),
prune-channels (search, and uniform with round-to), and whole blocks removed (one
attention or FFN block's output replaced by its calibration mean, its nodes gone: a
bench-only experiment, not a pass).

Run: .venv/bin/python bench/prune_transformer_blocks.py [--runs 30] [--window 0.25]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as ir_passes
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import prune_transformer as pt  # noqa: E402

from nnopt_graph.core import io  # noqa: E402
from nnopt_graph.job import optimize  # noqa: E402
from nnopt_graph.runtime.quant_bench import compare_latency  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
_SEARCH = "prune-channels{ratio=%g search=true protect-last=false}"
PIPELINES = [
    (_SEARCH % 0.25, "cosine>=0.95"),
    ("prune-channels{ratio=0.25 round-to=32}", "cosine>=0.95"),
    (_SEARCH % 0.5, "cosine>=-1"),
]
BLOCKS = [
    "encoder.layer.1.ffn",
    "encoder.layer.0.ffn",
    "encoder.layer.1.attn",
    "encoder.layer.0.attn",
]


def _calib_feeds(cal: Path) -> list[dict[str, np.ndarray]]:
    data = np.load(cal)
    feeds = []
    for i in range(len(data["input_ids"])):
        feed = {k: data[k][i] for k in ("input_ids", "attention_mask")}
        feeds.append({k: v[None] if v.ndim == 1 else v for k, v in feed.items()})
    return feeds


def _block_mean(path: Path, value: str, feeds: list, tmp: Path) -> np.ndarray:
    """Mean of ``value`` over the attended calibration tokens."""
    model = io.load(path)
    by_name = {o.name: o for n in model.graph for o in n.outputs}
    model.graph.outputs.clear()
    model.graph.outputs.append(by_name[value])
    ir_passes.RemoveUnusedNodesPass()(model)
    tap = tmp / "tap.onnx"
    io.save(model, tap)
    session = pt._session(tap)
    rows = []
    for feed in feeds:
        x = session.run(None, feed)[0]
        rows.append(x.reshape(-1, x.shape[-1])[feed["attention_mask"].reshape(-1) != 0])
    return np.concatenate(rows).mean(axis=0)


def _drop_block(base: Path, block: str, feeds: list, tmp: Path) -> Path:
    """The baseline with ``block``'s output replaced by its calibration mean."""
    model = io.load(base)
    add = next(n for n in model.graph if n.name == f"{block}.residual")
    value = add.inputs[0]
    assert value is not None and value.name is not None
    mean = _block_mean(base, value.name, feeds, tmp)
    const = ir.Value(name=f"{block}.mean", const_value=ir.tensor(mean.astype(np.float32)))
    model.graph.register_initializer(const)
    add.replace_input_with(0, const)
    ir_passes.RemoveUnusedNodesPass()(model)
    out = tmp / f"drop_{block}.onnx"
    io.save(model, out)
    return out


def _with_shapes(base: Path, tmp: Path) -> Path:
    out = tmp / "base_shapes.onnx"
    onnx.save(onnx.shape_inference.infer_shapes(onnx.load(str(base)), strict_mode=True), out)
    return out


def _kernels(path: Path, tmp: Path) -> dict[str, Any]:
    options = ort.SessionOptions()
    optimized = tmp / f"{path.stem}.optimized.onnx"
    options.optimized_model_filepath = str(optimized)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    graph = onnx.load(str(optimized)).graph
    counts = collections.Counter(n.op_type for n in graph.node)
    return {"kernels": len(graph.node), "ops": dict(sorted(counts.items()))}


def _profile(path: Path, feed: dict, tmp: Path, runs: int = 2000) -> dict[str, float]:
    """Share of ONNX Runtime's kernel time by op type (profiled run, 2 threads)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp / f"profile_{path.stem}")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    by_op: dict[str, float] = collections.defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"].get("op_name", "?")] += event["dur"]
    total = sum(by_op.values()) or 1.0
    return {k: round(v / total, 3) for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])}


def main() -> int:
    """Run the candidates and write bench/results/prune_transformer_blocks.{json,md}."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--window", type=float, default=0.25)
    args = parser.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model_path, cal, held = pt._inputs("bert-encoder", tmp)
        base = tmp / "base.onnx"
        optimize(str(model_path), base, None, calib=str(cal), check=False)
        copy = tmp / "base_copy.onnx"
        shutil.copyfile(base, copy)
        feeds = _calib_feeds(cal)
        rows: list[dict[str, Any]] = [
            {
                "candidate": "baseline + shape annotations (lossless)",
                "path": _with_shapes(base, tmp),
            }
        ]
        for i, (pipeline, guard) in enumerate(PIPELINES):
            out = tmp / f"pruned_{i}.onnx"
            result = optimize(str(base), out, pipeline, calib=str(cal), guard=guard, check=False)
            actions = [r.to_json().get("guard_action") for r in result.records]
            rows.append(
                {
                    "candidate": f"`{pipeline}` (guard `{guard}`: {', '.join(filter(None, actions))})",
                    "path": out,
                }
            )
        for block in BLOCKS:
            rows.append(
                {"candidate": f"drop {block} (mean)", "path": _drop_block(base, block, feeds, tmp)}
            )
        a = pt._session(base)
        held_feeds = pt._feeds(held, a)
        base_weights = pt._weights(base, True)
        for row in rows:
            cos = pt._cosines(a, pt._session(row["path"]), held_feeds)
            row["cosine"] = {
                "min": round(float(cos.min()), 4),
                "median": round(float(np.median(cos)), 4),
            }
            row["heldout_samples"] = len(cos)
            row["weights"] = round(pt._weights(row["path"], True) / base_weights, 4)
            row.update(_kernels(row["path"], tmp))
        feed = held_feeds[0]
        load_before = os.getloadavg()
        comparison = compare_latency(
            [base, copy, *(r["path"] for r in rows)],
            feed,
            runs=args.runs,
            window_seconds=args.window,
            max_runs=args.runs,
        )
        load_after = os.getloadavg()
        band = {k: round(v, 4) for k, v in comparison.ratio[1].items()}
        for row, ratio in zip(rows, comparison.ratio[2:], strict=True):
            row["latency_ratio"] = {k: round(v, 4) for k, v in ratio.items()}
        base_kernels = _kernels(base, tmp)
        profiles = {
            "baseline": _profile(base, feed, tmp),
            "prune search": _profile(rows[1]["path"], feed, tmp),
        }
        for row in rows:
            row.pop("path")
    meta = {
        "commit": commit,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared",
        "onnxruntime": ort.__version__,
        "rounds": comparison.runs,
        "window_seconds": args.window,
        "base_ms": round(comparison.p50_ms[0], 4),
        "noise_band": band,
        "load_avg": [round(x, 2) for x in (*load_before, *load_after)],
        "baseline_kernels": base_kernels,
        "profile_share_by_op": profiles,
    }
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / "prune_transformer_blocks"
    stem.with_suffix(".json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
    lines = [
        "# Zoo bert-encoder: what bounds its latency (bench/prune_transformer_blocks.py)",
        "",
        f"Commit {commit}; {meta['machine']}; onnxruntime {meta['onnxruntime']} CPU EP, 2 threads.",
        f"Latency: one interleaved windowed comparison ({comparison.runs} rounds, windows of",
        f"{args.window} s, per round each model's fastest run), ratio to the baseline",
        f"min/median/max; baseline {meta['base_ms']} ms (median); A-vs-A (baseline copy)",
        f"{band['min']:.3f} / {band['median']:.3f} / {band['max']:.3f}; load average "
        f"(1/5/15 min, before and after) {meta['load_avg']}.",
        f"Kernels: nodes of ONNX Runtime's optimized CPU graph (baseline: {base_kernels['kernels']}).",
        "Cosine: per held-out sample (16), all float outputs.",
        "",
        "| candidate | weights | kernels | cos min / median | latency min / med / max |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lat, cos = r["latency_ratio"], r["cosine"]
        lines.append(
            f"| {r['candidate']} | {r['weights']:.3f} | {r['kernels']} | "
            f"{cos['min']:.4f} / {cos['median']:.4f} | "
            f"{lat['min']:.3f} / {lat['median']:.3f} / {lat['max']:.3f} |"
        )
    lines += ["", "ONNX Runtime profile, share of kernel time by op type (2000 profiled runs):", ""]
    for name, shares in profiles.items():
        lines.append(f"- {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in shares.items()))
    lines += ["", "Optimized-graph op counts:", ""]
    lines.append(f"- baseline: {base_kernels['ops']}")
    for r in rows:
        lines.append(f"- {r['candidate']}: {r['ops']}")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

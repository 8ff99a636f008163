"""Headline numbers: the zoo, the digits CNN and the real models through every preset.

For each model and each preset registered (default, target-cpu, target-cuda,
target-tensorrt): optimize with calibration data (verified, guarded), then time the
original against every output on each available execution provider, interleaved in
one process (median of --runs after --warmup, 2 CPU threads), and record size, params,
FLOPs, held-out cosine and latency ratios (min/median/max of per-round ratios).
Writes bench/results/<host-kind>.json and .md.

Usage: python bench/headline.py [--runs 20] [--models digits-cnn,rapidocr-rec] [--presets default]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models import fetch, zoo  # noqa: E402
from models.calib import write_calib_npz  # noqa: E402
from nnopt_graph import optimize  # noqa: E402
from nnopt_graph.errors import NnoptError  # noqa: E402
from nnopt_graph.pipeline.registry import PRESETS  # noqa: E402
from nnopt_graph.runtime.bench import benchmark  # noqa: E402
from nnopt_graph.runtime.session import available_eps  # noqa: E402


def host_kind() -> str:
    """e.g. x86_64-2cpu or x86_64-16cpu-cuda."""
    import os

    kind = f"{platform.machine()}-{os.cpu_count()}cpu"
    return kind + ("-cuda" if "cuda" in available_eps() else "")


def model_sources(tmp: Path, names: list[str] | None) -> dict[str, tuple[Path, Path, Path | None]]:
    """Name -> (model, calibration data, held-out data or None)."""
    out: dict[str, tuple[Path, Path, Path | None]] = {}
    digits = ROOT / "models/digits"
    out["digits-cnn"] = (
        digits / "digits_cnn.onnx",
        digits / "digits_calib.npz",
        digits / "digits_heldout.npz",
    )
    for name, build in zoo.ZOO.items():
        path = tmp / f"{name}.onnx"
        onnx.save(build(), path)
        out[f"zoo-{name}"] = (path, write_calib_npz(name, tmp / f"{name}.npz", samples=20), None)
    for name in fetch.REAL_MODELS:
        if names and name not in names:
            continue
        out[name] = (
            fetch.fetch(name),
            write_calib_npz(name, tmp / f"{name}.npz", samples=20),
            None,
        )
    return {k: v for k, v in out.items() if not names or k in names}


def _fmt(row: dict, key: str) -> str:
    return f"{row[key]:.3f}" if isinstance(row.get(key), float) else ""


def main() -> None:
    """Run every model through every preset and benchmark the results."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--models", default="", help="comma list (default: all)")
    parser.add_argument("--presets", default="", help="comma list (default: all registered)")
    args = parser.parse_args()
    from nnopt_graph.pipeline.grammar import Pipeline

    Pipeline.parse("default")  # registers every pass and preset
    presets = [
        p for p in ("default", "target-cpu", "target-cuda", "target-tensorrt") if p in PRESETS
    ]
    if args.presets:
        presets = [p for p in presets if p in args.presets.split(",")]
    eps = available_eps()
    rows = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        for name, (path, calib, held_out) in model_sources(
            tmp, [m for m in args.models.split(",") if m]
        ).items():
            outputs = {}
            for preset in presets:
                out = tmp / f"{name}.{preset}.onnx"
                target = preset.removeprefix("target-") if preset.startswith("target-") else None
                try:
                    result = optimize(
                        path,
                        out,
                        preset if target is None else None,
                        target=target,
                        calib=calib,
                        eval_data=held_out,
                    )
                except NnoptError as exc:
                    rows.append({"model": name, "preset": preset, "error": str(exc)})
                    continue
                outputs[preset] = out
                report = result.report
                rows.append(
                    {
                        "model": name,
                        "preset": preset,
                        "size_ratio": report["output"]["size_bytes"]
                        / report["input"]["size_bytes"],
                        "params_ratio": report["output"]["params"]
                        / max(report["input"]["params"], 1),
                        "flops_ratio": (report["output"]["flops"] or 0)
                        / max(report["input"]["flops"] or 0, 1),
                        "cosine_min": result.fidelity.cosine_min if result.fidelity else None,
                        "passes_changed": [r.name for r in result.records if r.modified],
                    }
                )
            if not outputs:
                continue
            shapes = {
                k: list(v)
                for k, v in (
                    fetch.REAL_MODELS[name].input_shapes.items()
                    if name in fetch.REAL_MODELS
                    else []
                )
            }
            for ep in eps:
                # Each EP times the input, the lossless output and its own target's output.
                timed = {p: o for p, o in outputs.items() if p in ("default", f"target-{ep}")}
                timings = benchmark(
                    [path, *timed.values()],
                    [ep],
                    input_shapes=shapes or None,
                    runs=args.runs,
                    warmup=args.warmup,
                    threads=2,
                )
                for timing in timings:
                    preset = next((p for p, o in timed.items() if str(o) == timing.model), "input")
                    row = next(
                        (r for r in rows if r["model"] == name and r["preset"] == preset), None
                    )
                    if row is None:
                        row = {"model": name, "preset": "input"}
                        rows.append(row)
                    row.setdefault("latency", {})[ep] = {
                        "available": timing.available,
                        "p50_ms": timing.latency_ms.get("p50"),
                        "ratio_vs_input": timing.ratio_vs_first,
                    }
            print(name, "done", flush=True)
    kind = host_kind()
    out_dir = ROOT / "bench" / "results"
    (out_dir / f"{kind}.json").write_text(
        json.dumps(
            {"host_kind": kind, "eps": eps, "runs": args.runs, "warmup": args.warmup, "rows": rows},
            indent=2,
        )
        + "\n"
    )
    lines = [
        f"# Headline numbers on {kind}",
        "",
        "Each model optimized once per preset (verified; lossy passes guarded on held-out data), then, per "
        "execution provider, the input, the default output and that EP's own target output timed "
        f"interleaved in one process: {args.runs} runs after {args.warmup} warm-up, 2 CPU threads; "
        "latency ratio = median (min-max) of per-round output/input ratios. target-cuda and "
        "target-tensorrt are timed only on their own EPs (on a CPU-only host: size and cosine only).",
        "",
        "| model | preset | size | params | FLOPs | cosine | CPU p50 ms | CPU latency ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['preset']} | failed: {r['error'][:80]} |||||")
            continue
        cpu = (r.get("latency") or {}).get("cpu") or {}
        ratio = cpu.get("ratio_vs_input") or {}
        lines.append(
            f"| {r['model']} | {r['preset']} | {_fmt(r, 'size_ratio')} | {_fmt(r, 'params_ratio')} | {_fmt(r, 'flops_ratio')} | "
            + (f"{r['cosine_min']:.5f}" if r.get("cosine_min") is not None else "-")
            + (f" | {cpu['p50_ms']:.3f} | " if cpu.get("p50_ms") else " | - | ")
            + (f"{ratio['median']:.3f} ({ratio['min']:.2f}–{ratio['max']:.2f})" if ratio else "")
            + " |"
        )
    (out_dir / f"{kind}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

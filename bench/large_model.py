"""Memory and time of the default pipeline on a generated 2.7 GB external-data model.

Generates ten chained 8192x8192 float32 MatMuls (weights in one external-data file),
then times, as separate processes under /usr/bin/time -v, interleaved over --runs rounds:
  A. plain onnx: onnx.load (with external data) + onnx.save (external data)
  B. nnopt-graph opt --no-check (load, default pipeline, write)
  C. nnopt-graph opt (the same plus verification under ONNX Runtime), with --with-check
and writes bench/results/large_model.json and a markdown table.

Usage: python bench/large_model.py [--workdir DIR] [--runs N] [--with-check] [--dup]
  --dup  makes every second weight a byte-identical copy of the one before (for dedup).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

SIZE = 8192
LAYERS = 10
ROOT = Path(__file__).resolve().parent.parent


def generate(path: Path, dup: bool) -> int:
    """Write the model and its external data; returns the data size in bytes."""
    data_name = path.name + ".data"
    rng = np.random.default_rng(0)
    inits, nodes = [], []
    offset = 0
    with open(path.parent / data_name, "wb") as data:
        previous = None
        for i in range(LAYERS):
            if dup and i % 2 == 1 and previous is not None:
                weight = previous
            else:
                # Scaled so activations neither vanish nor overflow through the chain.
                weight = (
                    rng.standard_normal((SIZE, SIZE), dtype=np.float32) / np.sqrt(SIZE)
                ).astype(np.float32)
            data.write(weight.tobytes())
            previous = weight
            tensor = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[SIZE, SIZE])
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (
                ("location", data_name),
                ("offset", str(offset)),
                ("length", str(weight.nbytes)),
            ):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            offset += weight.nbytes
            inits.append(tensor)
            nodes.append(
                helper.make_node(
                    "MatMul",
                    ["x" if i == 0 else f"h{i - 1}", f"w{i}"],
                    [f"h{i}" if i < LAYERS - 1 else "y"],
                )
            )
        del previous
    graph = helper.make_graph(
        nodes,
        "large",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", SIZE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", SIZE])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, path)
    return offset


PLAIN = (
    "import onnx, sys; m = onnx.load(sys.argv[1]); "
    "onnx.save(m, sys.argv[2], save_as_external_data=True, all_tensors_to_one_file=True, "
    "location=sys.argv[2].rsplit('/', 1)[-1] + '.data')"
)


def timed(cmd: list[str]) -> dict[str, float]:
    """Run under /usr/bin/time -v; wall seconds and peak RSS in MB."""
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed: {proc.stderr[-2000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    return {"wall_s": wall, "peak_rss_mb": rss_kb / 1024}


def _clean(path: Path) -> None:
    for p in path.parent.glob(path.name + "*"):
        p.unlink()


def main() -> None:
    """Generate, measure interleaved, write results."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="/tmp/nnopt-large")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--with-check", action="store_true")
    parser.add_argument("--dup", action="store_true")
    parser.add_argument(
        "--pipeline", default=None, help="nnopt-graph -p text (default pipeline if unset)"
    )
    parser.add_argument("--name", default="large_model")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    model = work / ("large_dup.onnx" if args.dup else "large.onnx")
    if not model.exists():
        generate(model, args.dup)
    model_bytes = model.stat().st_size + (work / (model.name + ".data")).stat().st_size
    out = work / "out.onnx"
    nnopt = [sys.executable, "-m", "nnopt_graph.cli", "opt", str(model), str(out)]
    if args.pipeline:
        nnopt += ["-p", args.pipeline]
    commands = {
        "onnx load+save": [sys.executable, "-c", PLAIN, str(model), str(out)],
        "nnopt-graph opt --no-check": [*nnopt, "--no-check"],
    }
    if args.with_check:
        commands["nnopt-graph opt (verified)"] = nnopt
    results: dict[str, list[dict[str, float]]] = {k: [] for k in commands}
    loads: list[float] = []
    for _ in range(args.runs):
        loads.append(os.getloadavg()[0])
        for label, cmd in commands.items():
            _clean(out)
            results[label].append(timed(cmd))
    _clean(out)
    base = statistics.median(r["wall_s"] for r in results["onnx load+save"])
    rows = []
    for label, runs in results.items():
        walls = sorted(r["wall_s"] for r in runs)
        rss = sorted(r["peak_rss_mb"] for r in runs)
        rows.append(
            {
                "command": label,
                "runs": len(runs),
                "wall_s": {"min": walls[0], "median": statistics.median(walls), "max": walls[-1]},
                "peak_rss_mb": {"min": rss[0], "median": statistics.median(rss), "max": rss[-1]},
                "wall_ratio_vs_onnx": statistics.median(walls) / base,
                "rss_fraction_of_model": statistics.median(rss) * 2**20 / model_bytes,
            }
        )
    report = {
        "model": f"{LAYERS} x MatMul {SIZE}x{SIZE} float32{' (every 2nd weight duplicated)' if args.dup else ''}",
        "model_bytes": model_bytes,
        "commit": subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip(),
        "load_avg_1m": loads,
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "pipeline": args.pipeline or "default",
        "rows": rows,
    }
    results_dir = ROOT / "bench" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# {args.name}: {report['model']}, {model_bytes / 1e9:.2f} GB, pipeline {report['pipeline']}",
        "",
        f"{args.runs} interleaved runs per command, each a separate process under /usr/bin/time -v; "
        f"commit {report['commit']}, {report['cpus']} cores (shared), 1-minute load average "
        f"{min(loads):.1f}-{max(loads):.1f} at the start of the rounds.",
        "",
        "| command | wall s (min/median/max) | wall vs onnx | peak RSS MB (median) | RSS / model size |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        w, m = r["wall_s"], r["peak_rss_mb"]
        lines.append(
            f"| {r['command']} | {w['min']:.1f} / {w['median']:.1f} / {w['max']:.1f} | "
            f"{r['wall_ratio_vs_onnx']:.2f}x | {m['median']:.0f} | {100 * r['rss_fraction_of_model']:.1f}% |"
        )
    (results_dir / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

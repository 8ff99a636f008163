"""Peak memory of streaming 256 calibration samples through rapidocr det.

Writes a 256-sample .npz of 3x640x640 text images (1.26 GB, uncompressed so it is
memory-mapped), then, in a separate process under /usr/bin/time -v, runs the model over
every sample collecting min/max of every Conv output (what min-max calibration does),
and records peak RSS. Goal: under 2 GB. Writes bench/results/calib_streaming.{json,md}.

Usage: python bench/calib_streaming.py [--samples 256] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORKER = """
import sys, time
from models import fetch
from nnopt_graph.core.io import load
from nnopt_graph.runtime.calibrate import MinMaxStats, run_with_taps
from nnopt_graph.runtime.data import input_specs, load_dataset
model = load(fetch.fetch("rapidocr-det"))
taps = [n.outputs[0].name for n in model.graph if n.op_type == "Conv"]
data = load_dataset(sys.argv[1], input_specs(model))
stats = MinMaxStats()
start = time.perf_counter()
feeds = run_with_taps(model, taps, data, stats, threads=2)
print(f"feeds={feeds} taps={len(taps)} seconds={time.perf_counter() - start:.1f}")
"""


def main() -> None:
    """Generate the data, run the worker under /usr/bin/time, write the results."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--workdir", default="/tmp/nnopt-calib")
    args = parser.parse_args()
    from models import fetch

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"det_{args.samples}.npz"
    if not data.exists():
        # Written sample by sample into a memmapped .npy, then stored in the .npz uncompressed.
        shape = (args.samples, *fetch.REAL_MODELS["rapidocr-det"].input_shapes["x"])
        npy = work / "x.npy"
        array = np.lib.format.open_memmap(npy, mode="w+", dtype=np.float32, shape=shape)
        for i in range(args.samples):
            array[i] = fetch.example_inputs("rapidocr-det", seed=i)["x"]
        array.flush()
        del array
        import zipfile

        with zipfile.ZipFile(data, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            archive.write(npy, "x.npy")
        npy.unlink()
    start = time.perf_counter()
    proc = subprocess.run(
        ["/usr/bin/time", "-v", sys.executable, "-c", WORKER, str(data)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    rss_mb = (
        int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1)) / 1024
    )
    result = {
        "model": "rapidocr-det (PP-OCRv4 det), input 1x3x640x640",
        "samples": args.samples,
        "data_bytes": data.stat().st_size,
        "worker": proc.stdout.strip(),
        "wall_s": wall,
        "peak_rss_mb": rss_mb,
        "goal_mb": 2048,
        "met": rss_mb < 2048,
    }
    out = ROOT / "bench" / "results"
    (out / "calib_streaming.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "calib_streaming.md").write_text(
        "# Calibration streaming: rapidocr det\n\n"
        f"{args.samples} samples ({result['data_bytes'] / 1e9:.2f} GB .npz, memory-mapped) run through the "
        "model with every Conv output tapped for min/max, one process under /usr/bin/time -v, 1 run.\n\n"
        "| samples | data GB | wall s | peak RSS MB | goal |\n|---|---|---|---|---|\n"
        f"| {args.samples} | {result['data_bytes'] / 1e9:.2f} | {wall:.0f} | {rss_mb:.0f} | < 2048 MB: "
        f"{'met' if result['met'] else 'NOT met'} |\n\n{result['worker']}\n"
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""The lossless default pipeline on every zoo model, the digits CNN and the 10 real models.

Per model: nodes and weight bytes before/after, seconds of the passes alone and of the
whole job (load, passes, write, verification), and the verified output cosine against
the input on seeded example inputs. Writes bench/results/default_pipeline.{json,md}.

Usage: python bench/default_pipeline.py [--samples N] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models import fetch, zoo  # noqa: E402
from models.calib import write_calib_npz  # noqa: E402
from nnopt_graph import optimize  # noqa: E402


def _models(tmp: Path) -> dict[str, tuple[Path, Path]]:
    """Name -> (model path, calibration npz)."""
    out: dict[str, tuple[Path, Path]] = {}
    for name, build in zoo.ZOO.items():
        path = tmp / f"{name}.onnx"
        onnx.save(build(), path)
        out[f"zoo/{name}"] = (path, write_calib_npz(name, tmp / f"{name}.npz"))
    out["digits-cnn"] = (
        ROOT / "models/digits/digits_cnn.onnx",
        ROOT / "models/digits/digits_heldout.npz",
    )
    for name, path in fetch.fetch_all().items():
        out[name] = (path, write_calib_npz(name, tmp / f"{name}.npz"))
    return out


def main() -> None:
    """Run and write the table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3, help="runs per model; the median is kept")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        for name, (path, calib) in _models(tmp).items():
            job, passes = [], []
            for i in range(args.repeat):
                start = time.perf_counter()
                result = optimize(path, tmp / f"out{i}.onnx", calib=calib)
                job.append(time.perf_counter() - start)
                passes.append(sum(r.seconds for r in result.records))
            report = result.report
            rows.append(
                {
                    "model": name,
                    "nodes_in": report["input"]["nodes"],
                    "nodes_out": report["output"]["nodes"],
                    "params_in": report["input"]["params"],
                    "params_out": report["output"]["params"],
                    "size_in": report["input"]["size_bytes"],
                    "size_out": report["output"]["size_bytes"],
                    "passes_s_median": statistics.median(passes),
                    "job_s_median": statistics.median(job),
                    "cosine_min": result.fidelity.cosine_min,
                    "shapes_match": result.fidelity.shapes_match,
                    "feeds": result.fidelity.samples,
                    "changed_by": [r.name for r in result.records if r.modified],
                }
            )
            print(
                name,
                rows[-1]["nodes_in"],
                "->",
                rows[-1]["nodes_out"],
                f"{rows[-1]['cosine_min']:.7f}",
            )
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "default_pipeline.json").write_text(
        json.dumps({"repeat": args.repeat, "rows": rows}, indent=2) + "\n"
    )
    lines = [
        "# Default (lossless) pipeline",
        "",
        f"Each model optimized {args.repeat} times in one process on the CPU; seconds are medians. "
        "'job' = load + passes + atomic write + verification (ONNX checker full_check, ORT on the "
        "input and the output, seeded example inputs). Valid = checker and ORT accept the output.",
        "",
        "| model | nodes in → out | params in → out | size ratio | passes s | job s | cosine min | shapes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['nodes_in']} → {r['nodes_out']} | {r['params_in']:,} → {r['params_out']:,} | "
            f"{r['size_out'] / r['size_in']:.3f} | {r['passes_s_median']:.2f} | {r['job_s_median']:.2f} | "
            f"{r['cosine_min']:.7f} | {'same' if r['shapes_match'] else 'DIFFERENT'} |"
        )
    (results / "default_pipeline.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""fold-conv-affine and fuse-hardswish on the real models they apply to, in float.

Per model: the default pipeline's output (A, the reference), the same plus each rewrite
alone and both (B), all without int8, so the rewrites' own effect shows. Per B: the nodes
they changed, the worst held-out sample's relative L2 error and cosine against A (the
rewrites change outputs by rounding only: the lossless bound is rel-L2 1e-5), and CPU
latency against A under bench/target_cpu.py's windowed interleaved protocol (input A, A
again A', output B; B/A median of the per-window ratios and its 95% CI; A'/A the noise band).

Usage: python bench/cpu_rewrites.py [--models rapidocr-cls,rapidocr-det,rapidocr-rec]
Writes bench/results/cpu_rewrites.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchutil import commit_id  # noqa: E402
from target_cpu import time_against_input  # noqa: E402

from models import fetch  # noqa: E402
from models.calib import write_calib_npz  # noqa: E402
from nnopt_graph import optimize  # noqa: E402
from nnopt_graph.check.compare import compare_models  # noqa: E402
from nnopt_graph.core.io import load  # noqa: E402
from nnopt_graph.runtime.data import input_specs, load_dataset  # noqa: E402

VARIANTS = {
    "fold-conv-affine": "default,fold-conv-affine",
    "fuse-hardswish": "default,fuse-hardswish",
    "both": "default,fold-conv-affine,fuse-hardswish",
}


def _worst(a: Path, b: Path, held: Path) -> dict[str, float]:
    """Worst held-out sample's relative L2 error and cosine of B against A, all outputs."""
    fid = compare_models(a, b, load_dataset(held, input_specs(load(a))))
    return {
        "worst_rel_l2": fid.metric("rel_l2"),
        "worst_cosine": fid.metric("cosine"),
        "samples": fid.samples,
    }


def main() -> None:
    """Run every model and variant, write the tables."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="rapidocr-cls,rapidocr-det,rapidocr-rec")
    args = parser.parse_args()
    commit = commit_id()
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name in args.models.split(","):
            calib = write_calib_npz(name, tmp / f"{name}.calib.npz", samples=16, seed=0)
            held = write_calib_npz(name, tmp / f"{name}.held.npz", samples=16, seed=10_000)
            base = tmp / f"{name}.default.onnx"
            optimize(fetch.fetch(name), base, None, calib=calib, check=False)
            feed = next(load_dataset(held, input_specs(load(base))).batches(1))
            for variant, pipeline in VARIANTS.items():
                out = tmp / f"{name}.{variant}.onnx"
                result = optimize(base, out, pipeline, calib=calib, eval_data=held)
                stats = {
                    k: v
                    for r in result.records
                    if r.name in ("fold-conv-affine", "fuse-hardswish")
                    for k, v in r.stats.items()
                }
                row = {
                    "model": name,
                    "variant": variant,
                    "stats": stats,
                    "commit": commit,
                    **_worst(base, out, held),
                    **time_against_input(base, out, feed),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    res = ROOT / "bench/results"
    (res / "cpu_rewrites.json").write_text(json.dumps({"commit": commit, "rows": rows}, indent=2))
    lines = [
        "# fold-conv-affine and fuse-hardswish, in float (bench/cpu_rewrites.py)",
        "",
        f"Commit {commit}; x86_64, 2 cores, shared; ONNX Runtime CPU EP, 2 threads, spinning "
        "off. A = the default pipeline's output; B = A's pipeline plus the rewrite(s), no "
        "int8. Worst of 16 held-out samples against A (rel-L2 over all outputs; the lossless "
        "bound is 1e-5). Latency: bench/target_cpu.py's windowed interleaved protocol, one "
        "run per row; B/A min / median / max of per-window ratios, the median's 95% CI, "
        "A'/A the input against itself (the noise band).",
        "",
        "| model | rewrite | changed | worst rel-L2 | worst cosine | B/A min / median / max "
        "| median 95% CI | A'/A median | windows × runs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lt = r["latency"]
        changed = ", ".join(f"{k} {v}" for k, v in r["stats"].items() if v) or "-"
        lines.append(
            f"| {r['model']} | {r['variant']} | {changed} | {r['worst_rel_l2']:.2g} | "
            f"{r['worst_cosine']:.7f} | {lt['min']:.2f} / **{lt['median']:.3f}** / "
            f"{lt['max']:.2f} | [{lt['ci95_low']:.3f}, {lt['ci95_high']:.3f}] | "
            f"{r['a_vs_a']['median']:.3f} | {r['windows']} × {r['runs_per_window']} |"
        )
    (res / "cpu_rewrites.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

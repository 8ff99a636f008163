"""How far the lossless default pipeline's outputs move: the margin behind the equality check.

For every zoo model, the digits CNN and the 10 real models: the default pipeline's output
(no verification), then both models on seeded example inputs under ONNX Runtime (CPU EP),
per sample: the largest relative L2 error, the largest absolute difference, and the
smallest atol that allclose needs with rtol 1e-4. The defaults in
nnopt_graph/check/equality.py are set from these figures with a margin.
Writes bench/results/equality_margin.{json,md}.

Usage: python bench/equality_margin.py [--samples N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchutil import commit_id  # noqa: E402

from models import fetch, zoo  # noqa: E402
from models.calib import write_calib_npz  # noqa: E402
from nnopt_graph import optimize  # noqa: E402
from nnopt_graph.check.equality import LOSSLESS  # noqa: E402
from nnopt_graph.core.io import load  # noqa: E402
from nnopt_graph.runtime.data import input_specs, load_dataset  # noqa: E402
from nnopt_graph.runtime.execute import paired_outputs  # noqa: E402

RTOL = 1e-4


def _measure(src: Path, calib: Path, tmp: Path) -> dict[str, float]:
    out = tmp / "out.onnx"
    optimize(src, out, check=False)
    data = load_dataset(calib, input_specs(load(src)))
    worst = {"rel_l2": 0.0, "max_abs": 0.0, "atol_needed": 0.0}
    samples = 0
    for _names, ref, cand in paired_outputs(src, out, data):
        samples += 1
        for r, c in zip(ref, cand, strict=True):
            r64, c64 = np.asarray(r, np.float64), np.asarray(c, np.float64)
            finite = np.isfinite(r64) & np.isfinite(c64)
            r64, c64 = r64[finite], c64[finite]
            diff = np.abs(r64 - c64)
            norm = np.linalg.norm(r64)
            rel = float(np.linalg.norm(r64 - c64) / norm) if norm else 0.0
            worst["rel_l2"] = max(worst["rel_l2"], rel)
            worst["max_abs"] = max(worst["max_abs"], float(diff.max()) if diff.size else 0.0)
            need = diff - RTOL * np.abs(r64)
            worst["atol_needed"] = max(
                worst["atol_needed"], float(need.max()) if need.size else 0.0
            )
    return {**worst, "samples": samples}


def main() -> None:
    """Measure every model and write the tables."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=8)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        models: dict[str, tuple[Path, Path]] = {}
        for name, build in zoo.ZOO.items():
            path = tmp / f"{name}.onnx"
            onnx.save(build(), path)
            models[f"zoo/{name}"] = (path, write_calib_npz(name, tmp / f"{name}.npz", args.samples))
        models["digits-cnn"] = (
            ROOT / "models/digits/digits_cnn.onnx",
            ROOT / "models/digits/digits_heldout.npz",
        )
        for name, path in fetch.fetch_all().items():
            models[name] = (path, write_calib_npz(name, tmp / f"{name}.npz", args.samples))
        for name, (path, calib) in models.items():
            row = {"model": name, **_measure(path, calib, tmp)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    commit = commit_id()
    result = {
        "commit": commit,
        "machine": "x86_64, 2 cores, shared",
        "rtol": RTOL,
        "defaults": {"rtol": LOSSLESS.rtol, "atol": LOSSLESS.atol, "rel_l2": LOSSLESS.rel_l2},
        "rows": rows,
    }
    out = ROOT / "bench/results"
    (out / "equality_margin.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Equality margin of the lossless default pipeline",
        "",
        f"Commit {commit}, x86_64, 2 cores (shared), ONNX Runtime CPU EP. One run per model "
        f"(the pipeline is deterministic); per-sample worst over {args.samples} seeded example "
        "feeds (digits: its 360 held-out images).",
        f"Defaults in `nnopt_graph/check/equality.py`: rtol {LOSSLESS.rtol:g}, atol "
        f"{LOSSLESS.atol:g}, rel_l2 <= {LOSSLESS.rel_l2:g}.",
        "",
        "| model | samples | worst rel-L2 | worst max_abs | atol needed (rtol 1e-4) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['samples']} | {r['rel_l2']:.2e} | {r['max_abs']:.2e} | "
            f"{max(r['atol_needed'], 0.0):.2e} |"
        )
    worst_rel = max(r["rel_l2"] for r in rows)
    lines += [
        "",
        f"Largest rel-L2 over all models: {worst_rel:.2e}"
        + (f" ({LOSSLESS.rel_l2 / worst_rel:.0f}x below the default bound)." if worst_rel else "."),
    ]
    (out / "equality_margin.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

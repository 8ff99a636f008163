"""merge-parallel-matmuls on the encoders it applies to: in float, and inside --target cpu.

Per model, against its default-pipeline output A: in float, B0 = A as it is and B1 = the
same plus merge-parallel-matmuls; with --target cpu's passes, B0 = the preset without
the merge and B1 = the preset (which has it). The three models run in one windowed
interleaved comparison per feed (bench/target_cpu.py's protocol: windows of about 50 ms
of A, rotating order, 2 threads, spinning off), so B1/B0 is measured directly: the median
of its per-window ratios and that median's 95% CI. Worst cosine: each B against A over
the held-out samples (the float pair must be identical: max |B1 - B0| is reported).
Feeds: the zoo bert's first held-out sample ([2, 16]); minilm's first held-out sentence
padded to 128 tokens as stored, and two held-out sentences at their own length.

Usage: python bench/parallel_matmuls.py [--repeats 2]
Writes bench/results/parallel_matmuls.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import prune_transformer as pt  # noqa: E402
from benchutil import commit_id, write_results  # noqa: E402
from prune_transformer_windowed import timed_feeds  # noqa: E402
from target_cpu import _median_ci, windowed_latency  # noqa: E402

from nnopt_graph import optimize  # noqa: E402
from nnopt_graph.check.compare import compare_models  # noqa: E402
from nnopt_graph.core.io import load  # noqa: E402
from nnopt_graph.pipeline.presets import CPU_BEFORE_INT8  # noqa: E402
from nnopt_graph.runtime.data import input_specs, load_dataset  # noqa: E402

MERGE = "merge-parallel-matmuls"
WITHOUT = CPU_BEFORE_INT8.replace(f"{MERGE},", "")
PAIRS = {
    "float": ("default", f"default,{MERGE}"),
    "target-cpu": (f"default,{WITHOUT},quantize-int8", f"default,{CPU_BEFORE_INT8},quantize-int8"),
}


def _outputs(path: Path, feed: dict[str, Any]) -> list[np.ndarray]:
    return pt._session(path).run(None, feed)


def _rows(name: str, tmp: Path, repeats: int, commit: str) -> list[dict[str, Any]]:
    base, cal, held, feed = pt.baseline(name, tmp)
    data = load_dataset(held, input_specs(load(base)))
    feeds = [feed]
    if name != "bert-encoder":
        feeds += timed_feeds(held, base, feed, "own", 3)[1:]
    rows = []
    for kind, (without, with_merge) in PAIRS.items():
        target = "cpu" if kind == "target-cpu" else None
        paths = []
        for index, pipeline in enumerate((without, with_merge)):
            out = tmp / f"{name}.{kind}.{index}.onnx"
            optimize(str(base), out, pipeline, target=target, calib=str(cal), check=False)
            paths.append(out)
        cosines = [round(compare_models(base, p, data).metric("cosine"), 5) for p in paths]
        identical = max(
            float(np.abs(a - b).max())
            for a, b in zip(_outputs(paths[0], feed), _outputs(paths[1], feed), strict=True)
        )
        for timed in feeds:
            for repeat in range(repeats):
                lat = windowed_latency([base, *paths], timed)
                ratios = [t1 / t0 for t0, t1 in zip(lat.times[1], lat.times[2], strict=True)]
                rows.append(
                    {
                        "model": name,
                        "kind": kind,
                        "tokens": int(next(iter(timed.values())).shape[-1]),
                        "repeat": repeat,
                        "worst_cosine": cosines,
                        "max_abs_b1_b0": identical,
                        "b0_a": round(lat.ratio[1]["median"], 4),
                        "b1_a": round(lat.ratio[2]["median"], 4),
                        "b1_b0": round(statistics.median(ratios), 4),
                        **{
                            k: round(v, 4)
                            for k, v in _median_ci(lat.times[2], lat.times[1]).items()
                        },
                        "windows": lat.runs,
                        "a_ms": round(lat.p50_ms[0], 4),
                        "commit": commit,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    """Time both pairs on both encoders, write the tables."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    commit = commit_id()
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        for name in ("bert-encoder", "minilm-l3-paraphrase"):
            rows += _rows(name, Path(tmp_name), args.repeats, commit)
    lines = [
        "# merge-parallel-matmuls: in float and inside --target cpu (bench/parallel_matmuls.py)",
        "",
        f"Commit {commit}; x86_64, 2 cores, shared; onnxruntime CPU EP, 2 threads, spinning "
        "off. A: the default pipeline's output. float: B0 = A, B1 = A + merge-parallel-"
        "matmuls. target-cpu: B0 = the preset without the merge, B1 = the preset. A, B0 and "
        "B1 in one windowed interleaved run per row (windows of about 50 ms of A, rotating "
        f"order); {args.repeats} runs per feed. B1/B0: median of per-window ratios and its "
        "95% CI. Worst cosine: B0, B1 against A over the held-out samples.",
        "",
        "| model | pipelines | tokens | worst cosine B0 / B1 | max abs B1 - B0 | B0/A | B1/A | "
        "**B1/B0** | B1/B0 95% CI | A ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['kind']} | {r['tokens']} | {r['worst_cosine'][0]:.5f} / "
            f"{r['worst_cosine'][1]:.5f} | {r['max_abs_b1_b0']:.2g} | {r['b0_a']:.3f} | "
            f"{r['b1_a']:.3f} | **{r['b1_b0']:.3f}** | [{r['ci95_low']:.3f}, "
            f"{r['ci95_high']:.3f}] | {r['a_ms']:.3f} |"
        )
    write_results("parallel_matmuls", {"commit": commit, "rows": rows}, lines)


if __name__ == "__main__":
    main()

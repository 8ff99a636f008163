"""Check quantize-int8's CPU cost model against measured latency, per real model.

Per model: the lossless default pipeline's output D; the full int8 candidate F (every
node the plan quantizes, no back-off: `quantize-int8{speed-check=false}` under a guard
that accepts anything) and the cost model's view of the same candidate (its 'modelled'
decision: float MACs, int8 compute, standalone Q/DQ elements, extra kernel calls). Then
D, D again and F timed as bench/target_cpu.py times its rows (time_against_input:
compare_latency's windowed interleaved protocol, 2 threads, spinning off, >= 30 windows,
about 4 s of D). A decision is right when the model says
keep (ratio < KEEP_BELOW) exactly where F is measured faster than D beyond D'/D's band.

Usage: python bench/int8_cost_model.py [--models a,b] [--calib 48] [--render]
Writes bench/results/int8_cost_model.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchutil import commit_id  # noqa: E402
from target_cpu import time_against_input  # noqa: E402

from models import fetch  # noqa: E402
from models.calib import write_calib_npz  # noqa: E402
from nnopt_graph import optimize  # noqa: E402
from nnopt_graph.core.io import load  # noqa: E402
from nnopt_graph.passes.quantize.cost import KEEP_BELOW, KERNEL_COST, QDQ_COST  # noqa: E402
from nnopt_graph.runtime.data import input_specs, load_dataset  # noqa: E402

ANYTHING = "cosine>=-1"


def _sources(tmp: Path, calib: int, names: list[str] | None) -> dict[str, tuple[Path, Path]]:
    digits = ROOT / "models/digits"
    out = {"digits-cnn": (digits / "digits_cnn.onnx", digits / "digits_calib.npz")}
    for name in fetch.REAL_MODELS:
        if not names or name in names:  # fetch only what is asked for
            c = write_calib_npz(name, tmp / f"{name}.calib.npz", samples=calib, seed=0)
            out[name] = (fetch.fetch(name), c)
    return {k: v for k, v in out.items() if not names or k in names}


def _int8_record(result: Any) -> Any:
    return next(r for r in result.records if r.name == "quantize-int8")


def _modelled(record: Any) -> dict[str, Any] | None:
    for d in record.decisions:
        if "modelled" in d:
            return {**d["modelled"], "dropped": d.get("dropped", [])}
    return None


def measure(name: str, src: Path, calib: Path, tmp: Path) -> dict[str, Any]:
    """One model's modelled and measured int8/float ratio."""
    base = tmp / f"{name}.default.onnx"
    optimize(src, base, calib=calib)
    full = tmp / f"{name}.int8.onnx"
    forced = optimize(
        base,
        full,
        "quantize-int8{speed-check=false}",
        target="cpu",
        calib=calib,
        guard=ANYTHING,
    )
    modelled = optimize(base, None, "quantize-int8", target="cpu", calib=calib, guard=ANYTHING)
    rec = _int8_record(modelled)
    data = load_dataset(calib, input_specs(load(base)))
    feed = next(data.batches(1))
    timed = time_against_input(base, full, feed)
    return {
        "model": name,
        "forced_outcome": _int8_record(forced).outcome,
        "decision": rec.outcome,
        "modelled": _modelled(rec),
        "measured": timed["latency"],
        "a_vs_a": timed["a_vs_a"],
        "p50_ms_float": timed["p50_ms_in"],
        "windows": timed["windows"],
        "load_1min": timed["load_1min"],
    }


def write_md(rows: list[dict[str, Any]], commit: str) -> None:
    """bench/results/int8_cost_model.md from the rows."""
    res = ROOT / "bench/results"
    lines = [
        "# quantize-int8's CPU cost model against measured latency (bench/int8_cost_model.py)",
        "",
        f"Commit {commit}; x86_64 (AVX-512 VNNI), 2 cores, shared; ONNX Runtime CPU EP. "
        f"Constants: KEEP_BELOW {KEEP_BELOW}, KERNEL_COST {KERNEL_COST:.0f} MACs per extra "
        f"kernel call, QDQ_COST {QDQ_COST:.0f} MACs per standalone Q/DQ element. F = the full "
        "int8 candidate (no back-off, no speed check), D = the default pipeline's output; "
        "modelled = the cost model's ratio for F; measured = F/D under the windowed "
        "interleaved protocol (min / median / max per window, D'/D the noise band). "
        "float cost = float MACs with NCHW_FACTOR on Convs that are not 2-D. One run per "
        "model.",
        "",
        "| model | float MACs | float cost | int8 compute | Q/DQ elements | extra calls | modelled | "
        "decision | measured F/D | D'/D | D ms | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m, lt, aa = r["modelled"] or {}, r["measured"], r["a_vs_a"]
        lines.append(
            f"| {r['model']} | {m.get('float-macs', '-')} | {m.get('float-cost', '-')} | "
            f"{m.get('int8-compute', '-')} | "
            f"{m.get('standalone-qdq-elements', '-')} | {m.get('extra-kernel-calls', '-')} | "
            f"{m['ratio']:.3f} | "
            if m
            else f"| {r['model']} | - | - | - | - | - | "
        )
        lines[-1] += (
            f"{r['decision']} | {lt['min']:.2f} / **{lt['median']:.3f}** / {lt['max']:.2f} | "
            f"{aa['min']:.2f} / {aa['median']:.3f} / {aa['max']:.2f} | "
            f"{r['p50_ms_float']:.3f} | {r['load_1min'][0]} → {r['load_1min'][1]} |"
        )
    (res / "int8_cost_model.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    """Run the models and write the tables."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--models")
    parser.add_argument("--calib", type=int, default=48)
    parser.add_argument("--render", action="store_true", help="rewrite the .md from the .json")
    args = parser.parse_args()
    if args.render:
        saved = json.loads((ROOT / "bench/results/int8_cost_model.json").read_text())
        write_md(saved["rows"], saved["commit"])
        return
    commit = commit_id()
    names = args.models.split(",") if args.models else None
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name, (src, calib) in _sources(tmp, args.calib, names).items():
            row = {**measure(name, src, calib, tmp), "commit": commit}
            rows.append(row)
            print(json.dumps(row), flush=True)
    res = ROOT / "bench/results"
    (res / "int8_cost_model.json").write_text(
        json.dumps(
            {
                "commit": commit,
                "constants": {
                    "KEEP_BELOW": KEEP_BELOW,
                    "KERNEL_COST": KERNEL_COST,
                    "QDQ_COST": QDQ_COST,
                },
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    write_md(rows, commit)


if __name__ == "__main__":
    main()

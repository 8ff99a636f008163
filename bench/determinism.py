"""Same input, options and data -> byte-identical output, even on a loaded machine.

Runs ``nnopt-graph opt`` (whole processes) RUNS times per case and records each output's
sha256; runs listed in --loaded run while two busy processes keep both cores occupied.
Cases: ``--target cpu`` on digits, nudenet and rapidocr det/rec/cls, and ``-p`` with each
lossy pass on digits. Writes bench/results/determinism.{json,md}.

Usage: python bench/determinism.py [--runs 5] [--loaded 2,4] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchutil import commit_id  # noqa: E402

from models import fetch  # noqa: E402
from models.calib import write_calib_npz  # noqa: E402

DIGITS = ROOT / "models/digits/digits_cnn.onnx"
DIGITS_CALIB = ROOT / "models/digits/digits_calib.npz"
LOSSY = [
    "prune-channels{ratio=0.25}",
    "sparsify{pattern=2:4}",
    "quantize-int8",
    "quantize-fp16",
    "quantize-int4",
    "cluster-weights{bits=4}",
]
BUSY = "import time\nend = time.time() + 3600\nwhile time.time() < end: pass\n"


def _cases(tmp: Path) -> dict[str, list[str]]:
    cases = {"digits --target cpu": [str(DIGITS), "--target", "cpu", "--calib", str(DIGITS_CALIB)]}
    for name in ("nudenet-320n", "rapidocr-det", "rapidocr-rec", "rapidocr-cls"):
        calib = write_calib_npz(name, tmp / f"{name}.npz", samples=24)
        cases[f"{name} --target cpu"] = [
            str(fetch.fetch(name)),
            "--target",
            "cpu",
            "--calib",
            str(calib),
        ]
    for spec in LOSSY:
        cases[f"digits -p {spec}"] = [str(DIGITS), "-p", spec, "--calib", str(DIGITS_CALIB)]
    return cases


def _run(args: list[str], out: Path) -> tuple[str, float, int]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "nnopt_graph.cli", "opt", args[0], str(out), *args[1:]],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        return (
            f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1]}",
            seconds,
            proc.returncode,
        )
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    out.unlink()
    return digest, seconds, 0


def main() -> None:
    """Run every case and write the tables."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--loaded", default="2,4", help="1-based run numbers under load")
    parser.add_argument("--only", nargs="*")
    args = parser.parse_args()
    loaded = {int(x) for x in args.loaded.split(",") if x}
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cases = _cases(tmp)
        for case, cli_args in cases.items():
            if args.only and not any(o in case for o in args.only):
                continue
            runs = []
            for i in range(1, args.runs + 1):
                busy = []
                if i in loaded:
                    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(2)]
                try:
                    digest, seconds, code = _run(cli_args, tmp / "out.onnx")
                finally:
                    for p in busy:
                        p.kill()
                        p.wait()
                runs.append(
                    {
                        "run": i,
                        "loaded": i in loaded,
                        "sha256": digest,
                        "seconds": round(seconds, 1),
                    }
                )
            distinct = sorted({r["sha256"] for r in runs})
            rows.append({"case": case, "runs": runs, "distinct": len(distinct)})
            print(json.dumps(rows[-1]), flush=True)
    commit = commit_id()
    out = ROOT / "bench/results"
    name = "determinism" if not args.only else "determinism_partial"
    (out / f"{name}.json").write_text(
        json.dumps(
            {
                "commit": commit,
                "machine": "x86_64, 2 cores, shared",
                "loaded_runs": sorted(loaded),
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    lines = [
        "# Determinism: the same command, the same bytes",
        "",
        f"Commit {commit}, x86_64, 2 cores (shared with other jobs). Each case: {args.runs} whole "
        f"`nnopt-graph opt` processes; runs {sorted(loaded)} ran while two busy-loop processes kept "
        "both cores occupied. Default `--speed-check model`, `--seed 0`.",
        "",
        "| case | runs | distinct outputs | sha256 (first 16) | seconds per run |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        digests = ", ".join(sorted({x["sha256"][:16] for x in r["runs"]}))
        secs = " / ".join(str(x["seconds"]) for x in r["runs"])
        lines.append(f"| {r['case']} | {len(r['runs'])} | {r['distinct']} | {digests} | {secs} |")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Exporter x model table: loads, default pipeline verified, --target cpu verified.

Run: ``PYTHONPATH=. python bench/exporters_table.py`` (needs torch, tensorflow, tf2onnx,
paddlepaddle, paddle2onnx and skl2onnx installed); writes bench/results/exporters.md.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from nnopt_graph.core import io
from nnopt_graph.job import optimize
from tests.exporters.builders import HEAVY, build_isolated, skl_models


def _cell(model: Path, calib: Path, out: Path, target: str | None) -> tuple[str, dict]:
    try:
        result = optimize(model, out, calib=calib, target=target)
    except Exception as exc:  # the table records the failure
        return f"no: {type(exc).__name__}: {' '.join(str(exc).split())[:90]}", {}
    fid = result.fidelity
    return f"yes (cosine_min {fid.cosine_min:.6f}, {fid.samples} samples)", result.report


def main() -> None:
    """Build every model, run both pipelines, write the markdown table."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        models: list[tuple[str, str, object]] = [
            ("skl2onnx", name, pair) for name, pair in skl_models(tmp).items()
        ]
        models += [(exp, name, (exp, name)) for exp, name in HEAVY]
        for exporter, name, pair in models:
            sub = tmp / f"{len(rows)}"
            sub.mkdir()
            try:
                model, calib = pair if exporter == "skl2onnx" else build_isolated(pair, sub)
                io.load(model)
                loads = "yes"
            except Exception as exc:
                rows.append((exporter, name, f"no: {str(exc)[-120:]}", "-", "-", "-"))
                continue
            default, rep = _cell(model, calib, sub / "default.onnx", None)
            cpu, _ = _cell(model, calib, sub / "cpu.onnx", "cpu")
            size = (
                f"{rep['input']['size_bytes']} → {rep['output']['size_bytes']}; "
                f"params {rep['input']['params']} → {rep['output']['params']}"
                if rep
                else "-"
            )
            rows.append((exporter, name, loads, default, cpu, size))
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    lines = [
        "# Models from every exporter",
        "",
        f"Commit measured: {commit}; machine: x86_64, 2 cores, shared. One run per cell;",
        "verified = the written file passes the ONNX checker (full check), runs under ONNX",
        "Runtime, and matches the input model's outputs on held-out data (calibration data:",
        "64 random feeds for the image models, 200 rows of digits for skl2onnx).",
        "Script: `PYTHONPATH=. python bench/exporters_table.py`.",
        "",
        "| exporter | model | loads | default pipeline verified | `--target cpu` verified "
        "| default: bytes; params |",
        "|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    Path("bench/results/exporters.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

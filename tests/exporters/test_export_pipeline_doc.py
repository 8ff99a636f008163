"""docs/export-pipeline.md's example runs as written (slow: needs torch)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "export-pipeline.md"


def _code() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 1, "the doc has one python example"
    return blocks[0]


def test_doc_example_is_an_export_then_optimize():
    code = _code()
    assert "torch.onnx.export(" in code
    assert code.index("torch.onnx.export(") < code.index("nnopt_graph.optimize(")


@pytest.mark.slow
def test_doc_example_runs(tmp_path):
    pytest.importorskip("torch")
    proc = subprocess.run(
        [sys.executable, "-c", _code()],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    cosine = float(proc.stdout.split()[0])
    assert cosine >= 0.99
    onnx.checker.check_model(str(tmp_path / "exported.cpu.onnx"), full_check=True)
    assert (tmp_path / "exported.report.html").read_text().startswith("<!doctype html>")

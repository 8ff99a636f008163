"""mypy --strict is clean on the measurement (check/), the pass contract and manager (pipeline/)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_strict_on_check():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--follow-imports=silent",
            "nnopt_graph/check",
            "nnopt_graph/pipeline",
            "nnopt_graph/core",
            "nnopt_graph/errors.py",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]

"""mypy: --strict on core/, pipeline/ and check/ (and errors.py), plain on the whole package."""

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


def test_mypy_on_the_whole_package():
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "nnopt_graph"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "Success: no issues found" in proc.stdout

"""Packaging: the version is defined once; a wheel builds, installs and runs (slow)."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

import nnopt_graph

ROOT = Path(__file__).resolve().parents[1]


def test_version_is_defined_once():
    from nnopt_graph._version import __version__

    assert nnopt_graph.__version__ == __version__
    assert importlib.metadata.version("nnopt-graph") == __version__
    assert (
        'version = "'
        not in (ROOT / "pyproject.toml").read_text().split("[project]")[1].split("\n[")[0]
    )


@pytest.mark.slow
def test_wheel_builds_installs_and_runs(tmp_path):
    pytest.importorskip("build")
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    wheel = next(dist.glob("nnopt_graph-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([venv / "bin" / "pip", "install", "-q", str(wheel)], check=True, timeout=600)
    help_ = subprocess.run(
        [venv / "bin" / "nnopt-graph", "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=True,
    )
    assert "opt" in help_.stdout and "list-passes" in help_.stdout
    version = subprocess.run(
        [venv / "bin" / "nnopt-graph", "--version"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=True,
    )
    assert nnopt_graph.__version__ in version.stdout + version.stderr

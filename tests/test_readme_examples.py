"""The README's examples run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _workdir(tmp_path: Path) -> Path:
    (tmp_path / "models").symlink_to(ROOT / "models")
    return tmp_path


def _cli(command: str) -> list[str]:
    import shlex

    words = shlex.split(command)
    assert words[0].endswith("nnopt-graph"), command
    return [sys.executable, "-m", "nnopt_graph.cli", *words[1:]]


def test_main_job_command(tmp_path):
    block = re.search(r"```bash\n(.*?)\n```", README, re.S).group(1)
    job = block.split(" && ")[-1]
    assert "digits_cnn.onnx" in job
    proc = subprocess.run(_cli(job), cwd=_workdir(tmp_path), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "digits_opt.onnx").exists() and (tmp_path / "digits_report.json").exists()


def test_test_command_matches_ci():
    blocks = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert blocks[1] == ci


CONSOLE = re.search(r"```console\n(.*?)\n```", README, re.S).group(1).splitlines()


@pytest.mark.parametrize("line", [c[2:] for c in CONSOLE if c.startswith("$ ")])
def test_console_examples(tmp_path, line):
    work = _workdir(tmp_path)
    if line.split()[1] in {"compare", "bench"} and "out.onnx" in line:
        # compare/bench read the optimized model the first example writes.
        subprocess.run(
            _cli("nnopt-graph opt models/digits/digits_cnn.onnx out.onnx"),
            cwd=work,
            check=True,
            capture_output=True,
        )
    proc = subprocess.run(_cli(line), cwd=work, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_python_example(tmp_path, monkeypatch):
    code = re.search(r"```python\n(.*?)\n```", README, re.S).group(1)
    monkeypatch.chdir(_workdir(tmp_path))
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "digits_api.onnx").exists()

"""Documentation in the repository stays true: docs/cli.md is the parser's own output."""

from __future__ import annotations

from pathlib import Path

from nnopt_graph.cli_docs import cli_reference

ROOT = Path(__file__).resolve().parent.parent


def test_cli_reference_is_current():
    assert (ROOT / "docs/cli.md").read_text() == cli_reference(), (
        "docs/cli.md is stale: run `python -m nnopt_graph.cli_docs > docs/cli.md`"
    )


def test_every_option_has_help():
    text = cli_reference()
    assert "|  |" not in text  # an argument without help text leaves an empty cell


def test_writing_a_pass_example_works_in_two_files(tmp_path):
    """The guide's pass and its test, copied to a folder of their own, pass as written."""
    import re
    import subprocess
    import sys

    text = (ROOT / "docs/writing-a-pass.md").read_text()
    blocks = re.findall(r"```python\n(.*?)\n```", text, re.S)
    assert len(blocks) == 2
    folder = tmp_path / "my_passes"
    folder.mkdir()
    (folder / "double_negation.py").write_text(blocks[0] + "\n")
    (folder / "test_double_negation.py").write_text(blocks[1] + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_double_negation.py"],
        cwd=folder,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "4 passed" in proc.stdout
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".py") == [
        "double_negation.py",
        "test_double_negation.py",
    ]

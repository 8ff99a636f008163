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

"""What every bench script records beside its figures, and where it writes them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def commit_id() -> str:
    """The checkout's short HEAD commit (empty outside a git checkout)."""
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()


def write_results(name: str, payload: dict[str, Any], lines: list[str]) -> None:
    """bench/results/NAME.json (the payload, indented) and NAME.md (the table's lines)."""
    results = ROOT / "bench" / "results"
    (results / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (results / f"{name}.md").write_text("\n".join(lines) + "\n")


def guard_verdict(result: Any) -> str | None:
    """What the guard did with a run's lossy pass: the last pass record that has a verdict.

    Lossless passes after it (a cleanup, merge-parallel-matmuls) have none.
    """
    actions = [r.guard_action for r in result.records if r.guard_action]
    return actions[-1] if actions else None

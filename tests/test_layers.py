"""The import contracts in pyproject.toml ([tool.importlinter]) hold."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def _package_imports() -> dict[str, set[str]]:
    import grimp

    graph = grimp.build_graph("nnopt_graph", exclude_type_checking_imports=True)
    return {
        module: {m for m in graph.find_modules_directly_imported_by(module) if m != module}
        for module in graph.modules
    }


def test_the_package_import_graph_has_no_cycle():
    import graphlib

    imports = _package_imports()
    assert len(imports) > 80  # the whole package was read, not an empty graph
    try:
        order = list(graphlib.TopologicalSorter(imports).static_order())
    except graphlib.CycleError as exc:  # pragma: no cover - the failure message
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None
    assert set(order) >= set(imports)


def test_a_cycle_in_an_import_graph_is_found():
    import graphlib

    imports = _package_imports()
    # Make the lowest layer import the top one: the check above must then fail.
    imports["nnopt_graph.core.io"] = imports["nnopt_graph.core.io"] | {"nnopt_graph.cli"}
    try:
        list(graphlib.TopologicalSorter(imports).static_order())
    except graphlib.CycleError:
        return
    raise AssertionError("a cycle through core.io -> cli was not detected")

"""The package's declared dependencies match what its code imports (issue: honest dependencies)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "nnopt_graph"


def _declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(specs: list[str]) -> set[str]:
        return {re.split(r"[<>=!~\[; ]", s, maxsplit=1)[0].lower().replace("_", "-") for s in specs}

    extras = project["optional-dependencies"]
    optional = set().union(*(names(v) for k, v in extras.items() if k != "test"))
    return names(project["dependencies"]), optional


def _imported_modules() -> set[str]:
    modules: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - {"nnopt_graph", "__future__"}


def _distributions_of(module: str) -> set[str]:
    """Every installed distribution providing ``module`` (namespace packages have several)."""
    dists = importlib.metadata.packages_distributions().get(module, [module])
    return {d.lower().replace("_", "-") for d in dists}


def test_every_imported_package_is_declared():
    required, optional = _declared()
    undeclared = sorted(
        m for m in _imported_modules() if not _distributions_of(m) & (required | optional)
    )
    assert not undeclared, f"imported but not declared: {undeclared}"


def test_every_required_dependency_is_imported():
    required, _ = _declared()
    imported = set().union(*(_distributions_of(m) for m in _imported_modules()))
    unused = sorted(required - imported)
    assert not unused, f"declared but never imported: {unused}"


def test_the_check_sees_the_imports():
    # A check that read nothing would pass the two tests above vacuously.
    assert {"onnx", "onnx_ir", "numpy", "onnxruntime", "rich", "ml_dtypes"} <= _imported_modules()

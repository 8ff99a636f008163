"""The pass registry: name to class (built-in passes loaded on first use), and the presets.

A built-in pass is found through the pass catalog (``catalog.json`` names its module), so a
pipeline imports only the modules of the passes it names; listing every pass, or a name
the catalog does not know, imports them all.
"""

from __future__ import annotations

__all__ = ["PRESETS", "get_pass", "pass_names", "register_pass", "registered_passes"]

import functools
import importlib
import json
from pathlib import Path

from nnopt_graph.errors import BadInputError
from nnopt_graph.pipeline.base import _REGISTRY, Pass, register_pass
from nnopt_graph.pipeline.presets import PRESETS

# Written by pipeline.catalog (its CATALOG_PATH); a test keeps it current.
_CATALOG = Path(__file__).with_name("catalog.json")


def _builtin_modules() -> tuple[str, ...]:
    from nnopt_graph.passes import MODULES

    return MODULES


def _ensure_loaded() -> None:
    # Importing every built-in module registers every built-in pass.
    for module in _builtin_modules():
        importlib.import_module(module)


@functools.cache
def _catalog_modules() -> dict[str, str]:
    """Built-in pass name -> the module defining it, from the committed catalog.

    Read here, not through ``pipeline.catalog``: that module builds the catalog from
    this registry.
    """
    try:
        passes = json.loads(_CATALOG.read_text())["passes"]
    except (OSError, ValueError, KeyError):
        return {}
    builtin = set(_builtin_modules())
    return {p["name"]: p["module"] for p in passes if p.get("module") in builtin}


def registered_passes() -> dict[str, type[Pass]]:
    """All registered passes, by name: built-ins in ``MODULES`` order, then the others.

    The order does not depend on which modules a pipeline loaded first.
    """
    _ensure_loaded()
    index = {module: i for i, module in enumerate(_builtin_modules())}
    ordered = sorted(_REGISTRY.items(), key=lambda item: index.get(item[1].__module__, len(index)))
    return dict(ordered)


def pass_names() -> list[str]:
    """Names of all registered passes."""
    return list(registered_passes())


def get_pass(name: str) -> type[Pass]:
    """The pass class registered under ``name``.

    Raises:
        BadInputError: no such pass.
    """
    if name not in _REGISTRY and name in _catalog_modules():
        importlib.import_module(_catalog_modules()[name])
    if name in _REGISTRY:
        return _REGISTRY[name]
    passes = registered_passes()
    if name not in passes:
        import difflib

        close = difflib.get_close_matches(name, [*passes, *PRESETS], n=1)
        hint = f"; did you mean '{close[0]}'?" if close else " (see 'nnopt-graph list-passes')"
        raise BadInputError(f"unknown pass '{name}'{hint}")
    return passes[name]

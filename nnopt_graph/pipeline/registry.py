"""The pass registry: name to class, and the named presets."""

from __future__ import annotations

__all__ = ["PRESETS", "get_pass", "pass_names", "register_pass", "registered_passes"]

from typing import TypeVar

from nnopt_graph.errors import BadInputError
from nnopt_graph.pipeline.base import Pass

_REGISTRY: dict[str, type[Pass]] = {}

# Preset name -> pipeline text. Filled by the modules that define the passes.
PRESETS: dict[str, str] = {}

P = TypeVar("P", bound=type[Pass])


def register_pass(cls: P) -> P:
    """Class decorator: make the pass known under its ``name``."""
    name = cls.name
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"pass name '{name}' registered twice")
    _REGISTRY[name] = cls
    return cls


def _ensure_loaded() -> None:
    # Importing the passes package registers every built-in pass.
    import nnopt_graph.passes  # noqa: F401


def registered_passes() -> dict[str, type[Pass]]:
    """All registered passes, by name, in registration order."""
    _ensure_loaded()
    return dict(_REGISTRY)


def pass_names() -> list[str]:
    """Names of all registered passes."""
    return list(registered_passes())


def get_pass(name: str) -> type[Pass]:
    """The pass class registered under ``name``.

    Raises:
        BadInputError: no such pass.
    """
    passes = registered_passes()
    if name not in passes:
        raise BadInputError(f"unknown pass '{name}' (see 'nnopt-graph list-passes')")
    return passes[name]

"""The pass registry: name to class (built-in passes loaded on first use), and the presets."""

from __future__ import annotations

__all__ = ["PRESETS", "get_pass", "pass_names", "register_pass", "registered_passes"]

from nnopt_graph.errors import BadInputError
from nnopt_graph.pipeline.base import _REGISTRY, Pass, register_pass
from nnopt_graph.pipeline.presets import PRESETS


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
        import difflib

        close = difflib.get_close_matches(name, [*passes, *PRESETS], n=1)
        hint = f"; did you mean '{close[0]}'?" if close else " (see 'nnopt-graph list-passes')"
        raise BadInputError(f"unknown pass '{name}'{hint}")
    return passes[name]

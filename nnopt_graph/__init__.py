"""nnopt-graph: a compiler-style ONNX graph optimizer with verified, guarded passes.

The public names load on first use (PEP 562), so ``import nnopt_graph`` and the CLI's
``--help``, ``--version`` and ``list-passes`` start without importing onnx or ONNX Runtime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "BadInputError",
    "CheckFailedError",
    "NnoptError",
    "OptimizeResult",
    "Pass",
    "PassContext",
    "PassFailedError",
    "PassManager",
    "PassResult",
    "PassSpec",
    "Pipeline",
    "load",
    "optimize",
    "register_pass",
    "save",
]

from nnopt_graph._version import __version__ as __version__  # noqa: E402  (defined once)

# Public name -> module that defines it.
_LAZY = {
    "BadInputError": "nnopt_graph.errors",
    "CheckFailedError": "nnopt_graph.errors",
    "NnoptError": "nnopt_graph.errors",
    "PassFailedError": "nnopt_graph.errors",
    "load": "nnopt_graph.core.io",
    "save": "nnopt_graph.core.io",
    "OptimizeResult": "nnopt_graph.job",
    "optimize": "nnopt_graph.job",
    "Pass": "nnopt_graph.pipeline.base",
    "PassContext": "nnopt_graph.pipeline.base",
    "PassResult": "nnopt_graph.pipeline.base",
    "PassSpec": "nnopt_graph.pipeline.grammar",
    "Pipeline": "nnopt_graph.pipeline.grammar",
    "PassManager": "nnopt_graph.pipeline.manager",
    "register_pass": "nnopt_graph.pipeline.registry",
}

if TYPE_CHECKING:
    from nnopt_graph.core.io import load, save
    from nnopt_graph.errors import BadInputError, CheckFailedError, NnoptError, PassFailedError
    from nnopt_graph.job import OptimizeResult, optimize
    from nnopt_graph.pipeline.base import Pass, PassContext, PassResult
    from nnopt_graph.pipeline.grammar import PassSpec, Pipeline
    from nnopt_graph.pipeline.manager import PassManager
    from nnopt_graph.pipeline.registry import register_pass


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nnopt_graph' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])

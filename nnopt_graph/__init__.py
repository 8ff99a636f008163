"""nnopt-graph: a compiler-style ONNX graph optimizer with verified, guarded passes."""

from nnopt_graph._version import __version__
from nnopt_graph.errors import BadInputError, CheckFailedError, NnoptError, PassFailedError
from nnopt_graph.io import load, save
from nnopt_graph.optimize import OptimizeResult, optimize
from nnopt_graph.pipeline.base import Pass, PassContext, PassResult
from nnopt_graph.pipeline.grammar import PassSpec, Pipeline
from nnopt_graph.pipeline.manager import PassManager
from nnopt_graph.pipeline.registry import register_pass

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
    "__version__",
    "save",
]


"""Built-in passes by family; importing this package registers them all, in pipeline order."""

from nnopt_graph.passes.cleanup import simplify, zero_structure
from nnopt_graph.passes.prune import channels, slice_hidden
from nnopt_graph.passes.quantize import dynamic, fp16, int4
from nnopt_graph.passes.quantize.int8 import orchestrate
from nnopt_graph.passes.sharing import cluster_weights, cse, dedup
from nnopt_graph.passes.sparsity import sparsify, storage

__all__ = [
    "channels",
    "cluster_weights",
    "cse",
    "dedup",
    "dynamic",
    "fp16",
    "int4",
    "orchestrate",
    "simplify",
    "slice_hidden",
    "sparsify",
    "storage",
    "zero_structure",
]

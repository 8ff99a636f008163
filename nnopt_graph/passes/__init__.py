"""Built-in passes by family, each module imported when a pipeline first names its passes.

``MODULES`` lists the modules that define them, in the order ``list-passes`` shows them
(the order a full import registers them in); ``pipeline.registry`` imports them.
"""

__all__ = ["MODULES"]

MODULES = (
    "nnopt_graph.passes.cleanup.simplify",
    "nnopt_graph.passes.cleanup.zero_structure",
    "nnopt_graph.passes.cleanup.affine",
    "nnopt_graph.passes.cleanup.activations",
    "nnopt_graph.passes.cleanup.parallel_matmuls",
    "nnopt_graph.passes.prune.channels",
    "nnopt_graph.passes.prune.slice_hidden",
    "nnopt_graph.passes.quantize.dynamic",
    "nnopt_graph.passes.quantize.fp16",
    "nnopt_graph.passes.quantize.int4",
    "nnopt_graph.passes.quantize.int8.orchestrate",
    "nnopt_graph.passes.sharing.cluster_weights",
    "nnopt_graph.passes.sharing.dedup",
    "nnopt_graph.passes.sharing.cse",
    "nnopt_graph.passes.sparsity.sparsify",
    "nnopt_graph.passes.sparsity.storage",
)

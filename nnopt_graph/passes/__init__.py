"""Built-in passes; importing this package registers them all, in pipeline order."""

from nnopt_graph.passes import (
    cleanup,
    cluster_weights,
    cse,
    dedup,
    prune_channels,
    quantize_fp16,
    quantize_int4,
    quantize_int8,
    sparse_storage,
    sparsify,
    zero_structure,
)

__all__ = [
    "cleanup",
    "cluster_weights",
    "cse",
    "dedup",
    "prune_channels",
    "quantize_fp16",
    "quantize_int4",
    "quantize_int8",
    "sparse_storage",
    "sparsify",
    "zero_structure",
]

"""Built-in passes; importing this package registers them all."""

from nnopt_graph.passes import cleanup  # noqa: F401
from nnopt_graph.passes import cse as cse
from nnopt_graph.passes import dedup as dedup
from nnopt_graph.passes import sparsify as sparsify
from nnopt_graph.passes import cluster_weights as cluster_weights
from nnopt_graph.passes import sparse_storage as sparse_storage
from nnopt_graph.passes import prune_channels as prune_channels
from nnopt_graph.passes import zero_structure as zero_structure
from nnopt_graph.passes import quantize_int8  # noqa: F401
from nnopt_graph.passes import quantize_fp16  # noqa: F401
from nnopt_graph.passes import quantize_int4  # noqa: F401

"""Sparse storage: mostly-zero initializers written as ONNX sparse initializers (disk, not memory).

onnx-ir 1.1 neither reads nor writes ``GraphProto.sparse_initializer`` (its serializer
has a TODO, and a loaded model silently loses them). So the pass only *marks* the
tensors it chose, with a ``metadata_props`` entry on the tensor that onnx-ir writes
into the TensorProto; ``write_sparse_initializers`` then moves the marked initializers
into ``sparse_initializer`` on the saved file (a post-save step on the ModelProto), and
``densify_sparse_initializers`` turns them back into dense initializers before a file
is read with onnx-ir. ONNX Runtime makes sparse initializers dense when a session
loads, so this shrinks the file on disk and in transit, never memory or latency.

Two limits of the format, both checked by tests: the ONNX checker accepts only INT64
indices, and its full check (strict shape inference) rejects any sparse initializer
that feeds an ordinary op ("type case mismatch": inference types it as a sparse
tensor). Check a densified copy; ONNX Runtime loads the sparse file itself.
"""

from __future__ import annotations

__all__ = [
    "MARKER",
    "SparseWriteResult",
    "StoreSparseOptions",
    "StoreSparsePass",
    "densify_sparse_initializers",
    "save_sparse",
    "write_sparse_initializers",
]

import dataclasses
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper, numpy_helper

from nnopt_graph import io
from nnopt_graph.errors import BadInputError
from nnopt_graph.passes.sparse_patterns import sparse_initializer_bytes
from nnopt_graph.pipeline.base import Pass, PassContext, PassResult
from nnopt_graph.pipeline.registry import register_pass

logger = logging.getLogger(__name__)

# metadata_props key on a marked tensor; its value is the index type to write.
MARKER = "nnopt_graph.storage"
_INDEX_TYPES = ("int64", "compact")
# A SparseTensorProto's fixed cost beyond values and indices: names, dims, headers.
_OVERHEAD_BYTES = 64
_RUNTIME_NOTE = (
    "stored as an ONNX sparse initializer by the post-save step "
    "(nnopt_graph.passes.sparse_storage.write_sparse_initializers); ONNX Runtime makes "
    "sparse initializers dense when a session loads: this saves disk, not memory or time"
)
_STATS = (
    "tensors-marked-sparse",
    "bytes-saved-on-disk",
    "skipped-not-sparse-enough",
    "skipped-not-smaller",
    "skipped-external-data",
    "skipped-graph-inputs",
    "skipped-already-marked",
    "skipped-in-functions",
)


@dataclasses.dataclass(frozen=True)
class StoreSparseOptions:
    """Options of store-sparse.

    Attributes:
        threshold: least fraction of zeros for a tensor to be considered.
        min_elements: smaller tensors stay dense.
        index_type: ``int64`` (what the ONNX standard and checker accept) or
            ``compact`` (the smallest signed integer type holding the largest index;
            ONNX Runtime reads int8/16/32 indices, the ONNX checker rejects them).
    """

    threshold: float = dataclasses.field(default=0.5, metadata={"range": (0.0, 1.0, False, True)})
    min_elements: int = dataclasses.field(default=64, metadata={"range": (0, None, True, True)})
    index_type: str = dataclasses.field(default="int64", metadata={"choices": _INDEX_TYPES})


def _index_dtype(largest: int, index_type: str) -> np.dtype:
    if index_type == "compact":
        for dtype in (np.int8, np.int16, np.int32):
            if largest <= np.iinfo(dtype).max:
                return np.dtype(dtype)
    return np.dtype(np.int64)


def _sparse_bytes(nonzeros: int, largest_index: int, itemsize: int, index_type: str) -> int:
    if index_type == "int64":
        return sparse_initializer_bytes(nonzeros, itemsize) + _OVERHEAD_BYTES
    index_size = _index_dtype(largest_index, index_type).itemsize
    return nonzeros * (itemsize + index_size) + _OVERHEAD_BYTES


def _zero_count(array: np.ndarray) -> int:
    return int(array.size - np.count_nonzero(array))


@register_pass
class StoreSparsePass(Pass):
    """Store mostly-zero initializers as ONNX sparse initializers when the file shrinks."""

    name = "store-sparse"
    Options = StoreSparseOptions

    def requires(self, model: ir.Model) -> None:
        """Check the options.

        Raises:
            BadInputError: threshold outside (0, 1] or negative min-elements.
        """
        if not 0.0 < self.options.threshold <= 1.0 or self.options.min_elements < 0:
            raise BadInputError(
                "pass 'store-sparse': threshold must be in (0, 1] and min-elements >= 0"
            )

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Mark initializers whose sparse form is smaller; the post-save step writes them."""
        o = self.options
        stats = dict.fromkeys(_STATS, 0)
        decisions: list[dict[str, Any]] = []
        external = (
            io.uses_external_data(model) or io.tensor_bytes(model) >= io.EXTERNAL_DATA_THRESHOLD
        )
        stats["skipped-in-functions"] = sum(
            1
            for f in model.functions.values()
            for n in ir.traversal.RecursiveGraphIterator(f)
            if n.op_type == "Constant"
        )
        for graph in model.graphs():
            for name, value in graph.initializers.items():
                tensor = value.const_value
                if tensor is None or tensor.size < max(o.min_elements, 1):
                    continue
                if tensor.metadata_props.get(MARKER):
                    stats["skipped-already-marked"] += 1
                    continue
                if external:
                    # Weights saved to a side file would stay there: nothing to gain.
                    stats["skipped-external-data"] += 1
                    continue
                if value.is_graph_input():
                    stats["skipped-graph-inputs"] += 1
                    logger.debug("store-sparse: '%s' is a graph input (overridable)", name)
                    continue
                array = tensor.numpy()
                zeros = _zero_count(array)
                sparsity = zeros / array.size
                if sparsity < o.threshold:
                    stats["skipped-not-sparse-enough"] += 1
                    continue
                nonzeros = array.size - zeros
                largest = int(np.flatnonzero(array)[-1]) if nonzeros else 0
                dense = tensor.nbytes
                sparse = _sparse_bytes(nonzeros, largest, array.dtype.itemsize, o.index_type)
                if sparse >= dense:
                    stats["skipped-not-smaller"] += 1
                    logger.debug(
                        "store-sparse: '%s' %.0f%% zeros but sparse %d >= dense %d bytes",
                        name,
                        100 * sparsity,
                        sparse,
                        dense,
                    )
                    continue
                tensor.metadata_props[MARKER] = o.index_type
                stats["tensors-marked-sparse"] += 1
                stats["bytes-saved-on-disk"] += dense - sparse
                logger.info(
                    "store-sparse: '%s' (%.1f%% zeros) %d -> %d bytes on disk",
                    name,
                    100 * sparsity,
                    dense,
                    sparse,
                )
                decisions.append(
                    {
                        "tensor": name,
                        "sparsity": round(sparsity, 6),
                        "bytes-dense": int(dense),
                        "bytes-on-disk": int(sparse),
                        "index-type": str(_index_dtype(largest, o.index_type)),
                        "storage": _RUNTIME_NOTE,
                    }
                )
        return PassResult(stats, decisions)


# ---------------------------------------------------------------- post-save step on the proto


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _graphs(sub)


def _marker(tensor: onnx.TensorProto) -> str | None:
    for entry in tensor.metadata_props:
        if entry.key == MARKER:
            return entry.value
    return None


def _drop_marker(tensor: onnx.TensorProto) -> None:
    kept = [(e.key, e.value) for e in tensor.metadata_props if e.key != MARKER]
    del tensor.metadata_props[:]
    for key, value in kept:
        entry = tensor.metadata_props.add()
        entry.key, entry.value = key, value


def _to_sparse(tensor: onnx.TensorProto, index_type: str) -> onnx.SparseTensorProto:
    array = numpy_helper.to_array(tensor)
    flat = array.reshape(-1)
    indices = np.flatnonzero(flat)
    largest = int(indices[-1]) if len(indices) else 0
    values = numpy_helper.from_array(np.ascontiguousarray(flat[indices]), tensor.name)
    index_tensor = numpy_helper.from_array(
        indices.astype(_index_dtype(largest, index_type)), f"{tensor.name}.indices"
    )
    return helper.make_sparse_tensor(values, index_tensor, list(array.shape))


@dataclasses.dataclass
class SparseWriteResult:
    """What the post-save step did to a file."""

    tensors: int
    bytes_before: int
    bytes_after: int


def _marked_to_sparse(proto: onnx.ModelProto) -> int:
    """Move marked, inline initializers into ``sparse_initializer``; returns the count."""
    count = 0
    for graph in _graphs(proto.graph):
        keep = []
        for tensor in graph.initializer:
            index_type = _marker(tensor)
            if index_type is None:
                keep.append(tensor)
                continue
            _drop_marker(tensor)
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                logger.debug("store-sparse: '%s' is in external data; left dense", tensor.name)
                keep.append(tensor)
                continue
            sparse = _to_sparse(tensor, index_type if index_type in _INDEX_TYPES else "int64")
            if sparse.ByteSize() >= tensor.ByteSize():
                keep.append(tensor)
                continue
            graph.sparse_initializer.append(sparse)
            count += 1
        if count:
            del graph.initializer[:]
            graph.initializer.extend(keep)
    return count


def write_sparse_initializers(path: str | os.PathLike[str]) -> SparseWriteResult:
    """Rewrite a saved model so its marked initializers become sparse initializers.

    The file is replaced atomically; a file without marked tensors is left as it is.
    """
    path = Path(path)
    before = path.stat().st_size
    proto = onnx.load(path, load_external_data=False)
    count = _marked_to_sparse(proto)
    if not count:
        return SparseWriteResult(0, before, before)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(proto.SerializeToString())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    after = path.stat().st_size
    logger.info("wrote %d sparse initializers into %s: %d -> %d bytes", count, path, before, after)
    return SparseWriteResult(count, before, after)


def densify_sparse_initializers(proto: onnx.ModelProto) -> int:
    """Turn every sparse initializer of a ModelProto back into a dense one, in place.

    For readers that do not know sparse initializers (onnx-ir, the ONNX full check).
    Returns how many were converted.
    """
    count = 0
    for graph in _graphs(proto.graph):
        for sparse in graph.sparse_initializer:
            dense = np.zeros(
                list(sparse.dims), dtype=helper.tensor_dtype_to_np_dtype(sparse.values.data_type)
            )
            values = numpy_helper.to_array(sparse.values)
            indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
            if indices.ndim == 2:
                dense[tuple(indices.T)] = values
            else:
                dense.reshape(-1)[indices] = values
            graph.initializer.append(numpy_helper.from_array(dense, sparse.values.name))
            count += 1
        del graph.sparse_initializer[:]
    return count


def save_sparse(model: ir.Model, path: str | os.PathLike[str]) -> SparseWriteResult:
    """``io.save`` then the post-save step: the model with its marked tensors sparse."""
    io.save(model, path, write_sparse=False)
    return write_sparse_initializers(path)

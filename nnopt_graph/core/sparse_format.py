"""The sparse-initializer file format: the post-save step that writes it, the reader's undo.

onnx-ir 1.1 neither reads nor writes ``GraphProto.sparse_initializer``. The store-sparse
pass marks tensors with a ``metadata_props`` entry (``MARKER``); after a save,
``write_sparse_initializers`` moves the marked initializers into ``sparse_initializer``,
and ``densify_sparse_initializers`` turns them dense again before onnx-ir or the ONNX
full check reads a file. Below the passes and the checks: both use it.
"""

from __future__ import annotations

__all__ = [
    "INDEX_TYPES",
    "MARKER",
    "SparseWriteResult",
    "densify_sparse_initializers",
    "has_sparse_initializers",
    "index_dtype",
    "write_sparse_initializers",
]

import dataclasses
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

logger = logging.getLogger(__name__)

# metadata_props key on a marked tensor; its value is the index type to write.
MARKER = "nnopt_graph.storage"
INDEX_TYPES = ("int64", "compact")


def index_dtype(largest: int, index_type: str) -> np.dtype:
    """The index dtype to write: int64 (what the ONNX checker accepts) or the smallest fitting."""
    if index_type == "compact":
        for dtype in (np.int8, np.int16, np.int32):
            if largest <= np.iinfo(dtype).max:
                return np.dtype(dtype)
    return np.dtype(np.int64)


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
            return str(entry.value)
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
        indices.astype(index_dtype(largest, index_type)), f"{tensor.name}.indices"
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
            sparse = _to_sparse(tensor, index_type if index_type in INDEX_TYPES else "int64")
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


def has_sparse_initializers(proto: onnx.ModelProto) -> bool:
    """Whether any graph of the model (subgraphs included) has sparse initializers."""
    return any(graph.sparse_initializer for graph in _graphs(proto.graph))

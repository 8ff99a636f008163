"""A tensor's bytes streamed in slices: hashing and equality without loading it whole.

Shared by dedup and cse; external-data tensors are read through short-lived memory maps,
so a multi-GB model is never held in memory at once.
"""

from __future__ import annotations

__all__ = ["CHUNK_BYTES", "tensor_digest", "tensors_equal"]

import hashlib
from collections.abc import Iterator

import numpy as np
import onnx
import onnx_ir as ir

from nnopt_graph.core.tensor_size import tensor_dims

# Tensors are read, hashed and compared in slices of this size.
CHUNK_BYTES = 64 << 20


def _is_external(tensor: ir.TensorProtocol) -> bool:
    # The class's own ancestry: isinstance goes through the protocol machinery, slowly.
    return ir.ExternalTensor in type(tensor).__mro__


def _external_slices(
    tensor: ir.ExternalTensor, dtype: np.dtype, chunk_bytes: int
) -> Iterator[np.ndarray]:
    """Slices of an external tensor's data, each from its own short-lived memory map."""
    offset = tensor.offset or 0
    total = tensor.length if tensor.length is not None else tensor.nbytes
    step = max(chunk_bytes - chunk_bytes % dtype.itemsize, dtype.itemsize)
    for start in range(0, total, step):
        size = min(step, total - start)
        # A map per slice, dropped after use, keeps resident memory to about two slices.
        mapped = np.memmap(
            tensor.path, dtype=np.uint8, mode="r", offset=offset + start, shape=(size,)
        )
        yield mapped.view(dtype)
        del mapped


def _array_slices(
    tensor: ir.TensorProtocol, chunk_bytes: int | None = None
) -> Iterator[np.ndarray]:
    """The tensor's elements as flat arrays of about ``chunk_bytes`` (byte-sized dtypes only)."""
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    dtype = np.dtype(tensor.dtype.numpy())
    if _is_external(tensor):
        assert isinstance(tensor, ir.ExternalTensor)
        yield from _external_slices(tensor, dtype, chunk_bytes)
        return
    flat = np.ascontiguousarray(tensor.numpy()).reshape(-1)
    step = max(chunk_bytes // max(flat.itemsize, 1), 1)
    for start in range(0, flat.size, step):
        yield flat[start : start + step]


def _byte_chunks(
    tensor: ir.TensorProtocol, nbytes: int | None = None
) -> Iterator[bytes | memoryview]:
    """The tensor's serialized bytes (ONNX raw_data layout), in slices of about CHUNK_BYTES.

    ``nbytes``: the tensor's size when the caller knows it (a loaded tensor rebuilds its
    shape on every ``nbytes``).
    """
    dtype = tensor.dtype
    if dtype.is_string():
        for item in np.asarray(tensor.numpy()).reshape(-1):
            data = item if isinstance(item, bytes) else str(item).encode()
            yield len(data).to_bytes(8, "little") + data
        return
    if _is_external(tensor):
        # Raw file bytes: the same layout tobytes() gives, without mapping the whole tensor.
        assert isinstance(tensor, ir.ExternalTensor)
        for part in _external_slices(tensor, np.dtype(np.uint8), CHUNK_BYTES):
            yield part.data
        return
    if (tensor.nbytes if nbytes is None else nbytes) <= CHUNK_BYTES or dtype.bitwidth < 8:
        yield tensor.tobytes()
        return
    for part in _array_slices(tensor):
        yield part.view(np.uint8).data


# Loaded tensors whose ``raw_data`` field is exactly what ``tobytes()`` returns: every
# dtype but the 6-bit floats, whose raw data ``tobytes()`` validates first.
_RAW_AS_IS = frozenset(
    int(d)
    for d in ir.DataType
    if d not in (ir.DataType.UNDEFINED, ir.DataType.STRING) and not d.name.startswith("FLOAT6")
)


def _raw_data(tensor: ir.TensorProtocol) -> bytes | None:
    """A loaded tensor's ``raw_data`` when it is its ``tobytes()``, else None (read it so)."""
    if type(tensor) is not ir.serde.TensorProtoTensor:
        return None
    proto = tensor.raw
    if (
        proto.data_type in _RAW_AS_IS
        and proto.data_location != onnx.TensorProto.EXTERNAL
        and proto.HasField("raw_data")
    ):
        return proto.raw_data
    return None


def tensor_digest(tensor: ir.TensorProtocol, nbytes: int | None = None) -> bytes:
    """BLAKE2b digest of a tensor's bytes, streamed in chunks (``nbytes``: its size, if known)."""
    raw = _raw_data(tensor)
    if raw is not None:  # a loaded tensor's bytes are at hand: no chunking, no checks
        return hashlib.blake2b(raw, digest_size=32).digest()
    hasher = hashlib.blake2b(digest_size=32)
    for chunk in _byte_chunks(tensor, nbytes):
        hasher.update(chunk)
    return hasher.digest()


def _equal_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    step = 4 << 20  # bounds the boolean temporary
    return all(np.array_equal(a[i : i + step], b[i : i + step]) for i in range(0, a.size, step))


def tensors_equal(a: ir.TensorProtocol, b: ir.TensorProtocol) -> bool:
    """Whether two tensors have the same dtype, shape and bytes (compared chunk by chunk)."""
    if a.dtype != b.dtype or tuple(a.shape) != tuple(b.shape):
        return False
    left, right = _byte_chunks(a), _byte_chunks(b)
    empty = np.zeros(0, np.uint8)
    pending_a = pending_b = empty
    while True:
        if not pending_a.size:
            pending_a = np.frombuffer(next(left, b""), np.uint8)
        if not pending_b.size:
            pending_b = np.frombuffer(next(right, b""), np.uint8)
        if not pending_a.size or not pending_b.size:
            return not pending_a.size and not pending_b.size
        size = min(pending_a.size, pending_b.size)
        if not _equal_bytes(pending_a[:size], pending_b[:size]):
            return False
        pending_a, pending_b = pending_a[size:], pending_b[size:]


def _dims(tensor: ir.TensorProtocol) -> tuple[int, ...]:
    return tensor_dims(tensor)


def _load(tensor: ir.TensorProtocol) -> np.ndarray:
    """The whole tensor as an array; external data through a map the caller drops after use."""
    dtype = np.dtype(tensor.dtype.numpy())
    shape = _dims(tensor)
    if _is_external(tensor):
        assert isinstance(tensor, ir.ExternalTensor)
        return np.memmap(tensor.path, dtype=dtype, mode="r", offset=tensor.offset or 0, shape=shape)
    return np.asarray(tensor.numpy()).reshape(shape)

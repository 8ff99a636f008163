"""Exact transforms between two weights: transpose, negation, scalar multiple, bit for bit.

Cheap signatures group candidate pairs (a multiset hash equal for a matrix and its
transpose; a zero/sign pattern hash equal for w and s*w); the checks then compare bits.
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx_ir as ir

from nnopt_graph.passes.sharing.tensor_bytes import CHUNK_BYTES, _array_slices, _load

# Element-wise signatures make uint64 temporaries: smaller slices than CHUNK_BYTES.
_SIGNATURE_CHUNK_BYTES = 8 << 20
_UINT_OF_WIDTH = {2: np.uint16, 4: np.uint32, 8: np.uint64}
_MIX_1 = np.uint64(0x9E3779B97F4A7C15)
_MIX_2 = np.uint64(0xBF58476D1CE4E5B9)


def _uint_view(array: np.ndarray) -> np.ndarray:
    return array.view(_UINT_OF_WIDTH[array.dtype.itemsize])


def _multiset_signature(tensor: ir.TensorProtocol) -> int:
    """An order-independent hash of the elements' bits: equal for a matrix and its transpose."""
    total = np.uint64(0)
    with np.errstate(over="ignore"):
        for part in _array_slices(tensor, _SIGNATURE_CHUNK_BYTES):
            bits = _uint_view(part).astype(np.uint64)
            bits *= _MIX_1
            bits ^= bits >> np.uint64(29)
            bits *= _MIX_2
            total += np.sum(bits, dtype=np.uint64)
    return int(total)


def _pattern_signature(tensor: ir.TensorProtocol) -> tuple[bytes, bytes] | None:
    """A hash of where the zeros are and of the signs up to a global flip: equal for w and s*w.

    None when the tensor holds NaN or infinity (left to the byte-exact merge only).
    """
    zeros = hashlib.blake2b(digest_size=16)
    signs = hashlib.blake2b(digest_size=16)
    flipped = hashlib.blake2b(digest_size=16)
    for part in _array_slices(tensor, _SIGNATURE_CHUNK_BYTES):
        if not np.isfinite(part).all():
            return None
        nonzero = part != 0
        negative = np.signbit(part) & nonzero
        zeros.update(np.packbits(nonzero).tobytes())
        signs.update(np.packbits(negative).tobytes())
        flipped.update(np.packbits(~negative & nonzero).tobytes())
    a, b = signs.digest(), flipped.digest()
    return zeros.digest(), min(a, b) + max(a, b)


def _is_transpose(base: ir.TensorProtocol, other: ir.TensorProtocol) -> bool:
    """Whether ``other`` is bit for bit the transpose of the 2-D ``base``."""
    a, b = _load(base), _load(other)
    if a.shape != b.shape[::-1]:
        return False
    rows = max(CHUNK_BYTES // max(b.shape[1] * b.itemsize, 1), 1)
    for start in range(0, b.shape[0], rows):
        if not np.array_equal(
            _uint_view(b[start : start + rows]), _uint_view(a[:, start : start + rows].T)
        ):
            return False
    return True


def _scale_between(base: ir.TensorProtocol, other: ir.TensorProtocol) -> np.generic | None:
    """The scalar s (in the tensors' dtype) with ``other == s * base`` bit for bit, else None."""
    a, b = _load(base).reshape(-1), _load(other).reshape(-1)
    first = None
    step = max(CHUNK_BYTES // a.itemsize, 1)
    for start in range(0, a.size, step):
        nonzero = np.flatnonzero(a[start : start + step])
        if nonzero.size:
            first = start + int(nonzero[0])
            break
    if first is None:
        return None
    with np.errstate(all="ignore"):
        scale = b[first] / a[first]
        if not np.isfinite(scale) or scale == 0 or scale == 1:
            return None
        for start in range(0, a.size, step):
            chunk = a[start : start + step]
            expected = (
                np.negative(chunk) if scale == -1 else np.multiply(chunk, scale, dtype=a.dtype)
            )
            if not np.array_equal(
                _uint_view(expected), _uint_view(np.asarray(b[start : start + step]))
            ):
                return None
    return scale

"""Numbers of cluster-weights: dtypes, opsets, k-means limits, statistics names."""

from __future__ import annotations

import logging

import onnx_ir as ir

logger = logging.getLogger(__name__)


_ONNX_DOMAINS = ("", "ai.onnx")


# Float dtypes the pass clusters; both encodings end in the weight's own dtype.
_FLOAT_DTYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE})


_INTEGER_DTYPES = frozenset(
    {
        ir.DataType.INT4,
        ir.DataType.UINT4,
        ir.DataType.INT8,
        ir.DataType.UINT8,
        ir.DataType.INT16,
        ir.DataType.UINT16,
        ir.DataType.INT32,
        ir.DataType.UINT32,
        ir.DataType.INT64,
        ir.DataType.UINT64,
    }
)


# Opsets: DequantizeLinear appears at 10 (per tensor), per axis at 13, INT4 and block_size at 21.
_MIN_OPSET = 10


_OPSET_PER_AXIS = 13


_OPSET_INT4 = 21


# The IR version each raised opset needs (INT4 tensors need IR 10).
_IR_FOR_OPSET = {_OPSET_PER_AXIS: 7, _OPSET_INT4: 10}


# k-means: Lloyd iterations stop when the partition no longer changes, when no centroid
# moves by more than this fraction of the row's range, or after this many iterations.
_KMEANS_TOL = 1e-7


_KMEANS_MAX_ITER = 1000


# Range factors the uniform grid tries per group, keeping the least squared error.
_CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6)


# Rows with more elements than this fit their centroids on an evenly strided sample.
_KMEANS_MAX_FIT = 1 << 22


_ASSIGN_CHUNK = 1 << 22


# Integer dtypes of codebook indices (and of the packed bytes).
_BYTE_DTYPES = frozenset({ir.DataType.UINT8, ir.DataType.INT8})


# Ops that unpack or offset codebook indices (the chain this pass writes).
_INDEX_OPS = frozenset({"Cast", "Div", "Mul", "Sub", "Add", "Concat", "Slice", "Reshape", "Mod"})


_STATS = (
    "weights-clustered",
    "bytes-saved-disk",
    "bytes-saved-memory",
    "opset-raised",
    "int4-stored-as-int8",
    "block-as-channel",
    "channel-axis-unknown",
    "channel-emulated",
    "skipped-below-min-elements",
    "skipped-vectors",
    "skipped-integer-weights",
    "skipped-already-clustered",
    "skipped-graph-input-initializers",
    "skipped-graph-output-weights",
    "skipped-unused-weights",
    "skipped-unsupported-dtype",
    "skipped-no-saving",
    "skipped-non-finite-weights",
    "skipped-function-constants",
)


# Ops whose meaning changes at an opset although their signature does not.
_SEMANTIC_CHANGES = {
    "Softmax": 13,
    "LogSoftmax": 13,
    "Hardmax": 13,
    "GridSample": 20,
    "DFT": 20,
    "GroupNormalization": 21,
}

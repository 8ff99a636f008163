"""size_and_bytes gives what a tensor's own size and nbytes give, for every kind."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import numpy_helper

from nnopt_graph.core.tensor_size import size_and_bytes, tensor_dims, tensor_dtype, tensor_nbytes


def _loaded(array: np.ndarray) -> ir.TensorProtocol:
    return ir.serde.deserialize_tensor(numpy_helper.from_array(array, "w"))


@pytest.mark.parametrize(
    "tensor",
    [
        _loaded(np.zeros((3, 5), np.float32)),
        _loaded(np.zeros((0, 4), np.int64)),
        _loaded(np.zeros((), np.float16)),
        ir.tensor(np.ones((2, 7), np.float64)),
        ir.Tensor(np.zeros(5, np.uint8), dtype=ir.DataType.INT4),  # 5 nibbles: 3 bytes
        ir.StringTensor(np.array([b"ab", b"cde"])),
    ],
    ids=["loaded", "empty", "scalar", "numpy", "int4", "string"],
)
def test_matches_the_tensors_own_figures(tensor):
    assert size_and_bytes(tensor) == (tensor.size, tensor.nbytes)
    assert tensor_nbytes(tensor) == tensor.nbytes
    assert tensor_dims(tensor) == tuple(tensor.shape)
    assert all(type(d) is int for d in tensor_dims(tensor))
    assert tensor_dtype(tensor) is tensor.dtype


def test_given_dims_are_used_instead_of_the_shape():
    tensor = _loaded(np.zeros((3, 5), np.float32))
    assert size_and_bytes(tensor, (3, 5)) == (15, 60)
    assert size_and_bytes(tensor, (2, 2)) == (4, 16)  # the caller's dims, not re-read


def test_external_tensor(tmp_path):
    data = np.arange(12, dtype=np.float32)
    (tmp_path / "w.bin").write_bytes(data.tobytes())
    tensor = ir.ExternalTensor(
        "w.bin",
        0,
        data.nbytes,
        ir.DataType.FLOAT,
        shape=ir.Shape([3, 4]),
        name="w",
        base_dir=tmp_path,
    )
    assert size_and_bytes(tensor) == (12, 48)
    assert tensor_dims(tensor) == (3, 4) and tensor_dtype(tensor) is ir.DataType.FLOAT


def test_loaded_bfloat16_and_int4_read_from_the_proto():
    import onnx

    proto = onnx.helper.make_tensor("w", onnx.TensorProto.INT4, [5], [1, 2, 3, 4, 5])
    tensor = ir.serde.deserialize_tensor(proto)
    assert tensor_dtype(tensor) is ir.DataType.INT4
    assert size_and_bytes(tensor) == (5, 3)
    proto = onnx.helper.make_tensor("b", onnx.TensorProto.BFLOAT16, [2, 3], [0] * 6)
    tensor = ir.serde.deserialize_tensor(proto)
    assert tensor_dims(tensor) == (2, 3) and size_and_bytes(tensor) == (6, 12)

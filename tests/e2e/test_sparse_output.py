"""store-sparse through optimize(): the written file holds sparse initializers, verified."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from nnopt_graph import load, optimize


def test_optimize_writes_sparse_initializers_and_reloads(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((256, 256)).astype(np.float32)
    w[rng.random(w.shape) < 0.9] = 0.0
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 256])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 256])],
        [numpy_helper.from_array(w, "w")],
    )
    src = tmp_path / "dense.onnx"
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), src
    )
    out = tmp_path / "sparse.onnx"
    result = optimize(src, out, "default,store-sparse")
    assert result.fidelity.cosine_min == 1.0 and result.fidelity.metric("max_abs") == 0.0
    proto = onnx.load(out)
    assert len(proto.graph.sparse_initializer) == 1 and not proto.graph.initializer
    assert out.stat().st_size < 0.35 * src.stat().st_size
    reloaded = load(out)  # sparse initializers come back dense
    np.testing.assert_array_equal(reloaded.graph.initializers["w"].const_value.numpy(), w)

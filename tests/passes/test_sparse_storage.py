"""Tests of store-sparse and its post-save step: smaller files, exact outputs under ORT."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from passes_util import check_idempotent

from nnopt_graph.core import io
from nnopt_graph.core.sparse_format import (
    MARKER,
    densify_sparse_initializers,
    write_sparse_initializers,
)
from nnopt_graph.passes.sparsity.storage import StoreSparsePass
from nnopt_graph.pipeline.base import PassContext
from nnopt_graph.pipeline.grammar import PassSpec


def save_sparse(model, path):
    """The dense save, then the post-save step on the file (what io.save does by default)."""
    io.save(model, path, write_sparse=False)
    return write_sparse_initializers(path)


HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def sparse_array(seed: int, shape: tuple[int, ...], zeros: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    array = rng.standard_normal(shape).astype(np.float32)
    array[rng.random(shape) < zeros] = 0.0
    return array


def build(text: str, **weights: np.ndarray) -> onnx.ModelProto:
    proto = onnx.parser.parse_model(text)
    for name, array in weights.items():
        proto.graph.initializer.append(numpy_helper.from_array(array, name))
        kept = [i for i in proto.graph.input if i.name != name]
        del proto.graph.input[:]
        proto.graph.input.extend(kept)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def run(proto: onnx.ModelProto, **options):
    model = ir.serde.deserialize_model(proto)
    result = PassSpec.create("store-sparse", **options).instantiate().run(model, PassContext())
    return model, result


def session_outputs(path, feeds):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


TWO_LAYERS = f"""{HEADER}
g (float[N,128] x, float[128,64] w, float[64,32] d, float[32] b) => (float[N,32] y) {{
    h = MatMul (x, w)
    z = MatMul (h, d)
    y = Add (z, b)
}}"""


def two_layers() -> onnx.ModelProto:
    return build(
        TWO_LAYERS,
        w=sparse_array(0, (128, 64), 0.9),
        d=sparse_array(1, (64, 32), 0.3),  # not sparse enough
        b=sparse_array(2, (32,), 0.95),  # too small
    )


def test_marks_only_tensors_that_shrink_and_file_shrinks_with_exact_outputs(tmp_path):
    proto = two_layers()
    model, result = run(proto)
    assert result.stats["tensors-marked-sparse"] == 1
    assert result.stats["skipped-not-sparse-enough"] == 1
    assert model.graph.initializers["w"].const_value.metadata_props[MARKER] == "int64"
    decision = result.decisions[0]
    assert decision["tensor"] == "w" and "dense when a session loads" in decision["storage"]
    assert decision["bytes-on-disk"] < decision["bytes-dense"] == 128 * 64 * 4
    dense_path = tmp_path / "dense.onnx"
    onnx.save(proto, dense_path)
    sparse_path = tmp_path / "sparse.onnx"
    written = save_sparse(model, sparse_path)
    assert written.tensors == 1
    saved = onnx.load(sparse_path)
    assert [s.values.name for s in saved.graph.sparse_initializer] == ["w"]
    assert "w" not in {t.name for t in saved.graph.initializer}
    assert all(e.key != MARKER for t in saved.graph.initializer for e in t.metadata_props)
    assert sparse_path.stat().st_size < 0.5 * dense_path.stat().st_size
    onnx.checker.check_model(saved)  # the structural check accepts INT64 indices
    feeds = {"x": np.random.default_rng(3).standard_normal((4, 128)).astype(np.float32)}
    for a, b in zip(
        session_outputs(dense_path, feeds), session_outputs(sparse_path, feeds), strict=True
    ):
        np.testing.assert_array_equal(a, b)  # ORT densifies at load: bit-identical outputs


def test_full_check_needs_densified_copy(tmp_path):
    model, _ = run(two_layers())
    path = tmp_path / "sparse.onnx"
    save_sparse(model, path)
    saved = onnx.load(path)
    with pytest.raises(Exception, match="sparse_tensor|type"):
        onnx.checker.check_model(saved, full_check=True)  # ONNX's own limitation
    assert densify_sparse_initializers(saved) == 1
    onnx.checker.check_model(saved, full_check=True)
    np.testing.assert_array_equal(
        numpy_helper.to_array(next(t for t in saved.graph.initializer if t.name == "w")),
        numpy_helper.to_array(next(t for t in two_layers().graph.initializer if t.name == "w")),
    )


def test_compact_indices_are_smaller_and_load_in_ort(tmp_path):
    proto = two_layers()
    dense = tmp_path / "dense.onnx"
    onnx.save(proto, dense)
    feeds = {"x": np.random.default_rng(8).standard_normal((2, 128)).astype(np.float32)}
    sizes = {}
    for index_type in ("int64", "compact"):
        model, result = run(proto, index_type=index_type)
        path = tmp_path / f"{index_type}.onnx"
        save_sparse(model, path)
        sizes[index_type] = path.stat().st_size
        saved = onnx.load(path)
        expected = onnx.TensorProto.INT64 if index_type == "int64" else onnx.TensorProto.INT16
        assert saved.graph.sparse_initializer[0].indices.data_type == expected
        np.testing.assert_array_equal(
            session_outputs(path, feeds)[0], session_outputs(dense, feeds)[0]
        )
    assert sizes["compact"] < sizes["int64"]


def test_idempotent_and_unmarked_file_untouched(tmp_path):
    model, _ = run(two_layers())
    check_idempotent(model, "store-sparse")
    plain = tmp_path / "plain.onnx"
    onnx.save(two_layers(), plain)
    before = plain.read_bytes()
    assert write_sparse_initializers(plain).tensors == 0
    assert plain.read_bytes() == before


def test_dense_model_is_not_marked():
    text = f"""{HEADER}
    g (float[N,16] x, float[16,16] w) => (float[N,16] y) {{ y = MatMul (x, w) }}"""
    _, result = run(build(text, w=sparse_array(4, (16, 16), 0.0)))
    assert not result.modified


def test_sparse_but_not_smaller_is_skipped():
    # 60% zeros in float32: 40% * (4 + 8) bytes > 4 bytes per element with INT64 indices.
    text = f"""{HEADER}
    g (float[N,64] x, float[64,64] w) => (float[N,64] y) {{ y = MatMul (x, w) }}"""
    _, result = run(build(text, w=sparse_array(5, (64, 64), 0.6)))
    assert not result.modified
    assert result.stats["skipped-not-smaller"] == 1


def test_initializer_that_is_graph_input_is_skipped():
    text = f"""{HEADER}
    g (float[N,64] x, float[64,64] w) => (float[N,64] y) {{ y = MatMul (x, w) }}"""
    proto = onnx.parser.parse_model(text)
    proto.graph.initializer.append(numpy_helper.from_array(sparse_array(6, (64, 64), 0.95), "w"))
    _, result = run(proto)
    assert not result.modified and result.stats["skipped-graph-inputs"] == 1


def test_external_data_models_are_skipped(tmp_path):
    path = tmp_path / "ext.onnx"
    io.save(ir.serde.deserialize_model(two_layers()), path, external_data=True)
    model = io.load(path)
    result = PassSpec.create("store-sparse").instantiate().run(model, PassContext())
    assert not result.modified and result.stats["skipped-external-data"] >= 1


def test_subgraph_initializer_becomes_sparse(tmp_path):
    text = f"""{HEADER}
    g (float[N,128] x, bool c) => (float[N,64] y) {{
        y = If (c) <then_branch = t () => (float[N,64] ty) {{
                        tw = Constant <value = float[1] {{0}}> ()
                        ty = MatMul (x, tw)
                    }},
                    else_branch = e () => (float[N,64] ey) {{
                        ez = Constant <value = float[1] {{0}}> ()
                        ey = MatMul (x, ez)
                    }}>
    }}"""
    proto = onnx.parser.parse_model(text)
    branch = proto.graph.node[0].attribute[0].g
    branch.node[0].attribute[0].t.CopyFrom(
        numpy_helper.from_array(sparse_array(7, (128, 64), 0.9), "tw")
    )
    other = proto.graph.node[0].attribute[1].g
    other.node[0].attribute[0].t.CopyFrom(
        numpy_helper.from_array(np.ones((128, 64), np.float32), "ez")
    )
    onnx.checker.check_model(proto, full_check=True)
    model = ir.serde.deserialize_model(proto)
    PassSpec.create("lift-constants").instantiate().run(model, PassContext())
    result = PassSpec.create("store-sparse").instantiate().run(model, PassContext())
    assert result.stats["tensors-marked-sparse"] == 1
    path = tmp_path / "if.onnx"
    save_sparse(model, path)
    saved = onnx.load(path)
    assert len(saved.graph.node[0].attribute[0].g.sparse_initializer) == 1
    dense = tmp_path / "dense.onnx"
    onnx.save(proto, dense)
    feeds = {"x": np.ones((2, 128), np.float32), "c": np.array(True)}
    np.testing.assert_array_equal(session_outputs(path, feeds)[0], session_outputs(dense, feeds)[0])


def test_bad_threshold_is_a_usage_error():
    from nnopt_graph.errors import BadInputError

    with pytest.raises(BadInputError, match=r"allowed range \(0, 1\]"):
        PassSpec.create("store-sparse", threshold=0.0)
    pass_ = StoreSparsePass(threshold=0.0)  # built directly, bypassing the grammar
    with pytest.raises(BadInputError):
        pass_.requires(ir.serde.deserialize_model(two_layers()))

"""The job's report summarizes the in-memory IR: the same figures as summarizing the files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from models import zoo
from nnopt_graph import load, optimize
from nnopt_graph.analysis.stats import summarize
from nnopt_graph.report import build_report


def _entry_of_file(path: Path, shapes: dict[str, list[int]] | None = None) -> dict:
    """The report entry that summarizing the file on disk gives."""
    summary = summarize(path, shapes)
    report = build_report(
        input_summary=summary,
        output_summary=None,
        pipeline="",
        records=[],
        fidelity=None,
        guard_expr=None,
        guard_passed=None,
        seconds=0.0,
    )
    return report["input"]


def _external(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 64)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Relu", ["h"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 64])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = tmp_path / "ext.onnx"
    onnx.save(model, path, save_as_external_data=True, location="ext.data", size_threshold=0)
    return path


@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_report_entries_equal_summaries_of_the_files(tmp_path: Path, name: str) -> None:
    src = tmp_path / f"{name}.onnx"
    onnx.save(zoo.ZOO[name](), src)
    out = tmp_path / "out.onnx"
    result = optimize(src, out, check=False)
    assert result.report["input"] == _entry_of_file(src)
    expected = _entry_of_file(out)
    expected["path"] = str(out)
    assert result.report["output"] == expected


def test_flops_with_input_shapes_and_a_changed_model(tmp_path: Path) -> None:
    src = tmp_path / "cnn.onnx"
    onnx.save(zoo.build_cnn(), src)
    out = tmp_path / "out.onnx"
    shapes = {"input": [2, 3, 32, 32]}
    result = optimize(
        src,
        out,
        "prune-channels{ratio=0.5}",
        input_shapes=shapes,
        guard="cosine.min>=-1",
        check=False,
    )
    assert result.report["output"]["params"] < result.report["input"]["params"]
    assert result.report["input"] == _entry_of_file(src, shapes)
    expected = _entry_of_file(out, shapes)
    expected["path"] = str(out)
    assert result.report["output"] == expected
    assert 0 < result.report["output"]["flops"] < result.report["input"]["flops"]


def test_summaries_leave_the_returned_model_untouched(tmp_path: Path) -> None:
    src = tmp_path / "mlp.onnx"
    onnx.save(zoo.build_mlp(), src)
    name = load(src).graph.inputs[0].name
    result = optimize(src, tmp_path / "out.onnx", input_shapes={name: [8, 64]}, check=False)
    # FLOPs were counted with a batch of 8, on a clone: the model keeps its dynamic batch.
    assert result.report["output"]["flops"] > 0
    dims = list(result.model.graph.inputs[0].shape)
    assert not isinstance(dims[0], int)


def test_external_data_sizes_count_the_side_files(tmp_path: Path) -> None:
    src = _external(tmp_path)
    out = tmp_path / "out.onnx"
    result = optimize(src, out, check=False)
    side = [p for p in tmp_path.iterdir() if p.name.startswith("out.onnx.")]
    assert len(side) == 1  # the output kept its weights in a side file
    assert result.report["input"]["size_bytes"] == _entry_of_file(src)["size_bytes"]
    assert result.report["input"]["size_bytes"] > src.stat().st_size
    assert result.report["output"]["size_bytes"] == out.stat().st_size + side[0].stat().st_size


def test_sparse_output_summary_equals_the_reloaded_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((128, 128)).astype(np.float32)
    w[rng.random(w.shape) < 0.9] = 0.0
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 128])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 128])],
        [numpy_helper.from_array(w, "w")],
    )
    src = tmp_path / "dense.onnx"
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), src
    )
    out = tmp_path / "sparse.onnx"
    result = optimize(src, out, "default,store-sparse", check=False)
    assert len(onnx.load(out).graph.sparse_initializer) == 1
    expected = _entry_of_file(out)
    expected["path"] = str(out)
    assert result.report["output"] == expected
    assert result.report["output"]["size_bytes"] < 0.35 * result.report["input"]["size_bytes"]

"""Every lossy outcome is said in the terminal summary, under one exit-code policy.

A guarded rollback is a result (exit 0, warning, the best model meeting the guard is
written); --fail-on-rollback turns it into exit 1 with nothing written. A lossy pass with
nothing to do, int8 kept float, and an unverifiable target fusion are said too.
"""

from __future__ import annotations

import numpy as np
import onnx
from conftest import run_cli
from onnx import TensorProto, helper, numpy_helper

DIGITS = "models/digits/digits_cnn.onnx"
HELDOUT = "models/digits/digits_heldout.npz"


def test_prune_rolled_back_writes_lossless_result_and_warns(tmp_path):
    out = tmp_path / "o.onnx"
    proc = run_cli(
        "opt",
        DIGITS,
        out,
        "-p",
        "default,prune-channels{ratio=0.5 min-ratio=0.2}",
        "--calib",
        HELDOUT,
        "--guard",
        "cosine.min>=0.99999",
    )
    assert proc.returncode == 0, proc.stderr
    assert out.exists()
    assert "prune-channels rolled back by the guard: cosine.min>=0.99999 (measured" in proc.stderr
    assert "prune-channels: rolled back: cosine.min>=0.99999 (measured" in proc.stdout
    assert "rolled back: prune-channels" in proc.stdout  # the guard's verdict line


def test_prune_rolled_back_with_fail_on_rollback_exits_1_and_writes_nothing(tmp_path):
    out = tmp_path / "o.onnx"
    proc = run_cli(
        "opt",
        DIGITS,
        out,
        "-p",
        "prune-channels{ratio=0.5 min-ratio=0.2}",
        "--calib",
        HELDOUT,
        "--guard",
        "cosine.min>=0.99999",
        "--fail-on-rollback",
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("nnopt-graph: error: --fail-on-rollback")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def _add_only_model(path):
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path
    )


def test_sparsify_with_nothing_to_do_is_skipped_exit_0(tmp_path):
    src = tmp_path / "add.onnx"
    _add_only_model(src)
    proc = run_cli("opt", src, tmp_path / "o.onnx", "-p", "sparsify{pattern=2:4}")
    assert proc.returncode == 0, proc.stderr
    assert "sparsify: skipped: nothing to do" in proc.stdout


def _thin_conv_model(path):
    """1x1 Convs 16 -> 2 -> 2 channels: quantizing their activations costs more than int8 saves."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((2, 16, 1, 1)).astype(np.float32), "w")
    w2 = numpy_helper.from_array(rng.standard_normal((2, 2, 1, 1)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["h"], name="thin"),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("Conv", ["r", "w2"], ["y"], name="thin2"),
        ],
        "thin",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 32, 32])],
        initializer=[w, w2],
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path
    )


def test_int8_kept_float_is_said(tmp_path):
    src = tmp_path / "thin.onnx"
    _thin_conv_model(src)
    data = tmp_path / "d.npz"
    np.savez(
        data, x=np.random.default_rng(1).standard_normal((20, 1, 16, 32, 32)).astype(np.float32)
    )
    proc = run_cli("opt", src, tmp_path / "o.onnx", "--target", "cpu", "--calib", data)
    assert proc.returncode == 0, proc.stderr
    assert (
        "quantize-int8: skipped: int8 kept float: int8 not faster (modelled cost ratio"
        in proc.stdout
    )
    assert (tmp_path / "o.onnx").exists()


def test_tensorrt_fusion_not_checkable_is_said(tmp_path):
    proc = run_cli("opt", DIGITS, tmp_path / "o.onnx", "--target", "tensorrt", "--calib", HELDOUT)
    assert proc.returncode == 0, proc.stderr
    assert "note: TensorRT fusion could not be checked" in proc.stdout

"""ORT's optimized graph of the lossless default pipeline's output: the same fusions as the input's.

A lossless rewrite that blocks one of ONNX Runtime's fusions (a Conv+activation, a
Gelu, a MatMul+Add, a LayerNormalization) makes the model slower without changing its
outputs; these tests look at what ORT builds, not at timings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from models import zoo
from nnopt_graph import optimize
from nnopt_graph.runtime.ort_graph import differences, ort_optimized_graph


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def _conv_act(
    path: Path, *, act_is_output: bool = False, alpha: float = 0.1, seed: int = 0
) -> Path:
    """Conv -> LeakyRelu: ORT fuses the activation into the Conv unless ``c`` is a graph output."""
    rng = np.random.default_rng(seed)
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])]
    if act_is_output:
        outputs.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, ["N", 4, 8, 8]))
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("LeakyRelu", ["c"], ["y"], name="act", alpha=alpha),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        outputs,
        [
            numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return _save(model, path)


def _gelu_mlp(path: Path) -> Path:
    """MatMul + bias + Erf-Gelu with weights in Constant nodes and a duplicated bias.

    The default pipeline lifts the constants, folds the 1/sqrt(2) and dedups the bias:
    ORT must still fuse Gemm and Gelu as it does on the input.
    """
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "wv")
    bias = rng.standard_normal(8).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["w"], name="cw", value=w),
        helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
        helper.make_node("Add", ["m", "b1"], ["h"], name="bias"),
        helper.make_node("Constant", [], ["two"], name="c2", value_float=2.0),
        helper.make_node("Sqrt", ["two"], ["sq"], name="sqrt"),
        helper.make_node("Div", ["h", "sq"], ["d"], name="div"),
        helper.make_node("Erf", ["d"], ["e"], name="erf"),
        helper.make_node("Add", ["e", "one"], ["e1"], name="add1"),
        helper.make_node("Mul", ["h", "e1"], ["g"], name="mul"),
        helper.make_node("Mul", ["g", "half"], ["g2"], name="half_mul"),
        helper.make_node("Add", ["g2", "b2"], ["y"], name="bias2"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        [
            numpy_helper.from_array(bias, "b1"),
            numpy_helper.from_array(bias.copy(), "b2"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
            numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return _save(model, path)


def _default(path: Path, tmp_path: Path) -> Path:
    out = tmp_path / f"{path.stem}.out.onnx"
    optimize(path, out)
    return out


@pytest.mark.parametrize("name", ["cnn", "bert-encoder", "yolo-block"])
def test_default_pipeline_keeps_ort_fusions_on_zoo_models(name: str, tmp_path: Path) -> None:
    path = _save(zoo.ZOO[name](), tmp_path / f"{name}.onnx")
    before, after = ort_optimized_graph(path), ort_optimized_graph(_default(path, tmp_path))
    assert before.fused, "ORT fuses something on this model: the comparison means something"
    assert differences(before, after) == []
    assert after.fused == before.fused


def test_default_pipeline_keeps_bias_gelu_after_lifting_and_folding(tmp_path: Path) -> None:
    path = _gelu_mlp(tmp_path / "gelu.onnx")
    out = _default(path, tmp_path)
    assert len(onnx.load(out).graph.node) < len(onnx.load(path).graph.node)  # it did work
    before, after = ort_optimized_graph(path), ort_optimized_graph(out)
    assert "com.microsoft:Gelu" in before.fused and ":Gemm" in before.op_counts
    assert after.fused == before.fused
    assert differences(before, after) == []


def test_names_alone_make_no_difference(tmp_path: Path) -> None:
    a = _conv_act(tmp_path / "a.onnx")
    model = onnx.load(a)
    for i, node in enumerate(model.graph.node):
        node.name = f"renamed{i}"
    b = _save(model, tmp_path / "b.onnx")
    assert differences(ort_optimized_graph(a), ort_optimized_graph(b)) == []


def test_a_blocked_fusion_shows_in_op_counts(tmp_path: Path) -> None:
    fused = ort_optimized_graph(_conv_act(tmp_path / "a.onnx"))
    blocked = ort_optimized_graph(_conv_act(tmp_path / "b.onnx", act_is_output=True))
    assert ":LeakyRelu" not in fused.op_counts
    assert blocked.op_counts[":LeakyRelu"] == 1
    (line,) = differences(fused, blocked)
    assert line.startswith("op counts:") and ":LeakyRelu 0->1" in line


def test_changed_attribute_and_weights_are_reported(tmp_path: Path) -> None:
    base = ort_optimized_graph(_conv_act(tmp_path / "a.onnx"))
    alpha = ort_optimized_graph(_conv_act(tmp_path / "b.onnx", alpha=0.2))
    weights = ort_optimized_graph(_conv_act(tmp_path / "c.onnx", seed=1))
    (line,) = differences(base, alpha)  # the activation's alpha, inside the fused Conv
    assert line.startswith("attributes differ on ") and "Conv" in line
    assert differences(base, weights) == ["weights: 2 only before, 2 only after"]

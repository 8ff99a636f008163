"""Tests of the synthetic zoo models and the committed digits CNN."""

from __future__ import annotations

import pathlib
import sys
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

# A bare `pytest` puts tests/ on sys.path, not the repository root that holds `models`.
_ROOT = str(pathlib.Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from models import zoo  # noqa: E402

DIGITS = pathlib.Path(zoo.__file__).resolve().parent / "digits"


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _subgraphs(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    found = []
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                found.append(attr.g)
                found.extend(_subgraphs(attr.g))
    return found


def _dead_nodes(graph: onnx.GraphProto) -> list[str]:
    """Nodes none of whose outputs is used in the graph, its subgraphs or its outputs."""
    used = {o.name for o in graph.output}
    for g in [graph, *_subgraphs(graph)]:
        for node in g.node:
            used.update(node.input)
    return [n.name for n in graph.node if not any(o in used for o in n.output)]


def _ops(graph: onnx.GraphProto) -> list[str]:
    return [n.op_type for n in graph.node]


def _node(graph: onnx.GraphProto, op_type: str) -> onnx.NodeProto:
    (node,) = [n for n in graph.node if n.op_type == op_type]
    return node


def _attr(node: onnx.NodeProto, name: str) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    raise KeyError(name)


def _inits(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in graph.initializer}


def test_zoo_names() -> None:
    assert list(zoo.ZOO) == ["cnn", "yolo-block", "bert-encoder", "mlp", "control-flow"]


def test_default_input_shapes_unknown_name() -> None:
    with pytest.raises(KeyError, match="unknown zoo model"):
        zoo.default_input_shapes("resnet")


@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_full_check_and_versions(name: str) -> None:
    model = zoo.ZOO[name]()
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 8
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]


@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_builders_are_deterministic(name: str) -> None:
    assert zoo.ZOO[name]().SerializeToString() == zoo.ZOO[name]().SerializeToString()


@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_default_shapes_match_graph_inputs(name: str) -> None:
    model = zoo.ZOO[name]()
    shapes = zoo.default_input_shapes(name)
    assert [i.name for i in model.graph.input] == list(shapes)
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        assert len(dims) == len(shapes[value.name])
        for dim, size in zip(dims, shapes[value.name], strict=True):
            assert dim.dim_param or dim.dim_value == size
        assert dims[0].dim_param == "N"  # batch is symbolic


@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_runs_in_onnxruntime(name: str) -> None:
    model = zoo.ZOO[name]()
    feeds = zoo.example_inputs(name)
    outputs = _session(model).run(None, feeds)
    assert len(outputs) == len(model.graph.output)
    batch = next(iter(feeds.values())).shape[0]
    for value, out in zip(model.graph.output, outputs, strict=True):
        assert out.dtype == np.float32
        assert np.isfinite(out).all(), value.name
        assert np.abs(out).max() > 1e-3, f"{value.name} is all zeros"
        assert out.std() < 100, f"{value.name} blew up"
        assert out.shape[0] == batch
        declared = [d.dim_value for d in value.type.tensor_type.shape.dim[1:]]
        if all(declared):
            assert list(out.shape[1:]) == declared


def test_runs_with_other_batch_sizes() -> None:
    for name in ("cnn", "mlp", "control-flow"):
        shapes = zoo.default_input_shapes(name)
        shapes = {k: [5, *v[1:]] for k, v in shapes.items()}
        (out,) = _session(zoo.ZOO[name]()).run(None, zoo.example_inputs(name, shapes=shapes))
        assert out.shape[0] == 5


def test_cnn_has_cleanup_and_conv_variety() -> None:
    graph = zoo.build_cnn().graph
    ops = _ops(graph)
    for op in ("Constant", "Identity", "Dropout", "Concat", "GlobalAveragePool", "Flatten", "Gemm"):
        assert op in ops
    assert ops.count("Add") == 2
    assert ops.count("BatchNormalization") == ops.count("Conv")
    groups = {
        (int(_attr(n, "group")), next(i.dims[0] for i in graph.initializer if i.name == n.input[1]))
        for n in graph.node
        if n.op_type == "Conv" and n.input[1] in {i.name for i in graph.initializer}
    }
    assert (32, 32) in groups  # depthwise: group == channels
    assert (4, 64) in groups
    constant = _node(graph, "Constant")
    consumers = [n for n in graph.node if constant.output[0] in n.input]
    assert [n.op_type for n in consumers] == ["Conv"]
    assert consumers[0].input[1] == constant.output[0]


def test_yolo_block_structure() -> None:
    model = zoo.build_yolo_block()
    ops = _ops(model.graph)
    assert ops.count("MaxPool") == 3
    assert ops.count("Sigmoid") == ops.count("BatchNormalization")  # SiLU after every BN
    split = _node(model.graph, "Split")
    assert _attr(split, "axis") == 1
    resize = _node(model.graph, "Resize")
    assert _attr(resize, "mode") == b"nearest"
    scales_producer = [n for n in model.graph.node if resize.input[2] in n.output]
    assert [n.op_type for n in scales_producer] == ["Constant"]
    assert [o.name for o in model.graph.output] == ["det_p3", "det_p4"]


def test_bert_encoder_structure_and_mask() -> None:
    model = zoo.build_bert_encoder()
    ops = _ops(model.graph)
    assert ops.count("LayerNormalization") == 5
    assert ops.count("Softmax") == 2
    assert ops.count("Erf") == 2
    assert "Gelu" not in ops
    word = _inits(model.graph)["embeddings.word"]
    assert word.shape == (1000, 64)
    feeds = zoo.example_inputs("bert-encoder")
    assert feeds["input_ids"].dtype == np.int64 and feeds["input_ids"].max() < 1000
    assert feeds["attention_mask"][-1, -1] == 0 and feeds["attention_mask"][0].all()
    session = _session(model)
    (base,) = session.run(None, feeds)
    # changing a masked token leaves the attended positions unchanged
    changed = {k: v.copy() for k, v in feeds.items()}
    changed["input_ids"][-1, -1] = (changed["input_ids"][-1, -1] + 1) % 1000
    (out,) = session.run(None, changed)
    np.testing.assert_allclose(out[-1, :-1], base[-1, :-1], rtol=1e-5, atol=1e-5)
    assert not np.allclose(out[-1, -1], base[-1, -1])


def test_mlp_has_transposed_weight_and_duplicate() -> None:
    graph = zoo.build_mlp().graph
    inits = _inits(graph)
    transpose = _node(graph, "Transpose")
    assert transpose.input[0] in inits
    raw = [t.raw_data for t in graph.initializer]
    duplicates = [t.name for t in graph.initializer if raw.count(t.raw_data) > 1]
    assert duplicates == ["fc1.bias", "fc2.bias"]


def test_control_flow_bodies_have_work() -> None:
    model = zoo.build_control_flow()
    graph = model.graph
    main_raw = {t.raw_data for t in graph.initializer}
    if_node = _node(graph, "If")
    then_g, else_g = _attr(if_node, "then_branch"), _attr(if_node, "else_branch")
    body = _attr(_node(graph, "Loop"), "body")
    for g in (then_g, else_g, body):
        assert isinstance(g, onnx.GraphProto)
        assert len(g.initializer) >= 2, g.name
        assert "Identity" in _ops(g), g.name
        assert _dead_nodes(g), f"{g.name} has no dead node"
        assert {"MatMul", "Conv"} & set(_ops(g)), g.name
    assert any(t.raw_data in main_raw for t in then_g.initializer)
    assert not _dead_nodes(graph)


def test_control_flow_takes_both_branches() -> None:
    model = zoo.build_control_flow()
    graph = model.graph
    if_node = _node(graph, "If")
    graph.output.append(onnx.ValueInfoProto(name=if_node.output[0]))
    graph.output.append(onnx.ValueInfoProto(name="embed.relu.out"))
    session = _session(model)
    x = zoo.example_inputs("control-flow")["input"]
    then_g, else_g = _attr(if_node, "then_branch"), _attr(if_node, "else_branch")
    assert isinstance(then_g, onnx.GraphProto) and isinstance(else_g, onnx.GraphProto)
    t, e = _inits(then_g), _inits(else_g)

    pos_out, pos_branch, pos_h = session.run(None, {"input": np.abs(x)})
    expected_then = np.maximum(pos_h @ t["then.weight"] + t["then.bias"], 0)
    np.testing.assert_allclose(pos_branch, expected_then, rtol=1e-5, atol=1e-5)

    neg_out, neg_branch, neg_h = session.run(None, {"input": -np.abs(x)})
    w = e["else.conv.weight"][:, :, 0, 0]
    expected_else = np.tanh(neg_h @ w.T + e["else.conv.bias"])
    np.testing.assert_allclose(neg_branch, expected_else, rtol=1e-5, atol=1e-5)
    assert not np.allclose(pos_out, neg_out)


def test_digits_files_are_small_and_shaped() -> None:
    files = [p for p in DIGITS.iterdir() if p.suffix in {".onnx", ".npz", ".npy"}]
    assert sum(p.stat().st_size for p in files) < 1_000_000
    calib = np.load(DIGITS / "digits_calib.npz")["input"]
    heldout = np.load(DIGITS / "digits_heldout.npz")["input"]
    labels = np.load(DIGITS / "digits_heldout_labels.npy")
    assert calib.dtype == heldout.dtype == np.float32
    assert calib.shape[1:] == heldout.shape[1:] == (1, 8, 8)
    assert len(calib) + len(heldout) == 1797 and len(heldout) == len(labels) == 360
    assert labels.dtype == np.int64 and set(labels.tolist()) == set(range(10))
    assert 0.0 <= calib.min() and calib.max() <= 1.0


def test_digits_model_accuracy() -> None:
    model = onnx.load(DIGITS / "digits_cnn.onnx")
    onnx.checker.check_model(model, full_check=True)
    assert "BatchNormalization" in _ops(model.graph)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    x = np.load(DIGITS / "digits_heldout.npz")["input"]
    labels = np.load(DIGITS / "digits_heldout_labels.npy")
    (logits,) = _session(model).run(["logits"], {"input": x})
    assert logits.shape == (len(x), 10)
    accuracy = float((logits.argmax(axis=1) == labels).mean())
    assert accuracy >= 0.95

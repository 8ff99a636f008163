"""skl2onnx models: ai.onnx.ml operators, ZipMap's Sequence(Map) output, Map inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from nnopt_graph.core import io
from nnopt_graph.core.opaque_types import MARKER, restore_opaque_types, strip_opaque_types
from nnopt_graph.errors import BadInputError
from nnopt_graph.job import optimize
from tests.exporters.helpers import op_counts, optimize_both

skl2onnx = pytest.importorskip("skl2onnx")
sklearn_datasets = pytest.importorskip("sklearn.datasets")

from sklearn.ensemble import RandomForestClassifier  # noqa: E402
from sklearn.feature_extraction import DictVectorizer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

OPSETS = {"": 17, "ai.onnx.ml": 3}


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray, Path]:
    x, y = sklearn_datasets.load_digits(return_X_y=True)
    x = x.astype(np.float32)
    calib = tmp_path_factory.mktemp("data") / "digits_flat.npz"
    np.savez(calib, X=x[1200:1400])
    return x[:1200], y[:1200], calib


def _export(estimator: object, x: np.ndarray, path: Path, zipmap: bool = True) -> Path:
    final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    options = None if zipmap else {type(final): {"zipmap": False}}
    proto = skl2onnx.to_onnx(estimator, x[:1], options=options, target_opset=OPSETS)
    onnx.save(proto, path)
    return path


@pytest.fixture(scope="module")
def logreg_zipmap(digits, tmp_path_factory) -> Path:
    x, y, _ = digits
    clf = LogisticRegression(max_iter=300).fit(x, y)
    return _export(clf, x, tmp_path_factory.mktemp("m") / "logreg_zipmap.onnx")


@pytest.fixture(scope="module")
def mlp_nozipmap(digits, tmp_path_factory) -> Path:
    x, y, _ = digits
    pipe = make_pipeline(
        StandardScaler(), MLPClassifier(hidden_layer_sizes=(64,), max_iter=200, random_state=0)
    ).fit(x, y)
    return _export(pipe, x, tmp_path_factory.mktemp("m") / "mlp.onnx", zipmap=False)


@pytest.fixture(scope="module")
def forest_nozipmap(digits, tmp_path_factory) -> Path:
    x, y, _ = digits
    forest = RandomForestClassifier(n_estimators=4, max_depth=5, random_state=0).fit(x, y)
    return _export(forest, x, tmp_path_factory.mktemp("m") / "forest.onnx", zipmap=False)


def test_zipmap_model_loads_and_saves_with_its_output_types(logreg_zipmap, tmp_path):
    original = onnx.load(str(logreg_zipmap))
    assert original.graph.output[1].type.WhichOneof("value") == "sequence_type"
    model = io.load(logreg_zipmap)
    out = io.save(model, tmp_path / "roundtrip.onnx")
    saved = onnx.load(str(out))
    assert [o.type for o in saved.graph.output] == [o.type for o in original.graph.output]
    assert all(not o.metadata_props for o in saved.graph.output)
    onnx.checker.check_model(saved, full_check=True)


def test_zipmap_model_default_pipeline_leaves_ml_ops_alone(logreg_zipmap, digits, tmp_path):
    out = tmp_path / "logreg.onnx"
    result = optimize(logreg_zipmap, out, check=False)
    assert result.output == out
    assert op_counts(out, "ai.onnx.ml") == op_counts(logreg_zipmap, "ai.onnx.ml")
    saved, original = onnx.load(str(out)), onnx.load(str(logreg_zipmap))
    assert saved.graph.output[1].type == original.graph.output[1].type  # seq(map) kept exactly
    assert saved.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    x = np.load(digits[2])["X"][:5]
    ref = ort.InferenceSession(str(logreg_zipmap)).run(None, {"X": x})
    got = ort.InferenceSession(str(out)).run(None, {"X": x})
    np.testing.assert_array_equal(ref[0], got[0])
    assert [sorted(d) for d in ref[1]] == [sorted(d) for d in got[1]]
    for a, b in zip(ref[1], got[1], strict=True):
        np.testing.assert_allclose([a[k] for k in sorted(a)], [b[k] for k in sorted(a)])


def test_zipmap_model_verified_default_and_cpu(logreg_zipmap, digits, tmp_path):
    results = optimize_both(logreg_zipmap, digits[2], tmp_path)
    for result in results.values():
        per_output = result.report["fidelity"]["per_output"]
        assert set(per_output) == {"output_label", "output_probability"}
        assert result.fidelity.shapes_match
        assert op_counts(result.output, "ai.onnx.ml") == op_counts(logreg_zipmap, "ai.onnx.ml")


def test_mlp_verified_default_and_cpu(mlp_nozipmap, digits, tmp_path):
    results = optimize_both(mlp_nozipmap, digits[2], tmp_path)
    for label, result in results.items():
        out = tmp_path / f"mlp.{label}.onnx"
        assert op_counts(out, "ai.onnx.ml") == op_counts(mlp_nozipmap, "ai.onnx.ml")
        assert result.fidelity.cosine_min >= 0.99
        assert result.fidelity.shapes_match


def test_tree_ensemble_verified_default_and_cpu(forest_nozipmap, digits, tmp_path):
    results = optimize_both(forest_nozipmap, digits[2], tmp_path)
    for label in results:
        out = tmp_path / f"forest.{label}.onnx"
        assert op_counts(out, "ai.onnx.ml")["TreeEnsembleClassifier"] == 1


def test_map_input_is_refused_with_its_type(tmp_path):
    vec = DictVectorizer(sparse=False).fit([{"a": 1.0, "b": 2.0}])
    proto = skl2onnx.to_onnx(
        vec,
        initial_types=[
            (
                "D",
                skl2onnx.common.data_types.DictionaryType(
                    skl2onnx.common.data_types.StringTensorType([]),
                    skl2onnx.common.data_types.FloatTensorType([]),
                ),
            )
        ],
        target_opset=OPSETS,
    )
    path = tmp_path / "dictvec.onnx"
    onnx.save(proto, path)
    with pytest.raises(BadInputError, match=r"input 'D' has type map\("):
        optimize(path, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_strip_moves_only_map_types(logreg_zipmap, tmp_path):
    proto = onnx.load(str(logreg_zipmap))
    label_type = onnx.TypeProto()
    label_type.CopyFrom(proto.graph.output[0].type)
    assert strip_opaque_types(proto) == 1
    assert proto.graph.output[0].type == label_type  # tensor output untouched
    assert not proto.graph.output[1].HasField("type")
    assert [e.key for e in proto.graph.output[1].metadata_props] == [MARKER]
    path = tmp_path / "stripped.onnx"
    onnx.save(proto, path)
    assert restore_opaque_types(path)
    restored = onnx.load(str(path))
    assert restored.graph.output[1].type == onnx.load(str(logreg_zipmap)).graph.output[1].type
    assert not restore_opaque_types(path)  # nothing left to restore


def test_strip_leaves_tensor_only_models_alone(mlp_nozipmap):
    proto = onnx.load(str(mlp_nozipmap))
    before = proto.SerializeToString()
    assert strip_opaque_types(proto) == 0
    assert proto.SerializeToString() == before

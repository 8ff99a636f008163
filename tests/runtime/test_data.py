"""Data loading: memory-mapped npz, stacked feeds, test_data_set folders, calibration taps."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import numpy_helper

from nnopt_graph.errors import BadInputError
from nnopt_graph.runtime.calibrate import MinMaxStats, run_with_taps
from nnopt_graph.runtime.data import (
    InputSpec,
    SampleFile,
    load_dataset,
    random_dataset,
    resolve_shapes,
)

SPECS = [InputSpec("x", np.dtype(np.float32), ("N", 3)), InputSpec("state", np.dtype(np.float32), (2, 4))]


def test_npz_is_memory_mapped_and_batched(tmp_path):
    x = np.arange(30, dtype=np.float32).reshape(10, 3)
    state = np.ones((10, 2, 4), np.float32)  # one more axis than the input: stacked feeds
    np.savez(tmp_path / "d.npz", x=x, state=state)
    data = load_dataset(tmp_path / "d.npz", SPECS)
    assert isinstance(data.arrays["x"], SampleFile)  # read per batch, never whole
    assert data.stacked == frozenset({"state"})
    feeds = list(data.batches(4))
    assert len(feeds) == 10  # a stacked input makes every feed one sample
    assert feeds[3]["x"].shape == (1, 3) and feeds[3]["state"].shape == (2, 4)
    np.testing.assert_array_equal(feeds[3]["x"][0], x[3])
    calib, held = data.split(0.2)
    assert calib.num_samples == 8 and held.num_samples == 2


def test_compressed_npz_and_dtype_conversion(tmp_path):
    np.savez_compressed(tmp_path / "d.npz", x=np.arange(6, dtype=np.float64).reshape(2, 3),
                        state=np.zeros((2, 2, 4)), extra=np.zeros(1))
    data = load_dataset(tmp_path / "d.npz", SPECS)
    feed = next(data.batches(2))
    assert feed["x"].dtype == np.float32 and feed["state"].dtype == np.float32


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((2, 3), np.float32)}, "no data for input"),
        ({"x": np.zeros((2, 3), np.float32), "state": np.zeros((3, 2, 4), np.float32)}, "different sample counts"),
        ({"x": np.zeros((2, 3, 1, 1), np.float32), "state": np.zeros((2, 2, 4), np.float32)}, "has rank 4"),
    ],
)
def test_bad_npz(tmp_path, arrays, message):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(BadInputError, match=message):
        load_dataset(tmp_path / "d.npz", SPECS)


def test_not_an_npz(tmp_path):
    (tmp_path / "d.npz").write_text("nope")
    with pytest.raises(BadInputError, match="not a readable .npz"):
        load_dataset(tmp_path / "d.npz", SPECS)


def test_test_data_set_folders(tmp_path):
    for i in range(3):
        folder = tmp_path / f"test_data_set_{i}"
        folder.mkdir()
        for j, (name, shape) in enumerate((("x", (1, 3)), ("state", (2, 4)))):
            tensor = numpy_helper.from_array(np.full(shape, i, np.float32), name)
            (folder / f"input_{j}.pb").write_bytes(tensor.SerializeToString())
    data = load_dataset(tmp_path, SPECS)
    assert data.num_samples == 3 and data.stacked == frozenset({"x", "state"})
    feeds = list(data.batches())
    assert feeds[2]["x"].shape == (1, 3) and float(feeds[2]["state"][0, 0]) == 2.0


def test_resolve_shapes_shares_symbols_and_checks_overrides():
    specs = [InputSpec("a", np.dtype(np.float32), ("batch", 3, "h", "w")), InputSpec("b", np.dtype(np.int64), ("batch", "seq"))]
    shapes = resolve_shapes(specs, {"a": [4, 3, 32, 32]})
    assert shapes == {"a": (4, 3, 32, 32), "b": (4, 16)}
    with pytest.raises(BadInputError, match="rank"):
        resolve_shapes(specs, {"a": [1, 3]})
    with pytest.raises(BadInputError, match="names 'zz'"):
        resolve_shapes(specs, {"zz": [1]})
    data = random_dataset(specs, resolve_shapes(specs), num_samples=2)
    assert set(np.unique(data.arrays["b"])) <= {0, 1}


def test_run_with_taps_streams_intermediate_values():
    proto = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[N,3] x) => (float[N,3] y) { r = Relu (x) y = Neg (r) }"""
    )
    model = ir.serde.deserialize_model(proto)
    x = np.array([[[-1.0, 2.0, 3.0]], [[4.0, -5.0, 0.5]]], np.float32)
    data = random_dataset([InputSpec("x", np.dtype(np.float32), (1, 3))], {"x": (1, 3)}, 2)
    data.arrays["x"] = x
    stats = MinMaxStats()
    assert run_with_taps(model, ["r"], data, stats) == 2
    assert stats.low["r"] == 0.0 and stats.high["r"] == 4.0
    assert [o.name for o in model.graph.outputs] == ["y"]  # the model itself is untouched

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

SPECS = [
    InputSpec("x", np.dtype(np.float32), ("N", 3)),
    InputSpec("state", np.dtype(np.float32), (2, 4)),
]


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
    np.savez_compressed(
        tmp_path / "d.npz",
        x=np.arange(6, dtype=np.float64).reshape(2, 3),
        state=np.zeros((2, 2, 4)),
        extra=np.zeros(1),
    )
    data = load_dataset(tmp_path / "d.npz", SPECS)
    feed = next(data.batches(2))
    assert feed["x"].dtype == np.float32 and feed["state"].dtype == np.float32


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((2, 3), np.float32)}, "no data for input"),
        (
            {"x": np.zeros((2, 3), np.float32), "state": np.zeros((3, 2, 4), np.float32)},
            "different sample counts",
        ),
        (
            {"x": np.zeros((2, 3, 1, 1), np.float32), "state": np.zeros((2, 2, 4), np.float32)},
            "has rank 4",
        ),
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
    specs = [
        InputSpec("a", np.dtype(np.float32), ("batch", 3, "h", "w")),
        InputSpec("b", np.dtype(np.int64), ("batch", "seq")),
    ]
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


# Data validated against the model: one-line BadInputError naming the file and the problem.

STATIC = [InputSpec("x", np.dtype(np.float32), ("N", 3, 4))]


@pytest.mark.parametrize(
    ("array", "fragment"),
    [
        (np.zeros((2, 3, 5), np.float32), "axis 2 must be 4"),
        (np.array([["a", "b", "c", "d"]] * 3 * 2).reshape(2, 3, 4), "string values"),
        (np.zeros((2, 3, 4), np.complex64), "complex values"),
        (np.zeros((2, 3, 4), np.int64) + 1.0j, "complex values"),
        (np.zeros((0, 3, 4), np.float32), "no samples"),
        (np.full((2, 3, 4), np.nan, np.float32), "NaN values (first in sample 0)"),
        (np.concatenate([np.zeros((5, 3, 4)), np.full((1, 3, 4), np.inf)]), "Inf values"),
        (np.full((2, 3, 4), 1e300), "outside what the input's float32 holds"),
    ],
)
def test_bad_data_is_refused_in_one_line(tmp_path, array, fragment):
    np.savez(tmp_path / "d.npz", x=array)
    with pytest.raises(BadInputError) as info:
        load_dataset(tmp_path / "d.npz", STATIC)
    message = str(info.value)
    assert fragment in message, message
    assert message.startswith(str(tmp_path / "d.npz"))
    assert "'x'" in message or fragment == "no samples"
    assert "\n" not in message


def test_stacked_feed_with_dynamic_batch_takes_any_batch(tmp_path):
    # The control for the shape errors: dims the model leaves dynamic take any size.
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 5, 3, 4), np.float32))
    data = load_dataset(tmp_path / "d.npz", STATIC)
    assert data.stacked == frozenset({"x"}) and data.num_samples == 2
    assert next(data.batches())["x"].shape == (5, 3, 4)


def test_shape_of_stacked_feed_checked_against_static_dims(tmp_path):
    np.savez(tmp_path / "d.npz", state=np.ones((3, 2, 5), np.float32), x=np.ones((3, 3)))
    with pytest.raises(BadInputError, match=r"'state' has sample shape \[2, 5\].*axis 1 must be 4"):
        load_dataset(tmp_path / "d.npz", SPECS)


def test_object_array_is_refused_without_unpickling(tmp_path):
    array = np.empty((2, 3, 4), dtype=object)
    np.savez(tmp_path / "d.npz", x=array)
    with pytest.raises(BadInputError):
        load_dataset(tmp_path / "d.npz", STATIC)


def test_lossless_widening_converts_with_a_warning(tmp_path, caplog):
    np.savez(tmp_path / "d.npz", x=np.arange(24, dtype=np.int64).reshape(2, 3, 4))
    with caplog.at_level("WARNING"):
        data = load_dataset(tmp_path / "d.npz", STATIC)
    assert "converted from int64 to float32" in caplog.text
    (feed,) = list(data.batches(2))
    assert feed["x"].dtype == np.float32
    np.testing.assert_array_equal(feed["x"].ravel(), np.arange(24, dtype=np.float32))


@pytest.mark.parametrize(
    ("dtype", "array", "fragment"),
    [
        (np.int32, np.full((2, 3), 2**40, np.int64), "outside what the input's int32 holds"),
        (np.int64, np.ones((2, 3), np.float32), "does not convert without loss"),
        (np.bool_, np.ones((2, 3), np.int64), "does not convert without loss"),
    ],
)
def test_lossy_conversions_are_refused(tmp_path, dtype, array, fragment):
    np.savez(tmp_path / "d.npz", x=array)
    with pytest.raises(BadInputError, match=fragment):
        load_dataset(tmp_path / "d.npz", [InputSpec("x", np.dtype(dtype), ("N", 3))])


def test_int64_data_that_fits_converts_to_int32(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.full((2, 3), 7, np.int64))
    data = load_dataset(tmp_path / "d.npz", [InputSpec("x", np.dtype(np.int32), ("N", 3))])
    assert next(data.batches(2))["x"].dtype == np.int32


def test_nan_scan_reads_slices_not_the_whole_file(tmp_path, monkeypatch):
    from nnopt_graph.runtime import data_checks as data_module

    x = np.zeros((64, 3, 4), np.float32)
    x[50, 1, 2] = np.nan
    np.savez(tmp_path / "d.npz", x=x)
    monkeypatch.setattr(data_module, "_SCAN_BYTES", 3 * 4 * 4 * 8)  # 8 samples a read
    reads = []
    original = SampleFile.__getitem__

    def spy(self, key):
        out = original(self, key)
        reads.append(len(out) if isinstance(key, slice) else 1)
        return out

    monkeypatch.setattr(SampleFile, "__getitem__", spy)
    with pytest.raises(BadInputError, match="first in sample 50"):
        load_dataset(tmp_path / "d.npz", STATIC)
    assert reads and max(reads) == 8, reads


def test_test_data_set_with_nan_is_refused(tmp_path):
    folder = tmp_path / "test_data_set_0"
    folder.mkdir()
    tensor = numpy_helper.from_array(np.full((1, 3, 4), np.nan, np.float32), "x")
    (folder / "input_0.pb").write_bytes(tensor.SerializeToString())
    with pytest.raises(BadInputError, match="NaN"):
        load_dataset(tmp_path, STATIC)


# Resource limits before allocating.


def test_random_data_over_the_limit_is_refused_before_allocating():
    spec = InputSpec("x", np.dtype(np.float32), (1, 2**40))
    with pytest.raises(BadInputError) as info:
        random_dataset([spec], resolve_shapes([spec]), num_samples=4)
    message = str(info.value)
    assert "input 'x'" in message and "16.0 TiB" in message and "limit" in message


def test_random_data_limit_counts_all_inputs(monkeypatch):
    monkeypatch.setenv("NNOPT_GRAPH_MAX_GENERATED_BYTES", str(3000))
    specs = [InputSpec(n, np.dtype(np.float32), (1, 100)) for n in ("a", "b")]
    shapes = resolve_shapes(specs)
    random_dataset(specs[:1], shapes, num_samples=4)  # 1600 B: under the limit
    with pytest.raises(BadInputError, match="random data for the inputs would take 3.1 KiB"):
        random_dataset(specs, shapes, num_samples=4)  # 3200 B

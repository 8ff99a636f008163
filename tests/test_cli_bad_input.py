"""Bad input on the command line: exit 2, one error line, no traceback, nothing written."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import make_tiny_model, run_cli
from onnx import TensorProto, helper

import nnopt_graph
from nnopt_graph.cli import main
from nnopt_graph.errors import BadInputError

PREFIX = "nnopt-graph: error: "


def _assert_bad_input(proc: subprocess.CompletedProcess[str], out_dir: Path | None = None) -> str:
    """Exit 2, exactly one stderr line with the error prefix, no traceback, nothing written."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(PREFIX), proc.stderr
    assert "Traceback" not in proc.stderr
    if out_dir is not None:
        assert sorted(p.name for p in out_dir.iterdir()) == [], "output folder must stay empty"
    return lines[0]


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    """An empty folder for outputs, separate from the inputs."""
    path = tmp_path / "out"
    path.mkdir()
    return path


def _opt(model: Path | str, out_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("opt", model, out_dir / "out.onnx", *extra)


def _external_model(folder: Path) -> Path:
    folder.mkdir()
    path = folder / "m.onnx"
    onnx.save_model(
        make_tiny_model(),
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="w.data",
        size_threshold=0,
    )
    assert (folder / "w.data").is_file()
    return path


# Unreadable input files.


def test_input_not_onnx(tmp_path: Path, out_dir: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("this is not a model\n")
    line = _assert_bad_input(_opt(text, out_dir), out_dir)
    assert "not a valid ONNX model" in line


def test_input_empty_file(tmp_path: Path, out_dir: Path) -> None:
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    line = _assert_bad_input(_opt(empty, out_dir), out_dir)
    assert "empty" in line


def test_input_truncated_onnx(tiny_model_path: Path, tmp_path: Path, out_dir: Path) -> None:
    data = tiny_model_path.read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    _assert_bad_input(_opt(truncated, out_dir), out_dir)


def test_input_missing(tmp_path: Path, out_dir: Path) -> None:
    line = _assert_bad_input(_opt(tmp_path / "nosuch.onnx", out_dir), out_dir)
    assert "no such file" in line


def test_input_is_directory(tmp_path: Path, out_dir: Path) -> None:
    folder = tmp_path / "model.onnx"
    folder.mkdir()
    line = _assert_bad_input(_opt(folder, out_dir), out_dir)
    assert "directory" in line


def test_external_data_missing(tmp_path: Path, out_dir: Path) -> None:
    model = _external_model(tmp_path / "ext")
    (model.parent / "w.data").unlink()
    line = _assert_bad_input(_opt(model, out_dir), out_dir)
    assert "w.data" in line


def test_external_data_truncated(tmp_path: Path, out_dir: Path) -> None:
    model = _external_model(tmp_path / "ext")
    data_file = model.parent / "w.data"
    data = data_file.read_bytes()
    data_file.write_bytes(data[: len(data) // 2])
    line = _assert_bad_input(_opt(model, out_dir), out_dir)
    assert "truncated" in line


def _relocate_external_data(model: Path, location: str) -> None:
    proto = onnx.load(model, load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save_model(proto, model)


def test_external_data_outside_model_folder(tmp_path: Path, out_dir: Path) -> None:
    model = _external_model(tmp_path / "ext")
    (model.parent / "w.data").rename(tmp_path / "w.data")
    _relocate_external_data(model, "../w.data")
    line = _assert_bad_input(_opt(model, out_dir), out_dir)
    assert "outside" in line


def test_external_data_absolute_location(tmp_path: Path, out_dir: Path) -> None:
    model = _external_model(tmp_path / "ext")
    outside = tmp_path / "w.data"
    (model.parent / "w.data").rename(outside)
    _relocate_external_data(model, str(outside))
    line = _assert_bad_input(_opt(model, out_dir), out_dir)
    assert "outside" in line


def test_external_data_symlink_outside_model_folder(tmp_path: Path, out_dir: Path) -> None:
    model = _external_model(tmp_path / "ext")
    outside = tmp_path / "elsewhere.data"
    (model.parent / "w.data").rename(outside)
    (model.parent / "w.data").symlink_to(outside)
    line = _assert_bad_input(_opt(model, out_dir), out_dir)
    assert "outside" in line


def test_external_data_hard_linked(tmp_path: Path, out_dir: Path) -> None:
    # onnx-ir refuses to read a data file with several hard links: bad input, not a crash.
    model = _external_model(tmp_path / "ext")
    (model.parent / "copy.data").hardlink_to(model.parent / "w.data")
    line = _assert_bad_input(_opt(model, out_dir), out_dir)
    assert "hard link" in line


def test_input_reads_undefined_value(tmp_path: Path, out_dir: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["nowhere"], ["y"], name="relu")],
        "broken",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    broken = tmp_path / "broken.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), broken)
    line = _assert_bad_input(_opt(broken, out_dir), out_dir)
    assert "invalid model" in line and "nowhere" in line


# Pipelines.


def test_unknown_pass(tiny_model_path: Path, out_dir: Path) -> None:
    line = _assert_bad_input(_opt(tiny_model_path, out_dir, "-p", "no-such-pass"), out_dir)
    assert "no-such-pass" in line


@pytest.mark.parametrize(
    ("pipeline", "expected"),
    [
        ("fold-constants{max-input-elements=}", "bad pipeline text"),
        ("a,,b", "bad pipeline text"),
        ("fold-constants,,infer-shapes", "bad pipeline text"),
        ("fold-constants{", "bad pipeline text"),
        ("", "bad pipeline text"),
        ("fold-constants{x=1}", "no option 'x'"),
        ("fold-constants{max-input-elements=many}", "'many'"),
    ],
)
def test_bad_pipeline_text(
    tiny_model_path: Path, out_dir: Path, pipeline: str, expected: str
) -> None:
    line = _assert_bad_input(_opt(tiny_model_path, out_dir, "-p", pipeline), out_dir)
    assert expected in line


# --input-shape.


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ("x:a,b", "bad --input-shape"),
        ("x:0", "positive"),
        ("x:-1,3,8,8", "bad --input-shape"),
        ("nosuch:1,3,8,8", "nosuch"),
        ("x:1,3,8", "rank"),
    ],
)
def test_bad_input_shape(tiny_model_path: Path, out_dir: Path, shape: str, expected: str) -> None:
    line = _assert_bad_input(_opt(tiny_model_path, out_dir, "--input-shape", shape), out_dir)
    assert expected in line


# Output paths and usage.


def test_output_folder_missing(tiny_model_path: Path, tmp_path: Path) -> None:
    proc = run_cli("opt", tiny_model_path, tmp_path / "nosuch" / "out.onnx")
    _assert_bad_input(proc)
    assert not (tmp_path / "nosuch").exists()


def test_output_is_directory(tiny_model_path: Path, out_dir: Path) -> None:
    _assert_bad_input(run_cli("opt", tiny_model_path, out_dir), out_dir)


def test_unknown_subcommand(tiny_model_path: Path) -> None:
    line = _assert_bad_input(run_cli("frobnicate", tiny_model_path))
    assert "frobnicate" in line


def test_no_subcommand_prints_usage() -> None:
    proc = run_cli()  # a bare command answers with the usage (tests/test_cli_habits.py)
    assert proc.returncode == 2 and proc.stderr.startswith("usage: nnopt-graph")
    assert "Traceback" not in proc.stderr


def test_unknown_option(tiny_model_path: Path, out_dir: Path) -> None:
    _assert_bad_input(_opt(tiny_model_path, out_dir, "--no-such-option"), out_dir)


# Other subcommands.


def test_inspect_not_onnx(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("this is not a model\n")
    _assert_bad_input(run_cli("inspect", text))


def test_inspect_missing(tmp_path: Path) -> None:
    _assert_bad_input(run_cli("inspect", tmp_path / "nosuch.onnx"))


def test_compare_missing_second_file(tiny_model_path: Path, tmp_path: Path) -> None:
    line = _assert_bad_input(run_cli("compare", tiny_model_path, tmp_path / "nosuch.onnx"))
    assert "nosuch.onnx" in line


def test_compare_second_file_not_onnx(tiny_model_path: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("this is not a model\n")
    line = _assert_bad_input(run_cli("compare", tiny_model_path, text))
    assert "notes.txt" in line


# --debug.


def test_debug_prints_traceback(tmp_path: Path, out_dir: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("this is not a model\n")
    proc = _opt(text, out_dir, "--debug")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith(PREFIX)
    assert list(out_dir.iterdir()) == []


# Paths checked before any work (in-process: the same main() the command runs).


def _main(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str]:
    """Run the CLI in this process; (exit code, the single stderr error line)."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    if code != 0:
        assert len(lines) == 1, err
        assert lines[0].startswith(PREFIX), err
        assert "Traceback" not in err
        return code, lines[0]
    return code, err


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_output_is_inputs_external_data_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _external_model(tmp_path / "m")
    before = _snapshot(model.parent)
    code, line = _main(capsys, "opt", model, model.parent / "w.data")
    assert code == 2
    assert "external-data file of the input" in line
    assert _snapshot(model.parent) == before, "the input must be untouched"


def test_output_is_input_needs_in_place(tiny_model_path: Path, capsys) -> None:
    before = tiny_model_path.read_bytes()
    code, line = _main(capsys, "opt", tiny_model_path, tiny_model_path)
    assert code == 2
    assert "--in-place" in line
    assert tiny_model_path.read_bytes() == before
    # The control: with --in-place the same command works and rewrites the file.
    code, _ = _main(capsys, "opt", tiny_model_path, tiny_model_path, "--in-place")
    assert code == 0
    onnx.checker.check_model(onnx.load(tiny_model_path))


def test_output_is_input_through_a_symlink(tiny_model_path: Path, out_dir: Path, capsys) -> None:
    link = out_dir / "link.onnx"
    link.symlink_to(tiny_model_path)
    code, line = _main(capsys, "opt", tiny_model_path, link)
    assert code == 2 and "the input model" in line


def test_output_is_calibration_file(tiny_model_path: Path, tmp_path: Path, capsys) -> None:
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.zeros((2, 1, 3, 8, 8), np.float32))
    before = calib.read_bytes()
    code, line = _main(capsys, "opt", tiny_model_path, calib, "--calib", calib)
    assert code == 2 and "input data file" in line
    assert calib.read_bytes() == before


@pytest.mark.parametrize("kind", ["directory", "missing-folder", "the-input", "the-output"])
def test_bad_report_path_writes_nothing(
    tiny_model_path: Path, out_dir: Path, tmp_path: Path, capsys, kind: str
) -> None:
    out = out_dir / "out.onnx"
    report = {
        "directory": out_dir,
        "missing-folder": tmp_path / "nosuch" / "r.json",
        "the-input": tiny_model_path,
        "the-output": out,
    }[kind]
    before = tiny_model_path.read_bytes()
    code, line = _main(capsys, "opt", tiny_model_path, out, "--report", report)
    assert code == 2, line
    assert "report" in line
    assert list(out_dir.iterdir()) == [], "OUT must not be published before a report fails"
    assert tiny_model_path.read_bytes() == before


def test_dump_dir_missing_writes_nothing(tiny_model_path: Path, out_dir: Path, capsys) -> None:
    code, line = _main(capsys, "opt", tiny_model_path, out_dir / "o.onnx", "--dump-dir", "nosuch")
    assert code == 2 and "--dump-dir" in line
    assert list(out_dir.iterdir()) == []


def test_dump_dir_is_a_file(tiny_model_path: Path, out_dir: Path, tmp_path: Path, capsys) -> None:
    dump = tmp_path / "file"
    dump.write_text("x")
    code, line = _main(capsys, "opt", tiny_model_path, out_dir / "o.onnx", "--dump-dir", dump)
    assert code == 2 and "--dump-dir" in line


def test_good_report_path_is_written(tiny_model_path: Path, out_dir: Path, capsys) -> None:
    # The control for the report tests above.
    code, _ = _main(
        capsys, "opt", tiny_model_path, out_dir / "o.onnx", "--report", out_dir / "r.json"
    )
    assert code == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["o.onnx", "r.json"]


def test_api_refuses_output_equal_to_input(tiny_model_path: Path) -> None:
    with pytest.raises(BadInputError, match="in-place"):
        nnopt_graph.optimize(tiny_model_path, tiny_model_path)
    with pytest.raises(BadInputError, match="report path is a directory"):
        nnopt_graph.optimize(tiny_model_path, None, report=tiny_model_path.parent)


# Models ONNX Runtime cannot load or crashes on; declared sizes past the limit.


def _one_node_model(node: onnx.NodeProto, x_shape, y_shape, opsets) -> onnx.ModelProto:
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, y_shape)],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets], ir_version=8
    )


def _split_with_empty_output() -> onnx.ModelProto:
    node = helper.make_node("Split", ["X"], ["Y", ""], axis=0, num_outputs=2)
    return _one_node_model(node, [4, 6], [2, 6], [("", 18)])


def test_ort_segfault_is_exit_1_one_line_nothing_written(tmp_path: Path, out_dir: Path) -> None:
    path = tmp_path / "split.onnx"
    onnx.save(_split_with_empty_output(), path)
    proc = _opt(path, out_dir)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [
        PREFIX + "ONNX Runtime crashed running the output (signal 11)"
    ]
    assert list(out_dir.iterdir()) == []


def test_no_check_keeps_the_empty_optional_output(tmp_path: Path, out_dir: Path, capsys) -> None:
    path = tmp_path / "split.onnx"
    onnx.save(_split_with_empty_output(), path)
    code, _ = _main(capsys, "opt", path, out_dir / "out.onnx", "--no-check")
    assert code == 0
    assert list(onnx.load(out_dir / "out.onnx").graph.node[0].output) == ["Y", ""]


@pytest.mark.parametrize(
    ("opsets", "domain", "fragment"),
    [([("", 99)], "", "Opset 99"), ([("", 18), ("com.unknown", 1)], "com.unknown", "Foo")],
)
def test_model_ort_cannot_load_is_bad_input(
    tmp_path: Path, out_dir: Path, capsys, opsets, domain, fragment
) -> None:
    node = helper.make_node("Relu" if not domain else "Foo", ["X"], ["Y"], domain=domain)
    path = tmp_path / "m.onnx"
    onnx.save(_one_node_model(node, [1, 4], [1, 4], opsets), path)
    code, line = _main(capsys, "opt", path, out_dir / "out.onnx")
    assert code == 2
    assert "ONNX Runtime cannot load the input model" in line and fragment in line
    assert list(out_dir.iterdir()) == []


def test_declared_dim_2_pow_40_is_refused_before_allocating(
    tmp_path: Path, out_dir: Path, capsys
) -> None:
    node = helper.make_node("Relu", ["X"], ["Y"])
    path = tmp_path / "m.onnx"
    onnx.save(_one_node_model(node, [1, 2**40], [1, 2**40], [("", 18)]), path)
    code, line = _main(capsys, "opt", path, out_dir / "out.onnx")
    assert code == 2
    assert "input 'X'" in line and "TiB" in line and "limit" in line
    assert list(out_dir.iterdir()) == []


# Data that does not fit the model: exit 2, never "verified over 0 feeds".


@pytest.mark.parametrize(
    ("array", "fragment"),
    [
        (np.zeros((4, 3, 9, 9), np.float32), "axis 2 must be 8"),
        (np.array(["a"] * 4 * 3 * 8 * 8).reshape(4, 3, 8, 8), "string values"),
        (np.zeros((0, 3, 8, 8), np.float32), "no samples"),
        (np.full((4, 3, 8, 8), np.nan, np.float32), "NaN values"),
    ],
)
def test_bad_calibration_data_is_exit_2(
    tiny_model_path: Path, tmp_path: Path, out_dir: Path, capsys, array, fragment
) -> None:
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=array)
    for flag in ("--calib", "--eval"):
        code, line = _main(capsys, "opt", tiny_model_path, out_dir / "out.onnx", flag, calib)
        assert code == 2, line
        assert "calib.npz" in line and fragment in line
        assert list(out_dir.iterdir()) == []


def test_int64_calibration_data_converts_with_a_warning(
    tiny_model_path: Path, tmp_path: Path, out_dir: Path, capsys
) -> None:
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.ones((4, 3, 8, 8), np.int64))
    code, err = _main(capsys, "opt", tiny_model_path, out_dir / "out.onnx", "--calib", calib)
    assert code == 0
    assert "converted from int64 to float32" in err


@pytest.mark.parametrize(
    "args",
    [
        ["compare", "A", "B", "--samples", "-5"],
        ["compare", "A", "B", "--samples", "0"],
        ["compare", "A", "B", "--samples", "many"],
        ["bench", "A", "--runs", "0"],
        ["bench", "A", "--warmup", "-1"],
        ["bench", "A", "--threads", "0"],
        ["bench", "A", "--threads", "1e9"],
    ],
)
def test_cli_numbers_are_validated(tiny_model_path: Path, capsys, args: list[str]) -> None:
    args = [str(tiny_model_path) if a in ("A", "B") else a for a in args]
    code, line = _main(capsys, *args)
    assert code == 2
    assert "argument --" in line and ("range" in line or "not an integer" in line)


@pytest.mark.parametrize(
    ("pipeline", "fragment"),
    [
        ("prune-channels{ratio=1.5}", "[0, 1)"),
        ("prune-channels{ratio=-1}", "[0, 1)"),
        ("prune-channels{ratio=nan}", "not a finite number"),
        ("prune-channels{ratio=inf}", "not a finite number"),
    ],
)
def test_out_of_range_options_are_exit_2_before_any_work(
    tiny_model_path: Path, out_dir: Path, capsys, pipeline: str, fragment: str
) -> None:
    code, line = _main(capsys, "opt", tiny_model_path, out_dir / "out.onnx", "-p", pipeline)
    assert code == 2 and fragment in line
    assert list(out_dir.iterdir()) == []

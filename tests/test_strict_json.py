"""Reports and --json outputs are strict JSON: no NaN/Infinity tokens, ever."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import run_cli, strict_loads

from nnopt_graph.report import strict_json

DIGITS = "models/digits/digits_cnn.onnx"
HELDOUT = "models/digits/digits_heldout.npz"


def test_strict_json_turns_non_finite_into_null():
    text = strict_json({"a": math.inf, "b": [math.nan, -math.inf, 1.5], "c": np.float32(2.0)})
    assert strict_loads(text) == {"a": None, "b": [None, None, 1.5], "c": 2.0}


def test_strict_parser_rejects_infinity():
    with pytest.raises(ValueError, match="not strict JSON"):
        strict_loads('{"a": Infinity}')


def test_compare_json_of_identical_models_is_strict():
    # Identical outputs have an infinite SQNR: it must come out as null with a note.
    proc = run_cli("compare", DIGITS, DIGITS, "--calib", HELDOUT, "--json")
    assert proc.returncode == 0, proc.stderr
    data = strict_loads(proc.stdout)
    sqnr = data["per_output"]["logits"]["sqnr"]
    assert sqnr["min"] is None and "note" in sqnr


def test_inspect_and_bench_json_are_strict(tmp_path):
    proc = run_cli("inspect", DIGITS, "--json")
    assert proc.returncode == 0, proc.stderr
    strict_loads(proc.stdout)
    out = tmp_path / "b.json"
    proc = run_cli("bench", DIGITS, "--runs", "3", "--warmup", "1", "--json", out)
    assert proc.returncode == 0, proc.stderr
    strict_loads(out.read_text())


def test_lossy_report_with_exact_outputs_is_strict(tmp_path):
    report = tmp_path / "r.json"
    proc = run_cli(
        "opt",
        DIGITS,
        tmp_path / "o.onnx",
        "-p",
        "sparsify{pattern=2:4}",
        "--calib",
        HELDOUT,
        "--report",
        report,
    )
    assert proc.returncode == 0, proc.stderr
    strict_loads(report.read_text())

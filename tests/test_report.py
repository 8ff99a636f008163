"""The report: contract keys in JSON, charts and tables in HTML, and the terminal summary."""

from __future__ import annotations

import json

from conftest import run_cli

DIGITS = "models/digits/digits_cnn.onnx"
HELDOUT = "models/digits/digits_heldout.npz"


def test_json_report_has_contract_keys(tmp_path):
    proc = run_cli(
        "opt",
        DIGITS,
        str(tmp_path / "o.onnx"),
        "--calib",
        HELDOUT,
        "--report",
        str(tmp_path / "r.json"),
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert {"input", "output", "passes", "fidelity", "guard"} <= set(report)
    for key in ("size_bytes", "params", "nodes", "flops"):
        assert isinstance(report["output"][key], int), key
    assert report["output"]["nodes"] < report["input"]["nodes"]
    assert report["output"]["flops"] == report["input"]["flops"] > 0
    for entry in report["passes"]:
        assert {"name", "options", "modified", "stats", "seconds", "fidelity"} <= set(entry)
    assert report["fidelity"]["equal"] is True and report["fidelity"]["worst"]["rel_l2"] < 1e-5
    assert report["fidelity"]["samples"] == 360
    assert "logits" in report["fidelity"]["per_output"]
    assert report["guard"]["expr"] is None and report["guard"]["passed"] is None
    assert "lossless" in report["guard"]["verdict"]
    assert (
        "nnopt-graph" in proc.stdout
        and "verified: equal to the input on 360 samples" in proc.stdout
    )


def test_html_report_has_charts_and_pass_table(tmp_path):
    proc = run_cli("opt", DIGITS, str(tmp_path / "o.onnx"), "--report", str(tmp_path / "r.html"))
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "r.html").read_text()
    assert text.count("<svg") >= 2 and "seconds per pass" in text and "fold-batchnorm" in text


def test_report_folder_missing_is_bad_input(tmp_path):
    proc = run_cli(
        "opt", DIGITS, str(tmp_path / "o.onnx"), "--report", str(tmp_path / "nope" / "r.json")
    )
    assert proc.returncode == 2 and not (tmp_path / "o.onnx").exists()


def test_list_passes_shows_every_pass_and_preset():
    from nnopt_graph.pipeline.registry import PRESETS, registered_passes

    proc = run_cli("list-passes")
    assert proc.returncode == 0, proc.stderr
    for name, cls in registered_passes().items():
        if name.startswith("test-"):
            continue
        assert f"  {name} " in proc.stdout and cls.summary() in proc.stdout
    for name in PRESETS:
        assert f"  {name} = " in proc.stdout

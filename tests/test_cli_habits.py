"""CLI habits: usage on a bare command, suggestions, bench exit codes, file modes."""

from __future__ import annotations

import json
import os
import stat

from conftest import run_cli

DIGITS = "models/digits/digits_cnn.onnx"


def test_bare_command_prints_usage_and_exits_2():
    proc = run_cli()
    assert proc.returncode == 2
    assert (
        proc.stderr.startswith("usage: nnopt-graph")
        and "opt" in proc.stderr
        and "compare" in proc.stderr
    )


def test_unknown_print_ir_after_name_suggests(tmp_path):
    proc = run_cli("opt", DIGITS, tmp_path / "o.onnx", "--print-ir-after", "dedupe")
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == "nnopt-graph: error: --print-ir-after: unknown pass 'dedupe'; did you mean 'dedup'?"
    )
    assert not (tmp_path / "o.onnx").exists()


def test_bench_without_any_available_ep_exits_1():
    proc = run_cli("bench", DIGITS, "--ep", "cuda", "--runs", "1", "--warmup", "0")
    assert proc.returncode == 1
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "nnopt-graph: error: none of the requested execution providers (cuda) is available"
        )
    )


def test_bench_throughput_is_from_the_median(tmp_path):
    out = tmp_path / "b.json"
    proc = run_cli("bench", DIGITS, "--runs", "5", "--warmup", "1", "--json", out)
    assert proc.returncode == 0, proc.stderr
    (result,) = json.loads(out.read_text())["results"]
    assert (
        abs(result["throughput_per_s"] - 1e3 / result["latency_ms"]["p50"])
        < 1e-6 * result["throughput_per_s"]
    )


def test_report_file_has_the_users_umask(tmp_path):
    report = tmp_path / "r.json"
    proc = run_cli("opt", DIGITS, tmp_path / "o.onnx", "--report", report)
    assert proc.returncode == 0, proc.stderr
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(report.stat().st_mode) == 0o666 & ~mask


def test_unknown_pass_and_option_names_suggest(tmp_path):
    proc = run_cli("opt", DIGITS, tmp_path / "o.onnx", "-p", "dedupe")
    assert proc.returncode == 2 and "unknown pass 'dedupe'; did you mean 'dedup'?" in proc.stderr
    proc = run_cli("opt", DIGITS, tmp_path / "o.onnx", "-p", "prune-channels{ration=0.2}")
    assert proc.returncode == 2 and "no option 'ration'; did you mean 'ratio'?" in proc.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_unknown_flag_suggests(tmp_path):
    proc = run_cli("opt", DIGITS, tmp_path / "o.onnx", "--tagret", "cpu")
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == "nnopt-graph: error: unrecognized arguments: --tagret cpu; did you mean '--target'?"
    )
    assert not (tmp_path / "o.onnx").exists()

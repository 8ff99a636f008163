"""bench: interleaved latency on the CPU EP; unavailable EPs are reported, not replaced."""

from __future__ import annotations

import json

from conftest import run_cli

from nnopt_graph.runtime.bench import benchmark
from nnopt_graph.runtime.session import available_eps

DIGITS = "models/digits/digits_cnn.onnx"


def test_benchmark_cpu_and_missing_ep(tiny_model_path):
    results = benchmark([DIGITS, tiny_model_path], ["cpu", "tensorrt"], runs=5, warmup=1)
    cpu = [r for r in results if r.ep == "cpu"]
    assert [r.available for r in cpu] == [True, True]
    for r in cpu:
        assert r.runs == 5 and 0 < r.latency_ms["min"] <= r.latency_ms["p50"] <= r.latency_ms["max"]
        assert r.throughput_per_s > 0 and r.load_s > 0
    assert cpu[0].ratio_vs_first == {"min": 1.0, "median": 1.0, "max": 1.0}
    trt = [r for r in results if r.ep == "tensorrt"]
    if "tensorrt" not in available_eps():
        assert all(not r.available and "not available" in r.note for r in trt)
        assert all(r.latency_ms == {} for r in trt)


def test_bench_cli_json(tmp_path):
    out = tmp_path / "b.json"
    proc = run_cli("bench", DIGITS, DIGITS, "--runs", "3", "--warmup", "1", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["runs"] == 3 and len(data["results"]) == 2


def test_bench_cli_bad_ep():
    proc = run_cli("bench", DIGITS, "--ep", "cpu,tpu")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "nnopt-graph: error: unknown execution provider 'tpu' (choose from cpu, cuda, tensorrt)"
    ]

"""inspect: opsets, I/O, op histogram, params, bytes, FLOPs."""

from __future__ import annotations

import json

from conftest import run_cli

from nnopt_graph.analysis.stats import summarize

DIGITS = "models/digits/digits_cnn.onnx"


def test_inspect_json_digits():
    proc = run_cli("inspect", DIGITS, "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["opsets"][""] == 17
    assert [i["name"] for i in info["inputs"]] == ["input"]
    assert info["op_histogram"]["Conv"] == 4 and info["op_histogram"]["BatchNormalization"] == 4
    # 4 convs (3x3) on 8x8 then 4x4 maps plus two Gemms, batch 1:
    macs = (
        8 * 8 * 16 * 9 * 1
        + 8 * 8 * 32 * 9 * 16
        + 4 * 4 * 64 * 9 * 32
        + 4 * 4 * 64 * 9 * 64
        + 64 * 64
        + 64 * 10
    )
    assert info["macs"] == macs and info["flops"] == 2 * macs
    import numpy as np
    import onnx

    model = onnx.load(DIGITS)
    assert info["params"] == sum(int(np.prod(t.dims)) for t in model.graph.initializer)


def test_flops_scale_with_input_shape():
    one = summarize(DIGITS, {"input": [1, 1, 8, 8]})
    eight = summarize(DIGITS, {"input": [8, 1, 8, 8]})
    assert eight.macs == 8 * one.macs


def test_inspect_text(tiny_model_path):
    proc = run_cli("inspect", str(tiny_model_path))
    assert proc.returncode == 0 and "Conv" in proc.stdout and "FLOPs" in proc.stdout

"""compare: fidelity metrics against an independent numpy computation."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
from conftest import run_cli
from onnx import numpy_helper

DIGITS = "models/digits/digits_cnn.onnx"
HELDOUT = "models/digits/digits_heldout.npz"


def test_compare_identical_models():
    proc = run_cli("compare", DIGITS, DIGITS, "--calib", HELDOUT, "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    out = data["per_output"]["logits"]
    assert data["equal"] is True and data["verdict"]["same"] is True
    assert (
        out["cosine"]["min"] == 1.0 and out["max_abs"]["max"] == 0.0 and out["rel_l2"]["max"] == 0.0
    )
    assert len(out["cosine"]["values"]) == 360


def _perturbed(tmp_path):
    model = onnx.load(DIGITS)
    last = [i for i in model.graph.initializer if len(i.dims) == 2][-1]
    w = numpy_helper.to_array(last).copy()
    w += np.random.default_rng(0).normal(0, 0.05, w.shape).astype(np.float32)
    last.CopyFrom(numpy_helper.from_array(w, last.name))
    perturbed = tmp_path / "p.onnx"
    onnx.save(model, perturbed)
    return perturbed


def test_compare_perturbed_copy_matches_numpy_per_sample(tmp_path):
    perturbed = _perturbed(tmp_path)
    proc = run_cli("compare", DIGITS, str(perturbed), "--calib", HELDOUT, "--json")
    assert proc.returncode == 1, proc.stderr  # a gate, like diff: they differ
    data = json.loads(proc.stdout)
    assert data["equal"] is False and data["verdict"]["same"] is False
    got = data["per_output"]["logits"]

    import onnxruntime as ort

    x = np.load(HELDOUT)["input"]
    ref = np.concatenate(
        [ort.InferenceSession(DIGITS).run(None, {"input": x[i : i + 1]})[0] for i in range(len(x))]
    )
    cand = np.concatenate(
        [
            ort.InferenceSession(str(perturbed)).run(None, {"input": x[i : i + 1]})[0]
            for i in range(len(x))
        ]
    )
    r, c = ref.astype(np.float64), cand.astype(np.float64)
    cosines = np.sum(r * c, 1) / (np.linalg.norm(r, axis=1) * np.linalg.norm(c, axis=1))
    rel = np.linalg.norm(r - c, axis=1) / np.linalg.norm(r, axis=1)
    assert math.isclose(got["cosine"]["min"], cosines.min(), rel_tol=1e-9)
    assert got["cosine"]["worst_index"] == int(np.argmin(cosines))
    assert math.isclose(got["cosine"]["median"], float(np.median(cosines)), rel_tol=1e-6)
    assert math.isclose(got["rel_l2"]["max"], rel.max(), rel_tol=1e-6)
    assert math.isclose(got["max_abs"]["max"], np.abs(r - c).max(), rel_tol=1e-6)
    sqnr = 10 * np.log10(np.sum(r * r, 1) / np.sum((r - c) ** 2, 1))
    assert math.isclose(got["sqnr"]["min"], sqnr.min(), rel_tol=1e-6)
    assert math.isclose(got["top1"]["mean"], np.mean(ref.argmax(1) == cand.argmax(1)), rel_tol=1e-9)
    assert got["cosine"]["min"] < 1.0


def test_compare_tolerance_gate(tmp_path):
    perturbed = _perturbed(tmp_path)
    loose = run_cli(
        "compare", DIGITS, str(perturbed), "--calib", HELDOUT, "--tolerance", "cosine.min>=0.5"
    )
    assert loose.returncode == 0, loose.stdout + loose.stderr
    assert "same under cosine.min>=0.5" in loose.stdout
    tight = run_cli(
        "compare", DIGITS, str(perturbed), "--calib", HELDOUT, "--tolerance", "rel_l2.max<=1e-4"
    )
    assert tight.returncode == 1 and "DIFFERENT under rel_l2.max<=1e-4" in tight.stdout


def test_compare_bad_tolerance_is_usage_error():
    proc = run_cli("compare", DIGITS, DIGITS, "--tolerance", "cosine>=wat")
    assert (
        proc.returncode == 2 and proc.stderr.count("\n") == 1 and "bad --guard term" in proc.stderr
    )

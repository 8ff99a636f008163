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
    out = json.loads(proc.stdout)["per_output"]["logits"]
    assert out["cosine"] == 1.0 and out["max_abs"] == 0.0 and out["rel_l2"] == 0.0


def test_compare_perturbed_copy_matches_numpy(tmp_path):
    model = onnx.load(DIGITS)
    last = [i for i in model.graph.initializer if len(i.dims) == 2][-1]
    w = numpy_helper.to_array(last).copy()
    w += np.random.default_rng(0).normal(0, 0.05, w.shape).astype(np.float32)
    last.CopyFrom(numpy_helper.from_array(w, last.name))
    perturbed = tmp_path / "p.onnx"
    onnx.save(model, perturbed)
    proc = run_cli("compare", DIGITS, str(perturbed), "--calib", HELDOUT, "--json")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)["per_output"]["logits"]

    import onnxruntime as ort

    x = np.load(HELDOUT)["input"]
    ref = np.concatenate([ort.InferenceSession(DIGITS).run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])
    cand = np.concatenate([ort.InferenceSession(str(perturbed)).run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])
    r, c = ref.astype(np.float64).ravel(), cand.astype(np.float64).ravel()
    cosine = r @ c / (np.linalg.norm(r) * np.linalg.norm(c))
    err = r - c
    assert math.isclose(got["cosine"], cosine, rel_tol=1e-9)
    assert math.isclose(got["max_abs"], np.abs(err).max(), rel_tol=1e-6)
    assert math.isclose(got["rel_l2"], np.linalg.norm(err) / np.linalg.norm(r), rel_tol=1e-6)
    assert math.isclose(got["sqnr"], 10 * np.log10((r @ r) / (err @ err)), rel_tol=1e-6)
    assert math.isclose(got["top1"], np.mean(ref.argmax(1) == cand.argmax(1)), rel_tol=1e-9)
    assert got["cosine"] < 1.0

"""The digits CNN and its data, which most search tests search (paths only)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "models" / "digits"
MODEL = DIGITS / "digits_cnn.onnx"
CALIB = DIGITS / "digits_calib.npz"
HELDOUT = DIGITS / "digits_heldout.npz"

"""Lossless cleanup: folding, dead code, no-ops, order, shapes, structurally zero channels."""

"""Quantization: int8 (QDQ placement, calibration, fusion check, back-off), fp16, int4."""

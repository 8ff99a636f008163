"""ONNX Runtime side: sessions per execution provider, input data, fidelity metrics."""

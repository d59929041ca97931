"""Offline export: PyTorch model → ONNX (→ TensorRT) → parity check → a new version in a Triton repository."""

"""Emission targets: make a fused model runnable by a given runtime (``native``: plain ONNX)."""

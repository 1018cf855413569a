"""Torch implementations of the standard ONNX ops used by exported LLM graphs.

Importing this package registers every op with :mod:`gdnc.opset.registry`.
"""

from __future__ import annotations

from gdnc.opset.onnx_ops import control_flow, elementwise, indexing, nn, reduce, shape_ops
from gdnc.opset.onnx_ops.dtypes import onnx_elem_type, torch_dtype

__all__ = [
    "control_flow",
    "elementwise",
    "indexing",
    "nn",
    "onnx_elem_type",
    "reduce",
    "shape_ops",
    "torch_dtype",
]

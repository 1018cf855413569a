"""ONNX ``TensorProto`` element types <-> torch dtypes, and attribute tensors -> torch."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, numpy_helper

from gdnc.errors import ShapeError

_PAIRS: tuple[tuple[int, torch.dtype], ...] = (
    (TensorProto.FLOAT, torch.float32),
    (TensorProto.UINT8, torch.uint8),
    (TensorProto.INT8, torch.int8),
    (TensorProto.UINT16, torch.uint16),
    (TensorProto.INT16, torch.int16),
    (TensorProto.INT32, torch.int32),
    (TensorProto.INT64, torch.int64),
    (TensorProto.BOOL, torch.bool),
    (TensorProto.FLOAT16, torch.float16),
    (TensorProto.DOUBLE, torch.float64),
    (TensorProto.UINT32, torch.uint32),
    (TensorProto.UINT64, torch.uint64),
    (TensorProto.COMPLEX64, torch.complex64),
    (TensorProto.COMPLEX128, torch.complex128),
    (TensorProto.BFLOAT16, torch.bfloat16),
    (TensorProto.FLOAT8E4M3FN, torch.float8_e4m3fn),
    (TensorProto.FLOAT8E4M3FNUZ, torch.float8_e4m3fnuz),
    (TensorProto.FLOAT8E5M2, torch.float8_e5m2),
    (TensorProto.FLOAT8E5M2FNUZ, torch.float8_e5m2fnuz),
)
_TO_TORCH = dict(_PAIRS)
_TO_ONNX = {dtype: elem for elem, dtype in _PAIRS}


def torch_dtype(onnx_elem_type: int) -> torch.dtype:
    """The torch dtype of an ONNX element type; ShapeError if torch has none."""
    try:
        return _TO_TORCH[int(onnx_elem_type)]
    except KeyError:
        raise ShapeError(
            f"ONNX element type {onnx_elem_type} ({_elem_name(onnx_elem_type)}) has no torch dtype"
        ) from None


def onnx_elem_type(dtype: torch.dtype) -> int:
    """The ONNX element type of a torch dtype; ShapeError if ONNX has none."""
    try:
        return _TO_ONNX[dtype]
    except KeyError:
        raise ShapeError(f"torch dtype {dtype} has no ONNX element type") from None


def _elem_name(elem: int) -> str:
    try:
        return TensorProto.DataType.Name(elem)
    except ValueError:
        return "unknown"


def attr_tensor(value: Any, device: torch.device | str | None = None) -> torch.Tensor:
    """A TENSOR attribute (numpy array or ``TensorProto``) as a fresh torch tensor."""
    if isinstance(value, onnx.TensorProto):
        value = numpy_helper.to_array(value)
    return torch.from_numpy(np.array(value, copy=True)).to(device)

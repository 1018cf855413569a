"""ONNX ``TensorProto`` element types <-> torch dtypes, numpy arrays <-> torch tensors (the
bfloat16 / float8 types too), and attribute tensors -> torch."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

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
# torch dtypes numpy has no type of its own for: numpy holds them as ml_dtypes' types (what
# onnx's numpy_helper returns); torch and numpy exchange them as ints of their bits
_BITS = {torch.bfloat16: torch.int16, torch.float8_e4m3fn: torch.int8, torch.float8_e4m3fnuz: torch.int8,
         torch.float8_e5m2: torch.int8, torch.float8_e5m2fnuz: torch.int8}
_NUMPY = {dtype: np.dtype(helper.tensor_dtype_to_np_dtype(_TO_ONNX[dtype])) for dtype in _BITS}
_FROM_NUMPY = {np_dtype: dtype for dtype, np_dtype in _NUMPY.items()}
_BITS_NUMPY = {torch.int16: np.int16, torch.int8: np.int8}


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


def tensor_from_array(array: Any, raw_as: torch.dtype | None = None) -> torch.Tensor:
    """``array`` as a CPU tensor of the same shape (rank 0 stays rank 0) and dtype, sharing its
    memory when it is C-contiguous and writable (else from a copy). ml_dtypes' bfloat16 and
    float8 arrays become torch's types; a raw-bytes (void) array becomes ``raw_as`` when its
    items have that dtype's size (how ``np.savez`` stores bfloat16). ShapeError for a dtype
    torch has none of (strings, objects)."""
    array = np.asarray(array)
    if not (array.flags.c_contiguous and array.flags.writeable):
        array = np.array(array, order="C")
    dtype = _FROM_NUMPY.get(array.dtype)
    if dtype is None and raw_as is not None and raw_as in _BITS and array.dtype.kind == "V" \
            and array.dtype.itemsize == raw_as.itemsize:
        dtype = raw_as
    if dtype is not None:
        return torch.from_numpy(array.view(_BITS_NUMPY[_BITS[dtype]])).view(dtype)
    try:
        return torch.from_numpy(array)
    except TypeError:
        raise ShapeError(f"numpy dtype {array.dtype} has no torch dtype") from None


def array_from_tensor(tensor: torch.Tensor) -> np.ndarray:
    """``tensor`` as a numpy array on the host (bfloat16 / float8 as ml_dtypes' types)."""
    tensor = tensor.detach().cpu()
    if tensor.dtype not in _BITS:
        return tensor.numpy()
    return tensor.view(_BITS[tensor.dtype]).numpy().view(_NUMPY[tensor.dtype])


def attr_tensor(value: Any, device: torch.device | str | None = None) -> torch.Tensor:
    """A TENSOR attribute (numpy array or ``TensorProto``) as a fresh torch tensor."""
    if isinstance(value, onnx.TensorProto):
        value = numpy_helper.to_array(value)
    return tensor_from_array(np.array(value, copy=True)).to(device)

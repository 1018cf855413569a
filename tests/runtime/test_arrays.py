"""numpy arrays <-> torch tensors at the runtime's edges (initializers, feeds, outputs): shape
and rank kept (rank 0 included), bfloat16 / float8 carried bit for bit, strings refused; and
the sizes Range and OneHot take from values, refused when they are not counts."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gdnc.errors import ShapeError
from gdnc.opset.onnx_ops.dtypes import array_from_tensor, tensor_from_array
from gdnc.opset.onnx_ops.shape_ops import range_length
from gdnc.opset.registry import OpContext, lookup

EXTENSION = {ml_dtypes.bfloat16: torch.bfloat16, ml_dtypes.float8_e4m3fn: torch.float8_e4m3fn,
             ml_dtypes.float8_e5m2: torch.float8_e5m2}
shapes = st.lists(st.integers(0, 4), min_size=0, max_size=4).map(tuple)


@settings(max_examples=60, deadline=None)
@given(shape=shapes, dtype=st.sampled_from([np.float32, np.int64, np.bool_, *EXTENSION]),
       fortran=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_arrays_cross_to_torch_and_back_bit_for_bit(shape, dtype, fortran, seed) -> None:
    values = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    array = np.array(values, order="F") if fortran else values
    array.flags.writeable = not fortran  # read-only and non-contiguous arrays are copied
    tensor = tensor_from_array(array)
    want = EXTENSION[dtype] if dtype in EXTENSION else torch.from_numpy(np.zeros(0, dtype)).dtype
    assert tuple(tensor.shape) == shape and tensor.dtype == want
    back = array_from_tensor(tensor)
    assert back.dtype == np.dtype(dtype) and back.shape == shape
    assert back.tobytes() == np.ascontiguousarray(values).tobytes()


def test_rank0_stays_rank0() -> None:
    """np.ascontiguousarray makes a 0-d array 1-d: a model's scalar input would not fit."""
    value = np.float32(np.random.default_rng().standard_normal())
    tensor = tensor_from_array(np.array(value))
    assert tensor.dim() == 0 and tensor.item() == value


def test_raw_bytes_are_read_as_the_dtype_asked_for() -> None:
    """np.savez writes bfloat16 as 2-byte void items: read back, they are the bits of ``raw_as``."""
    bf16 = np.random.default_rng().standard_normal(5).astype(ml_dtypes.bfloat16)
    raw = bf16.view("V2")
    tensor = tensor_from_array(raw, raw_as=torch.bfloat16)
    assert torch.equal(tensor.float(), torch.from_numpy(bf16.astype(np.float32)))
    with pytest.raises(ShapeError, match="numpy dtype |V2 has no torch dtype"):
        tensor_from_array(raw, raw_as=torch.float32)  # not that dtype's size: refused


@pytest.mark.parametrize("array", [np.array(["a", "b"]), np.array([b"a"], dtype=object)])
def test_strings_and_objects_are_refused(array) -> None:
    with pytest.raises(ShapeError, match="has no torch dtype"):
        tensor_from_array(array)


@settings(max_examples=80, deadline=None)
@given(start=st.floats(-1e3, 1e3), limit=st.floats(-1e3, 1e3),
       delta=st.floats(0.01, 50) | st.floats(-50, -0.01))
def test_range_length_counts_as_numpy_does(start, limit, delta) -> None:
    assert range_length(start, limit, delta) == len(np.arange(start, limit, delta))


@settings(max_examples=40, deadline=None)
@given(start=st.integers(-10**6, 10**6), limit=st.integers(-10**6, 10**6),
       delta=st.integers(-999, 999).filter(bool))
def test_range_length_of_integers_is_exact(start, limit, delta) -> None:
    assert range_length(start, limit, delta) == len(range(start, limit, delta))


@pytest.mark.parametrize(("bounds", "match"), [
    ((0.0, 5.0, 0.0), "delta is 0"), ((3, 3, 0), "delta is 0"),
    ((0.0, math.inf, 1.0), "no finite length"), ((-math.inf, 0.0, 1.0), "no finite length"),
    ((0.0, 1.0, math.nan), "no finite length")])
def test_range_sizes_that_are_not_counts_are_refused(bounds, match) -> None:
    with pytest.raises(ShapeError, match=match):
        range_length(*bounds)


@pytest.mark.parametrize("depth", [math.inf, -math.inf, math.nan, -3.0])
def test_one_hot_depth_must_be_a_count(depth) -> None:
    ctx = OpContext(op_type="OneHot", domain="", attrs={}, opset=11, num_outputs=1)
    indices, values = torch.tensor([0, 1]), torch.tensor([0.0, 1.0])
    with pytest.raises(ShapeError, match=f"depth {depth} is not a finite count"):
        lookup("", "OneHot", 11)(ctx, [indices, torch.tensor(depth), values])

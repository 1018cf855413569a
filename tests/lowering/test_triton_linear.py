"""The GPU decode weight kernel (``gdnc.lowering.quant.triton_linear``) against fp64 math on gguf's
own dequantized values, into poisoned and strided outputs; ``packed.linear`` takes it on CUDA
for few rows of x only. On a GPU, or on the CPU through Triton's interpreter at small shapes."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gdnc.lowering.quant.packed import PackedWeight, linear
from tests.lowering.test_quant import assert_matmul_close, random_bytes, reference

GPU = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None or not (GPU or os.environ.get("TRITON_INTERPRET") == "1"),
    reason="needs Triton on a GPU or its interpreter")
DEVICE = "cuda" if GPU else "cpu"


@pytest.mark.parametrize("qtype", ["F16", "BF16"])
@settings(max_examples=25 if GPU else 8, deadline=None)
@given(st.integers(1, 8), st.integers(1, 40), st.integers(1, 300), st.integers(0, 5), st.data())
def test_rows_match_fp64_into_poisoned_strided_outputs(qtype: str, M: int, N: int, K: int, pad: int,
                                                      data: st.DataObject) -> None:
    from gdnc.lowering.quant import triton_linear

    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    raw = random_bytes(rng, qtype, (N, K), sane=True)
    x = torch.from_numpy(rng.standard_normal((M, K)).astype(np.float32)).to(DEVICE)
    wide = torch.full((M, N + pad), float("nan"), device=DEVICE)  # out's rows N + pad apart
    out = wide[:, :N]
    triton_linear.linear_rows(x, torch.from_numpy(raw).to(DEVICE), qtype, out)
    assert_matmul_close(out.cpu(), x.cpu(), reference(raw, qtype))
    assert wide[:, N:].isnan().all()  # nothing written past the columns


@pytest.mark.skipif(not GPU, reason="needs a CUDA device")
@pytest.mark.gpu
@pytest.mark.parametrize("qtype", ["F16", "BF16"])
def test_linear_takes_the_kernel_on_cuda_for_few_rows(qtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from gdnc.lowering.quant import triton_linear

    rng = np.random.default_rng()
    raw = random_bytes(rng, qtype, (96, 256), sane=True)
    w = PackedWeight(torch.from_numpy(raw).cuda(), qtype, (96, 256))
    calls = []
    real = triton_linear.linear_rows
    monkeypatch.setattr(triton_linear, "linear_rows", lambda *a: calls.append(a[0].shape[0]) or real(*a))
    for rows in (1, triton_linear.MAX_ROWS, triton_linear.MAX_ROWS + 1):
        x = torch.randn(rows, 256, device="cuda")
        assert_matmul_close(linear(x, w).cpu(), x.cpu(), reference(raw, qtype))
    assert calls == [1, triton_linear.MAX_ROWS]

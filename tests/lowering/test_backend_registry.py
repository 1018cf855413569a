"""The backend registry: which backend takes which call, why one refuses, and "auto"."""

from __future__ import annotations

import importlib.util
import random

import pytest
import torch

from gdnc.errors import OpArgumentError
from gdnc.lowering.gated_delta_net import native_cpu
from gdnc.lowering.gated_delta_net.backends import (
    AUTO_ORDER,
    BACKENDS,
    KERNEL_BACKENDS,
    KERNEL_DTYPES,
    GdnCall,
    first_accepting,
    select_backend,
)

OPERANDS = ("q", "k", "v", "g", "beta", "state_pool")
SEEDS = range(6)
HAS_TRITON = importlib.util.find_spec("triton") is not None


def _call(seed: int, dtype: torch.dtype = torch.float32, device: str = "cpu") -> GdnCall:
    """A random call (T tokens, H heads, K = V dims) in one dtype on one device."""
    gen = torch.Generator().manual_seed(seed)
    T, H, K, P = (int(x) for x in torch.randint(1, 6, (4,), generator=gen))
    shapes = {"q": (T, H, K), "k": (T, H, K), "v": (T, H, K), "g": (T, H), "beta": (T, H),
              "state_pool": (P, H, K, K)}
    return GdnCall({name: torch.rand(*shape, generator=gen).to(device, dtype)
                    for name, shape in shapes.items()})


def _with(call: GdnCall, name: str, x: torch.Tensor) -> GdnCall:
    return GdnCall({**call.operands, name: x})


def test_registry_names_and_order():
    assert list(BACKENDS) == ["reference", "cpu", "native", "triton"]
    assert set(AUTO_ORDER) == set(BACKENDS) and AUTO_ORDER[-1] == "cpu"
    assert AUTO_ORDER.index("native") < AUTO_ORDER.index("cpu")
    assert all(BACKENDS[name].kernels and not BACKENDS[name].oracle for name in KERNEL_BACKENDS)
    assert BACKENDS["reference"].oracle
    assert BACKENDS["cpu"].chunked_min_tokens == 20 and BACKENDS["triton"].chunked_min_tokens == 32


def test_triton_refuses_cpu_tensors_without_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    reason = BACKENDS["triton"].verify(_call(0))
    assert reason is not None and reason.startswith("backend 'triton' needs CUDA tensors, got cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    missing = "backend 'triton' is not available: No module named 'triton'"
    assert BACKENDS["triton"].verify(_call(0)) == (None if HAS_TRITON else missing)


def test_triton_not_installed_is_a_reason(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "triton" else real(name, *a))
    missing = "backend 'triton' is not available: No module named 'triton'"
    assert BACKENDS["triton"].verify(_call(1)) == missing
    with pytest.raises(OpArgumentError, match="^gated_delta_net: backend 'triton' is not available"):
        select_backend("triton", _call(1))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_kernels_refuse_an_unsupported_dtype_naming_the_operand(seed, backend, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    rng = random.Random(seed)
    call = _call(seed, rng.choice(KERNEL_DTYPES))
    name, dtype = rng.choice(OPERANDS), rng.choice([torch.float64, torch.int32, torch.int64])
    bad = _with(call, name, call.operands[name].to(dtype))
    want = f"{name}: dtype {dtype} is not supported by backend {backend!r} (fp32, bf16, fp16; " \
           "use backend='reference' for fp64)"
    assert BACKENDS[backend].verify(bad) == want
    with pytest.raises(OpArgumentError) as err:
        select_backend(backend, bad)
    assert str(err.value) == f"gated_delta_net: {want}"
    assert BACKENDS["reference"].verify(bad) is None  # the oracle takes any dtype (validate checks floats)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_kernels_refuse_operands_that_require_grad(backend, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    name = random.Random(backend).choice(OPERANDS)
    call = _call(3)
    call.operands[name].requires_grad_()  # type: ignore[union-attr]
    assert BACKENDS[backend].verify(call) == (
        f"{name}: requires grad, but backend {backend!r} has no backward; "
        "call it under torch.no_grad() or torch.inference_mode()")
    with torch.no_grad():
        assert BACKENDS["cpu"].verify(call) is None
    assert BACKENDS["reference"].verify(call) is None
    with pytest.raises(OpArgumentError, match="requires grad"):  # "auto" never hides a kernel's refusal
        select_backend("auto", call)


@pytest.mark.parametrize("seed", SEEDS)
def test_auto_picks_the_cpu_kernels_for_cpu_tensors_and_the_oracle_for_fp64(seed, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # triton could take CPU tensors, cpu comes first
    rng = random.Random(seed)
    call = _call(seed, rng.choice(KERNEL_DTYPES))
    cpu = "cpu" if native_cpu.reason() else "native"  # the C recurrence where it was built
    assert select_backend("auto", call) is BACKENDS[cpu]
    name = rng.choice(("q", "state_pool"))
    fp64 = _with(call, name, call.operands[name].double())
    assert select_backend("auto", fp64) is BACKENDS["reference"]
    monkeypatch.setattr(native_cpu, "_kernel", lambda: "no C compiler found")
    assert select_backend("auto", call) is BACKENDS["cpu"]
    assert BACKENDS["native"].verify(call) == "backend 'native' is not available: no C compiler found"
    other = rng.choice(("k", "v", "g", "beta"))
    refused_dtype = f"{other}: dtype torch.float64 is not supported by backend 'cpu'"
    with pytest.raises(OpArgumentError, match=refused_dtype):
        select_backend("auto", _with(call, other, call.operands[other].double()))
    refused = "no backend takes this call: .*backend 'cpu'.*backend 'triton'"
    with pytest.raises(OpArgumentError, match=refused):
        first_accepting(fp64, KERNEL_BACKENDS)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_picks_triton_for_cuda_tensors():
    call = _call(4, device="cuda")
    assert BACKENDS["cpu"].verify(call) == "backend 'cpu' needs CPU tensors, got cuda:0"
    assert select_backend("auto", call) is BACKENDS["triton"]


def test_unknown_backend_is_refused():
    names = r"\['auto', 'reference', 'cpu', 'native', 'triton'\]"
    with pytest.raises(OpArgumentError, match=rf"backend 'cuda' is not one of {names}"):
        select_backend("cuda", _call(5))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_algorithm_for_splits_at_the_threshold(backend):
    b = BACKENDS[backend]
    lengths = random.Random(backend).sample(range(0, 3 * b.chunked_min_tokens), 20)
    for n in [*lengths, b.chunked_min_tokens - 1, b.chunked_min_tokens]:
        assert b.algorithm_for("auto", n) == ("chunked" if n >= b.chunked_min_tokens else "recurrent")
        assert b.algorithm_for("recurrent", n) == "recurrent"
        assert b.algorithm_for("chunked", n) == "chunked"


def test_kernels_are_imported_on_first_use():
    cpu = BACKENDS["cpu"]
    from gdnc.lowering.gated_delta_net import cpu as cpu_kernels

    assert cpu.kernel("recurrent") is cpu_kernels.run_recurrent
    assert cpu.kernel("chunked") is cpu_kernels.run_chunked

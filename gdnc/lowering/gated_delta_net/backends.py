"""The GatedDeltaNet backends, one record each: which calls it takes and its kernels.

"reference" is the fp64 oracle (any float dtype, any device, follows autograd); "cpu" the
vectorised torch kernels (CPU tensors); "native" the recurrence in C (``native_cpu.py``; CPU
tensors, where the machine's compiler built it; fp32 launches, others and chunked prefill through
"cpu"'s kernels); "triton" the GPU kernels (CUDA tensors, or CPU ones under TRITON_INTERPRET=1).
The kernel backends take fp32/bf16/fp16 tensors that need no grad and have a recurrent and a
chunked algorithm (``run(launch: GdnLaunch) -> None``, imported on first use).
``select_backend(name, call)`` resolves a name ("auto": the first backend of
AUTO_ORDER whose ``auto_for`` claims the call) or raises OpArgumentError with the reason the
backend refuses.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import cast

import torch

from gdnc.errors import OpArgumentError
from gdnc.lowering.gated_delta_net.launch import GdnLaunch

Kernel = Callable[[GdnLaunch], None]
ALGORITHMS = ("recurrent", "chunked")
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_SHORT_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
NATIVE_CHUNKED_MIN = 128  # benchmarks/RESULTS.md, "CPU": native recurrent vs torch chunked


@dataclass(frozen=True)
class GdnCall:
    """What a backend is asked to take: the float operands of one call by name (q, k, v, g,
    beta, state_pool, in that order); the call runs on q's device."""

    operands: Mapping[str, torch.Tensor]

    @property
    def device(self) -> torch.device:
        return next(iter(self.operands.values())).device


def _any_device(name: str, device: torch.device) -> str | None:
    return None


def _fp64_call(call: GdnCall) -> bool:
    """fp64 calls go to the fp64 oracle: the kernels compute in fp32."""
    return torch.float64 in (call.operands["q"].dtype, call.operands["state_pool"].dtype)


def _cuda_call(call: GdnCall) -> bool:
    return call.device.type == "cuda"


def _every_call(call: GdnCall) -> bool:
    return True


def _cpu_device(name: str, device: torch.device) -> str | None:
    return None if device.type == "cpu" else f"backend {name!r} needs CPU tensors, got {device}"


def _native_device(name: str, device: torch.device) -> str | None:
    reason = _cpu_device(name, device)
    if reason is None:
        from gdnc.lowering.gated_delta_net import native_cpu

        why = native_cpu.reason()
        reason = None if why is None else f"backend {name!r} is not available: {why}"
    return reason


def _native_cpu_call(call: GdnCall) -> bool:
    return _native_device("native", call.device) is None


def _cuda_device(name: str, device: torch.device) -> str | None:
    if device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return None
    return (f"backend {name!r} needs CUDA tensors, got {device} (set TRITON_INTERPRET=1 to run "
            "the kernels on the CPU through Triton's interpreter)")


@dataclass(frozen=True)
class Backend:
    """One backend. ``kernels``: algorithm -> (module of this package, function); empty for
    the oracle, which runs whole calls through ``gated_delta_net_reference``. ``dtypes``: the
    operand dtypes it takes (None: any). ``chunked_min_tokens``: with ``algorithm="auto"``,
    sequences at least this long run chunked, shorter ones recurrent (break-even measured, see
    benchmarks/RESULTS.md). ``needs_package``: a module that must be installed. ``auto_for``:
whether ``backend="auto"`` sends a call here (asked in AUTO_ORDER; the backend then verifies
it, so "auto" fails with the reason of the backend the call belongs to)."""

    name: str
    kernels: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    dtypes: tuple[torch.dtype, ...] | None = None
    differentiable: bool = False
    chunked_min_tokens: int = 0
    device_check: Callable[[str, torch.device], str | None] = _any_device
    needs_package: str | None = None
    auto_for: Callable[[GdnCall], bool] = _every_call

    @property
    def oracle(self) -> bool:
        return not self.kernels

    def verify(self, call: GdnCall) -> str | None:
        """None when this backend can take ``call``, else why not (one line)."""
        for name, x in call.operands.items():
            if self.dtypes is not None and x.dtype not in self.dtypes:
                names = ", ".join(_SHORT_DTYPES[d] for d in self.dtypes)
                return (f"{name}: dtype {x.dtype} is not supported by backend {self.name!r} "
                        f"({names}; use backend='reference' for fp64)")
            if not self.differentiable and x.requires_grad and torch.is_grad_enabled():
                return (f"{name}: requires grad, but backend {self.name!r} has no backward; "
                        "call it under torch.no_grad() or torch.inference_mode()")
        reason = self.device_check(self.name, call.device)
        if reason is None and self.needs_package and importlib.util.find_spec(self.needs_package) is None:
            reason = f"backend {self.name!r} is not available: No module named {self.needs_package!r}"
        return reason

    def algorithm_for(self, algorithm: str, length: int) -> str:
        """The algorithm a sequence of ``length`` tokens runs with (``algorithm`` unless "auto")."""
        if algorithm != "auto":
            return algorithm
        return "chunked" if length >= self.chunked_min_tokens else "recurrent"

    def kernel(self, algorithm: str) -> Kernel:
        """The kernel for ``algorithm``, imported now; OpArgumentError when it cannot be."""
        module, function = self.kernels[algorithm]
        try:
            mod = importlib.import_module(f"{__package__}.{module}")
        except ImportError as exc:
            raise OpArgumentError(f"backend {self.name!r} is not available: {exc}") from exc
        return cast(Kernel, getattr(mod, function))


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("reference", differentiable=True, auto_for=_fp64_call),
    Backend("cpu", kernels={"recurrent": ("cpu", "run_recurrent"), "chunked": ("cpu", "run_chunked")},
            dtypes=KERNEL_DTYPES, chunked_min_tokens=20, device_check=_cpu_device),
    Backend("native",
            kernels={"recurrent": ("native_cpu", "run_recurrent"), "chunked": ("cpu", "run_chunked")},
            dtypes=KERNEL_DTYPES, chunked_min_tokens=NATIVE_CHUNKED_MIN, device_check=_native_device,
            auto_for=_native_cpu_call),
    Backend("triton",
            kernels={"recurrent": ("triton_recurrent", "run"), "chunked": ("triton_chunked", "run")},
            dtypes=KERNEL_DTYPES, chunked_min_tokens=32, device_check=_cuda_device,
            needs_package="triton", auto_for=_cuda_call),
)}
# "auto": fp64 to the oracle, CUDA to Triton, CPU to the native kernel where it was built, else torch's
AUTO_ORDER = ("reference", "triton", "native", "cpu")
KERNEL_BACKENDS = ("native", "cpu", "triton")


def first_accepting(call: GdnCall, names: tuple[str, ...] = KERNEL_BACKENDS) -> Backend:
    """The first backend of ``names`` whose ``verify`` passes; OpArgumentError giving every
    backend's reason when none does."""
    reasons = []
    for name in names:
        reason = BACKENDS[name].verify(call)
        if reason is None:
            return BACKENDS[name]
        reasons.append(reason)
    raise OpArgumentError(f"gated_delta_net: no backend takes this call: {'; '.join(reasons)}")


def select_backend(name: str, call: GdnCall) -> Backend:
    """The backend ``name`` ("auto": the first of AUTO_ORDER that claims the call) if it can
    take ``call``; else OpArgumentError: unknown name, or the backend's reason."""
    if name == "auto":
        name = next(n for n in AUTO_ORDER if BACKENDS[n].auto_for(call))
    elif name not in BACKENDS:
        raise OpArgumentError(
            f"gated_delta_net: backend {name!r} is not one of {['auto', *BACKENDS]}")
    reason = BACKENDS[name].verify(call)
    if reason is not None:
        raise OpArgumentError(f"gated_delta_net: {reason}")
    return BACKENDS[name]

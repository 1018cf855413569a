"""The "native" backend's recurrence in C (``native_cpu.py``, ``recurrent.c``): fp32 launches run
in C, on the AVX2 and the portable path alike, against the fp64 reference over the backend
suite's cases (test_backends.py, which also runs "native" with bf16 cases and the poisoning
checks); bf16 launches go to the torch kernel; without the C kernel "auto" takes "cpu"."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from gdnc.lowering.gated_delta_net import cpu, native_cpu
from tests.lowering.test_backends import Case, _check, _inputs, _run, cases

needs_kernel = pytest.mark.skipif(native_cpu.reason() is not None,
                                  reason=f"native kernel unavailable: {native_cpu.reason()}")


def _fp32(c: Case) -> Case:
    return dataclasses.replace(c, bf16_inputs=False, bf16_state=False)


@needs_kernel
@pytest.mark.parametrize("vector", [True, False], ids=["avx2-or-portable", "portable"])
def test_fp32_launches_run_in_c_and_match_the_reference(vector: bool,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def no_torch(launch: object) -> None:
        raise AssertionError("an fp32 launch went to the torch kernel")

    monkeypatch.setattr(cpu, "run_recurrent", no_torch)
    monkeypatch.setattr(native_cpu, "run_recurrent",
                        functools.partial(native_cpu.run_recurrent, vector=vector))

    @settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(case=cases(128))
    def run(case: Case) -> None:
        _check(_fp32(case), "native", "recurrent", "cpu")

    run()


@needs_kernel
def test_bf16_launches_take_the_torch_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    torch_kernel = cpu.run_recurrent

    def spy(launch: object) -> None:
        calls.append(launch)
        torch_kernel(launch)

    monkeypatch.setattr(cpu, "run_recurrent", spy)
    case = Case(H=1, group=2, K=16, V=32, lengths=(3, 0, 2), spare_slots=1, in_slots=(0, 1, -1),
                out_slots=(0, 1, 2), head_map="interleave", layout="kv", kda=False, l2norm=True,
                bf16_inputs=False, bf16_state=True, token_states=False, seed=3)
    _check(case, "native", "recurrent", "cpu")
    assert calls


def test_without_the_c_kernel_auto_takes_torchs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native_cpu, "_kernel", lambda: "no C compiler found")
    case = Case(H=2, group=1, K=16, V=16, lengths=(4,), spare_slots=0, in_slots=(0,), out_slots=(0,),
                head_map="tile", layout="vk", kda=True, l2norm=False, bf16_inputs=False,
                bf16_state=False, token_states=True, seed=5)
    tensors, pool, cu, _ = _inputs(case, "cpu")
    auto = _run(case, tensors, pool, cu, "auto", "recurrent")
    ref = _run(case, tensors, pool, cu, "cpu", "recurrent")
    assert torch.equal(auto.o, ref.o) and torch.equal(auto.pool, ref.pool)

"""Kernel guards: a bad GatedDeltaNet call is a typed error BEFORE any kernel launches.

Every case runs through every backend (the fp32 reference, the CPU kernels, the Triton kernels
- on CUDA when there is a GPU, else through Triton's interpreter) with the pool and a
poisoned ``out`` tensor, and checks that ``OpArgumentError`` names the problem and that
neither tensor changed. Strided (non-contiguous) inputs and pools are accepted and give the
contiguous result bit for bit; tensors written in place that share memory between elements
are refused. The same checks hold one level up: a fused node fed bad slots through
``gdnc run MODEL.onnx --inputs`` is a one-line error.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from gdnc.errors import OpArgumentError
from gdnc.lowering.gated_delta_net.api import gated_delta_net
from tests.robustness.harness import TALLY, hold_to_promise, run_cli

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# on a GPU machine the CPU kernels are covered by the refusal of CUDA tensors (BAD below)
BACKENDS = ["reference", "cpu", "native", "triton"] if DEVICE == "cpu" else ["reference", "triton"]
LENS, H, HV, K, V, P = (3, 0, 5), 2, 4, 4, 3, 5
POISON = 1234.5


def idx(values, dtype=torch.int64):
    return torch.tensor(values, dtype=dtype, device=DEVICE)


def _args(backend: str, seed: int = 0) -> dict:
    """A valid call: 3 sequences (one empty) over a pool of P slots, fresh random values."""
    gen = torch.Generator().manual_seed(seed)
    T = sum(LENS)

    def rand(*shape, lo=-1.0, hi=1.0):
        return (torch.rand(*shape, generator=gen) * (hi - lo) + lo).to(DEVICE)

    cu = np.concatenate([[0], np.cumsum(LENS)])
    return dict(
        q=rand(T, H, K), k=rand(T, H, K) * 0.5, v=rand(T, HV, V), g=rand(T, HV, lo=-1, hi=0),
        beta=rand(T, HV, lo=0, hi=1), state_pool=rand(P, HV, K, V),
        cu_seqlens=idx(cu.tolist()), state_in_index=idx([0, 1, 2]), state_out_index=idx([3, 1, 4]),
        backend=backend,
    )


def _expanded_pool(a):
    return a["state_pool"][:1].expand(P, HV, K, V)


def _overlapping_pool(a):
    flat = torch.rand(P * HV * K * V, device=DEVICE)
    return flat.as_strided((P, HV, K, V), (HV * K * V // 2, K * V, V, 1))


# case -> (change the valid arguments, fragment the error must contain)
BAD = {
    "in slot == P": (lambda a: {"state_in_index": idx([0, P, 2])}, f"slot {P} is out of range"),
    "in slot 2^40": (lambda a: {"state_in_index": idx([0, 2**40, 2])}, "is out of range"),
    "out slot == P": (lambda a: {"state_out_index": idx([3, 1, P])}, "state_out_index: slot"),
    "duplicate write slots": (lambda a: {"state_out_index": idx([3, 3, 4])},
                              "slot 3 is written by more than one sequence"),
    "default out slots duplicate": (lambda a: {"state_in_index": idx([2, 2, 0]), "state_out_index": None},
                                    "slot 2 is written by more than one"),
    "sequences overlap (cu decreases)": (lambda a: {"cu_seqlens": idx([0, 5, 3, 8])},
                                         "must be non-decreasing"),
    "cu past the tokens": (lambda a: {"cu_seqlens": idx([0, 3, 3, 9])}, "ends at 9 but T_total = 8"),
    "cu not from 0": (lambda a: {"cu_seqlens": idx([1, 3, 3, 8])}, "must start at 0"),
    "index count != sequences": (lambda a: {"state_in_index": idx([0, 1])}, "must be [N] = [3]"),
    "int32 slots": (lambda a: {"state_in_index": idx([0, 1, 2], torch.int32)}, "must be torch.int64"),
    "int32 cu_seqlens": (lambda a: {"cu_seqlens": a["cu_seqlens"].int()}, "cu_seqlens: dtype"),
    "integer q": (lambda a: {"q": a["q"].long()}, "q: dtype torch.int64"),
    "integer pool": (lambda a: {"state_pool": a["state_pool"].int()}, "state_pool: dtype"),
    "pool in the other layout": (lambda a: {"state_layout": "vk"}, "the 'vk' layout"),
    "pool with too few heads": (lambda a: {"state_pool": a["state_pool"][:, :2]}, "state_pool: shape"),
    "g of the wrong rank": (lambda a: {"g": a["g"][..., None, None]}, "g: shape"),
    "beta per key head": (lambda a: {"beta": a["beta"][:, :H]}, "beta: shape"),
    "k of another length": (lambda a: {"k": a["k"][:-1]}, "k: shape"),
    "expanded pool": (lambda a: {"state_pool": _expanded_pool(a)}, "sharing memory"),
    "self-overlapping pool": (lambda a: {"state_pool": _overlapping_pool(a)}, "sharing memory"),
    "expanded token_states": (lambda a: {"token_states": torch.empty(1, HV, K, V, device=DEVICE)
                                         .expand(sum(LENS), HV, K, V)}, "sharing memory"),
    "strided out": (lambda a: {"out": torch.empty(sum(LENS), HV, 2 * V, device=DEVICE)[..., ::2]},
                    "out: must be a contiguous"),
    "out of another dtype": (lambda a: {"out": torch.empty(sum(LENS), HV, V, device=DEVICE,
                                                           dtype=torch.float16)}, "out: must be"),
    "unknown head map": (lambda a: {"head_map": "blocked"}, "head_map: 'blocked'"),
    "pool that requires grad": (lambda a: {"state_pool": a["state_pool"].requires_grad_()},
                                "state_pool: requires grad"),
}
if DEVICE == "cuda":
    BAD["pool on another device"] = (lambda a: {"state_pool": a["state_pool"].cpu()},
                                     "every float tensor must be on one device")
    BAD["CPU kernels on CUDA tensors"] = (lambda a: {"backend": "cpu"}, "backend 'cpu' needs CPU tensors")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(BAD))
def test_bad_call_is_refused_before_launch(case, backend):
    args = _args(backend, seed=hash(case) % 1000)
    change, fragment = BAD[case]
    args.update(change(args))
    out = args.setdefault("out", torch.empty(sum(LENS), HV, V, device=DEVICE)).fill_(POISON)
    before_pool, before_out = args["state_pool"].clone(), out.clone()
    TALLY.tried["kernel"] += 1
    with pytest.raises(OpArgumentError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        gated_delta_net(**args)
    assert torch.equal(args["state_pool"], before_pool), "the pool changed before the error"
    assert torch.equal(out, before_out), "out was written before the error"
    TALLY.refused["kernel"] += 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_pool_that_requires_grad_is_written_under_no_grad(backend):
    """Under torch.no_grad a pool that requires grad is updated in place, as without grad."""
    args = _args(backend, seed=11)
    plain = args["state_pool"].clone()
    want = gated_delta_net(**{**args, "state_pool": plain})
    pool = args["state_pool"].requires_grad_()
    with torch.no_grad():
        o = gated_delta_net(**{**args, "state_pool": pool})
    assert torch.equal(o, want) and torch.equal(pool.detach(), plain)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
def test_kernels_refuse_inputs_that_require_grad(backend):
    """The kernels have no backward: q requiring grad is refused while autograd records (the
    reference backend follows autograd, so it is not refused there)."""
    args = _args(backend, seed=12)
    args["q"].requires_grad_()
    with pytest.raises(OpArgumentError, match=f"q: requires grad, but backend '{backend}' has no backward"):
        gated_delta_net(**args)
    reference = gated_delta_net(**{**args, "backend": "reference"})
    reference.sum().backward()
    assert args["q"].grad is not None and bool(args["q"].grad.abs().sum() > 0)


def _strided(x: torch.Tensor) -> torch.Tensor:
    """``x``'s values in a non-contiguous view (every other element of a wider last dim)."""
    wide = torch.full((*x.shape[:-1], 2 * x.shape[-1]), float("nan"), dtype=x.dtype, device=x.device)
    wide[..., ::2] = x
    return wide[..., ::2]


@pytest.mark.parametrize(("backend", "algorithm"), [
    (b, a) for b in BACKENDS for a in (["auto"] if b == "reference" else ["recurrent", "chunked"])])
def test_strided_inputs_and_pool_give_the_contiguous_result(backend, algorithm):
    args = _args(backend, seed=7)
    opts = {"algorithm": algorithm}
    dense_pool = args["state_pool"].clone()
    dense = gated_delta_net(**{**args, "state_pool": dense_pool}, **opts)
    strided = {name: _strided(args[name]) for name in ("q", "k", "v", "g", "beta", "state_pool")}
    assert not any(x.is_contiguous() for x in strided.values())
    o = gated_delta_net(**{**args, **strided}, **opts)
    TALLY.tried["kernel"] += 1
    assert torch.equal(o, dense)
    assert torch.equal(strided["state_pool"], dense_pool), "the strided pool was not updated in place"
    TALLY.accepted["kernel"] += 1


def _fused_pool_model(path) -> None:
    """One packed-layout GatedDeltaNet node whose pool, cu_seqlens and slots are graph inputs."""
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    node = helper.make_node(
        "GatedDeltaNet", ["q", "k", "v", "g", "beta", "pool", "cu", "ins", "outs"], ["o", "pool_out"],
        domain="ai.gdnc", head_map="interleave", state_layout="kv")
    graph = helper.make_graph([node], "pool", [
        helper.make_tensor_value_info("q", f32, ["T", H, K]),
        helper.make_tensor_value_info("k", f32, ["T", H, K]),
        helper.make_tensor_value_info("v", f32, ["T", HV, V]),
        helper.make_tensor_value_info("g", f32, ["T", HV]),
        helper.make_tensor_value_info("beta", f32, ["T", HV]),
        helper.make_tensor_value_info("pool", f32, ["P", HV, K, V]),
        helper.make_tensor_value_info("cu", i64, ["N1"]),
        helper.make_tensor_value_info("ins", i64, ["N"]),
        helper.make_tensor_value_info("outs", i64, ["N"]),
    ], [helper.make_tensor_value_info("o", f32, ["T", HV, V]),
        helper.make_tensor_value_info("pool_out", f32, ["P", HV, K, V])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid("ai.gdnc", 1)])
    onnx.save(model, str(path))


FEED_BAD = {
    "slot past the pool": ({"ins": [0, 9, 2]}, "slot 9 is out of range"),
    "negative cu_seqlens start": ({"cu": [-1, 3, 3, 8]}, "must start at 0"),
    "duplicate out slots": ({"outs": [4, 4, 1]}, "written by more than one sequence"),
    "float slots": ({"ins": np.array([0.0, 1.0, 2.0], np.float32)}, "ins"),
}


@pytest.mark.parametrize("case", list(FEED_BAD))
def test_fused_node_with_bad_feeds_is_one_line(tmp_path, case):
    model = tmp_path / "pool.onnx"
    _fused_pool_model(model)
    args = _args("cpu", seed=3)
    feeds = {name: args[key].cpu().numpy() for name, key in (
        ("q", "q"), ("k", "k"), ("v", "v"), ("g", "g"), ("beta", "beta"), ("pool", "state_pool"),
        ("cu", "cu_seqlens"), ("ins", "state_in_index"), ("outs", "state_out_index"))}
    ok = tmp_path / "ok.npz"
    np.savez(ok, **feeds)
    hold_to_promise("kernel", "valid feeds", run_cli(["run", str(model), "--inputs", str(ok)]),
                    may_succeed=True)
    change, fragment = FEED_BAD[case]
    bad = tmp_path / "bad.npz"
    np.savez(bad, **{**feeds, **{k: np.asarray(v, dtype=getattr(v, "dtype", np.int64))
                                 for k, v in change.items()}})
    hold_to_promise("kernel", case, run_cli(["run", str(model), "--inputs", str(bad)]),
                    mention=fragment)


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_call_after_a_good_one_is_refused_all_the_same(case):
    """The plan kept from a valid call (``call_plan``) never lets a changed call skip its checks."""
    good = _args("auto", seed=7)
    gated_delta_net(**{**good, "state_pool": good["state_pool"].clone()})
    args = _args("auto", seed=7)
    change, fragment = BAD[case]
    args.update(change(args))
    before_pool = args["state_pool"].clone()
    with pytest.raises(OpArgumentError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        gated_delta_net(**args)
    assert torch.equal(args["state_pool"], before_pool)


def test_a_kept_plan_serves_only_calls_with_the_same_index_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two identical calls validate once; other slot values validate again and land in their slots."""
    from gdnc.lowering.gated_delta_net import api
    from gdnc.lowering.gated_delta_net.reference import gated_delta_net_reference

    validations = []
    validate = api.validate
    monkeypatch.setattr(api, "validate", lambda *a, **kw: validations.append(1) or validate(*a, **kw))
    args = _args("auto", seed=11)
    counts = []
    for out_slots in ([3, 1, 4], [3, 1, 4], [4, 0, 3]):
        call = {**args, "state_pool": args["state_pool"].clone(), "state_out_index": idx(out_slots)}
        want = {**call, "state_pool": call["state_pool"].double()}
        del want["backend"]
        o = gated_delta_net(**call)
        o_ref = gated_delta_net_reference(**{k: (v.double() if torch.is_tensor(v) and v.is_floating_point()
                                                 and k != "state_pool" else v) for k, v in want.items()})
        torch.testing.assert_close(o.double(), o_ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(call["state_pool"].double(), want["state_pool"], rtol=1e-4, atol=1e-4)
        counts.append(len(validations))
    assert counts[1] == counts[0] and counts[2] == counts[1] + 1

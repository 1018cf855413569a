"""The native target: GatedDeltaNet nodes run in onnxruntime through their function bodies.

Every case builds a model of GatedDeltaNet nodes with onnx.helper, attaches the bodies, runs
it in onnxruntime (CPU) on fresh random inputs and compares with ``run_fused_node`` in fp64.
Sizes: B=2, T=5, H=2 key heads, HV=4 value heads, K=8, V=6.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from gdnc.errors import EmitError
from gdnc.ir.from_onnx import model_from_proto
from gdnc.ir.to_onnx import model_to_proto
from gdnc.lowering.gated_delta_net.api import run_fused_node
from gdnc.opset.gated_delta_net import DOMAIN, INPUTS, OP_TYPE, OPSET_VERSION, OUTPUTS, GdnAttrs
from gdnc.passes.targets.native import attach_function_bodies

B, T, H, HV, K, V = 2, 5, 2, 4, 8, 6
TOL = {"float32": 1e-5, "float64": 1e-10, "float16": 3e-3}


@dataclass(frozen=True)
class Case:
    """One node configuration; ``pool`` > 0 makes ``state`` a pool of that many slots."""

    packed: bool = False
    kda: bool = False
    l2: bool = False
    head_map: str = "interleave"
    layout: str = "kv"
    state: bool = False
    scale: float | None = 0.3
    cu: tuple[int, ...] | None = None
    pool: int = 0
    ins: tuple[int, ...] | None = None
    outs: tuple[int, ...] | None = None
    num_outputs: int = 2
    dtype: str = "float32"

    @property
    def id(self) -> str:
        parts = ["p3" if self.packed else "b4", "kda" if self.kda else "gda",
                 "l2" if self.l2 else "nol2", self.head_map[:4], self.layout,
                 "state" if self.state else "zeros", "scale" if self.scale else "defscale"]
        if self.cu:
            parts.append("cu" + ".".join(map(str, self.cu)))
        if self.pool:
            parts.append(f"pool{self.ins or ''}{self.outs or ''}".replace(" ", ""))
        return "-".join(parts + [f"o{self.num_outputs}", self.dtype])

    def arrays(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Fresh inputs: g = -softplus(randn) < 0, beta = sigmoid(randn) in (0, 1)."""
        n_tokens = (self.cu[-1] if self.cu else T) if self.packed else None
        lead = [n_tokens] if self.packed else [B, T]
        n_seq = (len(self.cu) - 1 if self.cu else 1) if self.packed else B
        state_dims = [K, V] if self.layout == "kv" else [V, K]
        out = {
            "q": rng.standard_normal([*lead, H, K]), "k": rng.standard_normal([*lead, H, K]),
            "v": rng.standard_normal([*lead, HV, V]),
            "g": -np.logaddexp(0, rng.standard_normal([*lead, HV] + [K] * self.kda)),
            "beta": 1 / (1 + np.exp(-rng.standard_normal([*lead, HV]))),
        }
        if self.state:
            out["state"] = rng.standard_normal([self.pool or n_seq, HV, *state_dims])
        out = {name: x.astype(self.dtype) for name, x in out.items()}
        for name, idx in (("cu_seqlens", self.cu), ("state_in_index", self.ins),
                          ("state_out_index", self.outs)):
            if idx is not None:
                out[name] = np.array(idx, np.int64)
        return out

    @property
    def attrs(self) -> dict[str, object]:
        attrs: dict[str, object] = {"qk_l2norm": int(self.l2), "head_map": self.head_map,
                                    "state_layout": self.layout}
        if self.scale is None:
            return attrs
        return {**attrs, "scale": float(np.float32(self.scale))}  # as ONNX stores it


def expected(case: Case, arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The gdnc runtime on fp64 copies of the inputs."""
    def tensor(name: str) -> torch.Tensor | None:
        x = arrays.get(name)
        if x is None:
            return None
        return torch.from_numpy(x.astype(np.float64) if x.dtype.kind == "f" else x)

    out = run_fused_node([tensor(n) for n in INPUTS], GdnAttrs.from_onnx(case.attrs),
                         case.num_outputs)
    return [x.numpy() for x in out]


def build(cases: list[Case], rng: np.random.Generator, opset: int = 17):
    """A model with one node per case (names prefixed n0_, n1_ ...); returns (proto, feeds,
    expected outputs by name)."""
    nodes, inputs, outputs, feeds, want = [], [], [], {}, {}
    for i, case in enumerate(cases):
        arrays = {f"n{i}_{name}": x for name, x in case.arrays(rng).items()}
        results = expected(case, {name.split("_", 1)[1]: x for name, x in arrays.items()})
        names = [f"n{i}_{name}" for name in INPUTS]
        names = [n if n in arrays else "" for n in names]
        while not names[-1]:
            names.pop()
        outs = [f"n{i}_{name}" for name in OUTPUTS[: case.num_outputs]]
        nodes.append(helper.make_node(OP_TYPE, names, outs, domain=DOMAIN, name=f"gdn{i}",
                                      **case.attrs))
        inputs += [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(x.dtype),
                                                 x.shape) for n, x in arrays.items()]
        outputs += [helper.make_tensor_value_info(
            n, helper.np_dtype_to_tensor_dtype(dtype_like(n, case)), x.shape)
            for n, x in zip(outs, results, strict=True)]
        feeds.update(arrays)
        want.update(zip(outs, results, strict=True))
    graph = helper.make_graph(nodes, "gdn", inputs, outputs)
    proto = helper.make_model(graph, ir_version=9, opset_imports=[
        helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, OPSET_VERSION)])
    return proto, feeds, want


def dtype_of_states(case: Case) -> np.dtype:
    """The contract's dtype of final_state / token_states."""
    return np.dtype(case.dtype if case.state or case.dtype == "float64" else "float32")


def run_native(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    model = model_from_proto(proto)
    assert attach_function_bodies(model) == len(proto.graph.node)
    emitted = model_to_proto(model)
    session = ort.InferenceSession(emitted.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds), strict=True))


def check(case: Case, seed: int = 0) -> None:
    proto, feeds, want = build([case], np.random.default_rng(seed))
    got = run_native(proto, feeds)
    for name, ref in want.items():
        out = got[name]
        assert out.shape == ref.shape and out.dtype == dtype_like(name, case), name
        err = np.linalg.norm(out.astype(np.float64) - ref) / np.linalg.norm(ref)
        assert err <= TOL[case.dtype], f"{name}: rel L2 {err:.2e}"


def dtype_like(name: str, case: Case) -> np.dtype:
    return np.dtype(case.dtype) if name.endswith("_o") else dtype_of_states(case)


BATCH = [
    Case(kda=kda, l2=l2, head_map=hm, layout=lay, state=st, scale=sc)
    for kda, l2, hm, lay, st, sc in itertools.product(
        (False, True), (False, True), ("interleave", "tile"), ("kv", "vk"), (False, True),
        (0.3, None))
]
PACKED = [
    Case(packed=True, kda=kda, layout=lay, state=st, l2=kda,
         head_map="tile" if st else "interleave")
    for kda, lay, st in itertools.product((False, True), ("kv", "vk"), (False, True))
]
CU = [
    Case(packed=True, cu=(0, 3, 7), state=True, layout="vk", kda=True),
    Case(packed=True, cu=(0, 2, 2, 7), state=True, l2=True, head_map="tile"),
    Case(packed=True, cu=(0, 0, 4), layout="vk", scale=None),
    Case(packed=True, cu=(0, 1, 2, 3), kda=True, num_outputs=1),
]
POOL = [
    Case(state=True, pool=5, ins=(3, -1)),
    Case(state=True, pool=5, ins=(3, 0), outs=(-1, 4), layout="vk"),
    Case(state=True, pool=5, outs=(2, 0), kda=True),
    Case(packed=True, state=True, pool=3, ins=(-1,), outs=(1,), l2=True),
    Case(packed=True, cu=(0, 2, 2, 7), state=True, pool=5, ins=(3, -1, 0), outs=(1, -1, 4)),
    Case(packed=True, cu=(0, 4, 6), state=True, pool=4, ins=(1, 2), layout="vk", kda=True),
]
TOKEN_STATES = [
    Case(num_outputs=3),
    Case(state=True, layout="vk", kda=True, num_outputs=3),
    Case(packed=True, state=True, num_outputs=3, head_map="tile"),
    Case(packed=True, cu=(0, 2, 2, 7), layout="vk", num_outputs=3),
    Case(packed=True, cu=(0, 3, 7), state=True, pool=4, ins=(2, -1), num_outputs=3),
]
DTYPES = [
    Case(dtype="float64", state=True, num_outputs=3),
    Case(dtype="float64", packed=True, cu=(0, 3, 7)),
    Case(dtype="float16", state=True, l2=True),
]


@pytest.mark.parametrize("case", BATCH + PACKED + CU + POOL + TOKEN_STATES + DTYPES,
                         ids=lambda c: c.id)
def test_matches_runtime(case: Case) -> None:
    check(case)


@pytest.mark.parametrize("case", [CU[1], POOL[4], TOKEN_STATES[1], DTYPES[0]],
                         ids=lambda c: c.id)
def test_checker_full(case: Case) -> None:
    proto, _, _ = build([case], np.random.default_rng(1))
    model = model_from_proto(proto)
    attach_function_bodies(model)
    emitted = model_to_proto(model)
    onnx.checker.check_model(emitted, full_check=True)
    assert emitted.ir_version >= 10
    assert {o.domain: o.version for o in emitted.opset_import} == {"": 17, DOMAIN: 1}


def test_nodes_get_their_own_bodies() -> None:
    """Two configurations in one model (the third node shares the first one's body)."""
    cases = [Case(state=True, layout="vk", kda=True),
             Case(packed=True, cu=(0, 3, 7), l2=True, head_map="tile", num_outputs=3),
             Case(state=True, layout="vk", kda=True, scale=0.7)]
    proto, feeds, want = build(cases, np.random.default_rng(2), opset=19)
    model = model_from_proto(proto)
    assert attach_function_bodies(model) == 3
    overloads = [model.graph.node(nid).overload for nid in model.graph.node_ids()]
    assert overloads[0] == overloads[2] == "b4_kda_nol2_il_vk_sa_s_o2"
    assert overloads[1] == "p3cu_gda_l2_tile_kv_sa_z_o3"
    assert sorted(fn.overload for fn in model.functions) == sorted(set(overloads))
    assert model.opset_imports[""] == 19  # never lowered
    attach_function_bodies(model)  # idempotent: replaced, not duplicated
    assert len(model.functions) == 2
    got = run_native(proto, feeds)
    for name, ref in want.items():
        assert np.linalg.norm(got[name] - ref) / np.linalg.norm(ref) <= 1e-5, name


def test_node_in_subgraph() -> None:
    """A node inside an If branch, reading the outer graph's inputs."""
    proto, feeds, want = build([Case(state=True, l2=True, num_outputs=1)],
                               np.random.default_rng(3))
    graph = proto.graph
    then = helper.make_graph(list(graph.node), "then", [], [graph.output[0]])
    other = helper.make_graph([helper.make_node("Identity", ["n0_v"], ["other"])], "else", [],
                              [helper.make_tensor_value_info("other", TensorProto.FLOAT, None)])
    branch = helper.make_node("If", ["flag"], ["result"], then_branch=then, else_branch=other)
    flag = helper.make_tensor_value_info("flag", TensorProto.BOOL, [])
    result = helper.make_tensor_value_info("result", TensorProto.FLOAT, [B, T, HV, V])
    proto.graph.CopyFrom(helper.make_graph([branch], "gdn", [*graph.input, flag], [result]))
    model = model_from_proto(proto)
    assert attach_function_bodies(model) == 1
    session = ort.InferenceSession(model_to_proto(model).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {**feeds, "flag": np.array(True)})
    ref = want["n0_o"]
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) <= 1e-5


def test_overload_names_are_deterministic() -> None:
    cases = [Case(l2=True, head_map="tile", layout="vk", state=True, num_outputs=2),
             Case(packed=True, scale=None, dtype="float64"),
             Case(packed=True, cu=(0, 2, 5), state=True, pool=3, ins=(0, 1), num_outputs=3)]
    proto, _, _ = build(cases, np.random.default_rng(4))
    model = model_from_proto(proto)
    attach_function_bodies(model)
    assert [model.graph.node(nid).overload for nid in model.graph.node_ids()] == [
        "b4_gda_l2_tile_vk_sa_s_o2", "p3_gda_nol2_il_kv_sd_z_o2_f64",
        "p3cu_gda_nol2_il_kv_sa_pooli_o3"]


def test_unexpressible_nodes_raise() -> None:
    proto, _, _ = build([Case()], np.random.default_rng(5))
    unknown_rank = onnx.ModelProto()
    unknown_rank.CopyFrom(proto)
    unknown_rank.graph.input[0].type.tensor_type.ClearField("shape")
    with pytest.raises(EmitError, match="gdn0.*rank of q is unknown"):
        attach_function_bodies(model_from_proto(unknown_rank))
    old = onnx.ModelProto()
    old.CopyFrom(proto)
    old.opset_import[0].version = 11
    model = model_from_proto(old)
    with pytest.raises(EmitError, match="opset 11"):
        attach_function_bodies(model)
    assert not model.functions  # nothing changed
    proto, _, _ = build([Case(packed=True)], np.random.default_rng(6))
    proto.graph.node[0].input.extend(["", "", "n0_q"])  # an index without a state
    with pytest.raises(EmitError, match="need a state"):
        attach_function_bodies(model_from_proto(proto))

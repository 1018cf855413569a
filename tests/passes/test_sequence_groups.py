"""The ``delta-net-sequences`` rule on GGUF batch graphs: N per-sequence chains over a state
pool become ONE GatedDeltaNet; chains that do not fit fall back to one-chain fusion."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch

from gdnc.errors import RewriteError
from gdnc.frontends.gguf_file import GgufFile
from gdnc.ir.graph import Graph, Model, Node
from gdnc.models.gguf_weights import GgufWeights
from gdnc.models.qwen_hybrid.batch import batch_feeds, pool_shapes
from gdnc.models.qwen_hybrid.config import hybrid_config
from gdnc.models.qwen_hybrid.graph import BATCH_INPUTS, Composition, build_unfused
from gdnc.models.qwen_hybrid.model import build_fused
from gdnc.passes.composition import lift_sequence_layout
from gdnc.passes.delta_net import fuse as fuse_mod
from gdnc.passes.pipeline import fuse_model
from gdnc.runtime.executor import Executor
from gdnc.runtime.state_pool import Entry, StatePool

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gguf"
ARCHS = ["qwen35", "qwen3next", "qwen35moe"]
FUSED = "ai.gdnc::GatedDeltaNet"
RULE = "delta-net-sequences"
MAX_ABS = 1e-4
Edit = Callable[[Graph], None]


def _file(arch: str) -> GgufFile:
    return GgufFile(FIXTURES / f"{arch}-fixture-f32.gguf")


def _build(arch: str, lengths: tuple[int, ...], edit: Edit | None = None) -> Model:
    model = build_unfused(_file(arch), Composition.of(*lengths))
    if edit is not None:
        edit(model.graph)
    return model


def _writes(g: Graph, pool: str) -> list[int]:
    """The chained ScatterND writes into ``pool`` (node ids), in sequence order."""
    out, data = [], pool
    while nxt := [
        n for n in g.consumers(data) if g.node(n).op_type == "ScatterND" and g.node(n).inputs[0] == data
    ]:
        out.append(nxt[0])
        data = g.node(nxt[0]).outputs[0]
    return out


def _gdn_nodes(g: Graph) -> list[Node]:
    return [n for _, n in g.nodes() if n.qualified_op == FUSED]


@pytest.mark.parametrize("lengths", [(2, 3), (1, 1, 1, 1), (4,)])
@pytest.mark.parametrize("arch", ARCHS)
def test_one_node_per_layer(arch: str, lengths: tuple[int, ...]) -> None:
    model = _build(arch, lengths)
    report = fuse_model(model)
    g = model.graph
    assert g.op_histogram()[FUSED] == 3
    cu = [0, *np.cumsum(lengths).tolist()]
    pools = set()
    for node in _gdn_nodes(g):
        assert g.const_value(node.inputs[6]).tolist() == cu
        assert node.inputs[5] in g.inputs and node.inputs[5].startswith("ssm_state.")
        assert node.inputs[7:9] == ["state_slots", "state_slots"]
        pools.add(node.inputs[5])
    assert pools == {"ssm_state.0", "ssm_state.1", "ssm_state.2"}
    assert not any(
        n.op_type == "ScatterND" and any(i.startswith("ssm_state.") for i in n.inputs) for _, n in g.nodes()
    )
    assert [(c.sequences, c.steps) for c in report.chains] == [(len(lengths), sum(lengths))] * 3
    assert not [m for m in report.misses if m.rule == RULE]


def _run_both(arch: str, edit: Edit | None = None) -> None:
    """Unfused and fused graphs of lengths (2, 3) (both with ``edit``) agree on a pool of 3
    slots with non-zero states, the sequences in slots (2, 0); slot 1 is left untouched."""
    cfg = hybrid_config(_file(arch))
    gen = torch.Generator().manual_seed(0)
    pool = StatePool(pool_shapes(cfg, 3, 16), 16, "cpu")
    pool.n_past = [3, 5, 2]
    for name, t in pool.tensors.items():
        if name.startswith(("k_cache", "v_cache")):
            for slot, past in enumerate(pool.n_past):
                t[slot, :past] = torch.randn(past, *t.shape[2:], generator=gen)
        else:
            t.copy_(torch.randn(t.shape, generator=gen) * 0.1)
    batch = [Entry(2, (5, 17)), Entry(0, (1, 30, 9))]
    feeds = batch_feeds(cfg, pool, batch, all_logits=True)
    unfused = _build(arch, (2, 3), edit)
    fused = _build(arch, (2, 3), edit)
    fuse_model(fused)
    results = []
    weights = GgufWeights(_file(arch), torch.device("cpu"))
    for model in (unfused, fused):
        ex = Executor(model, bound=weights.prepare(model))
        wanted = {n: feeds[n] for n in ex.input_names if n in feeds}
        results.append(ex.run({**wanted, **{n: t.clone() for n, t in pool.tensors.items()}}))
    want, got = results
    assert want.keys() == got.keys()
    for name in want:
        assert (want[name] - got[name]).abs().max().item() <= MAX_ABS, name
    for name, t in pool.tensors.items():
        for outs in results:
            assert torch.equal(outs[f"{name}.out"][1], t[1]), name
        assert not torch.equal(got[f"{name}.out"][2], t[2]), name  # the batch did write slot 2


@pytest.mark.parametrize("arch", ARCHS)
def test_fused_matches_unfused_on_a_filled_pool(arch: str) -> None:
    _run_both(arch)


def _other_slot(g: Graph) -> None:
    """Sequence 1 of layer 0 writes its final state to slot state_slots[0]."""
    first, second = _writes(g, "ssm_state.0")
    assert g.node(first).inputs[1] != g.node(second).inputs[1]
    g.set_input(second, 1, g.node(first).inputs[1])  # Reshape(Gather(state_slots, 0), [1, 1])


def _peek_pool(g: Graph) -> None:
    """The pool after sequence 0's write of layer 0 is also a graph output."""
    first = _writes(g, "ssm_state.0")[0]
    g.add_node(Node("Identity", [g.node(first).outputs[0]], ["pool_peek"]))
    g.outputs.append("pool_peek")


def _swap_rows(g: Graph) -> None:
    """Sequence 1 of layer 0 reads packed rows 3, 2, 4 instead of 2, 3, 4."""
    later = set().union(*(nx.descendants(g.nx, n) for n in g.consumers("ssm_state.0")))
    rows: dict[str, dict[int, int]] = {}  # packed tensor -> row -> Gather node (layer 0 only)
    for nid, node in g.nodes():
        if nid in later:
            continue
        r = g.const_value(node.inputs[1]) if node.op_type == "Gather" else None
        if r is not None and r.ndim == 0 and node.attr("axis", 0) == 0:
            rows.setdefault(node.inputs[0], {})[int(r)] = nid
    packed = {x: by_row for x, by_row in rows.items() if sorted(by_row) == list(range(5))}
    assert len(packed) == 5  # q, k, v, g, beta
    for by_row in packed.values():
        a, b = by_row[2], by_row[3]
        ra, rb = g.node(a).inputs[1], g.node(b).inputs[1]
        g.set_input(a, 1, rb)
        g.set_input(b, 1, ra)


@pytest.mark.parametrize(
    "edit, reason",
    [
        (_other_slot, "written to another slot than the one it was read from"),
        (_peek_pool, "an intermediate pool is read by something else"),
        (_swap_rows, "reads rows"),
    ],
    ids=["other-slot", "peek-pool", "swap-rows"],
)
def test_misfits_fall_back_to_one_chain_fusion(edit: Edit, reason: str) -> None:
    model = _build("qwen35", (2, 3), edit)
    report = fuse_model(model)
    reasons = [m.reason for m in report.misses if m.rule == RULE]
    assert any(reason in r for r in reasons), reasons
    # layer 0: one node per sequence; layers 1 and 2: one node for both sequences
    assert model.graph.op_histogram()[FUSED] == 4
    assert sorted((c.sequences, c.steps) for c in report.chains) == [(1, 2), (1, 3), (2, 5), (2, 5)]
    _run_both("qwen35", edit)


def test_lifting_refuses_a_layout_it_was_not_built_for() -> None:
    model = _build("qwen35", (2, 3))
    fuse_model(model)
    with pytest.raises(RewriteError, match="not one multi-sequence GatedDeltaNet over the batch"):
        lift_sequence_layout(model, [0, 5], BATCH_INPUTS)


def test_build_fused_refuses_a_layer_left_per_sequence(monkeypatch) -> None:
    """When a layer's chains do not group (here: no layer groups), no fused graph is served.

    The graph cache is off: a fused graph an earlier test cached would skip the patched pass.
    """
    monkeypatch.setenv("GDNC_CACHE_DIR", "off")
    monkeypatch.setattr(fuse_mod, "group_sequences", lambda g, chains: ([], list(chains), []))
    with pytest.raises(RewriteError, match="not one multi-sequence GatedDeltaNet"):
        build_fused(_file("qwen35"))

"""Replace each chain of T steps by ONE ``ai.gdnc::GatedDeltaNet`` node.

The per-token inputs are stacked along a new time axis (Unsqueeze + Concat) and each
per-token output ``o_t`` becomes ``Gather(o, t)``; the data-movement folding that runs
next turns those stacks and gathers back into the original full tensors.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from gdnc.ir.builder import GraphBuilder
from gdnc.ir.graph import Graph, Model, Node
from gdnc.opset.gated_delta_net import DOMAIN, OPSET_VERSION, GdnAttrs, fused_node, input_of
from gdnc.passes.delta_net.chains import Chain, find_chains
from gdnc.passes.delta_net.sequences import fuse_group, group_sequences
from gdnc.passes.delta_net.steps import RULE as STEP_RULE
from gdnc.passes.delta_net.steps import Step
from gdnc.passes.patterns import is_zero_const, known_dim, shape_of
from gdnc.passes.rewrite import Miss

FUSE_RULE = "delta-net-fuse"
# the rules whose near-misses leave a candidate step or chain unfused; the others' (chains of
# several sequences fused one sequence at a time, simplify rules) change nothing of what fuses
UNFUSED_RULES = frozenset({STEP_RULE, FUSE_RULE})


@dataclass(frozen=True)
class ChainInfo:
    """What one fused chain looked like (for the report)."""

    node: str
    steps: int
    heads: int | None
    key_dim: int | None
    value_dim: int | None
    layout: str
    gate: str
    initial_state: bool
    sequences: int = 1


@dataclass
class FusionResult:
    chains: list[ChainInfo] = field(default_factory=list)
    misses: list[Miss] = field(default_factory=list)


def fuse_chain(g: Graph, chain: Chain, opset: int, name: str) -> ChainInfo | Miss:
    steps = chain.steps
    first, last = steps[0], steps[-1]
    batch_dims = first.rank - 3
    if batch_dims > 1:
        return Miss(FUSE_RULE, f"{last.new}: state has {batch_dims} batch dims (max 1)", value=last.new)
    position = max(g.position(n) for s in steps for n in s.nodes)
    o_values = [s.o for s in steps]
    o_meta = [(g.value(v).dtype, g.value(v).shape) for v in o_values]
    state_meta = (g.value(last.new).dtype, g.value(last.new).shape)
    g.remove_nodes(n for s in steps for n in s.nodes)

    axis = batch_dims
    b = GraphBuilder(g, opset=opset, position=position, prefix=f"{name}_", const_hint="gdn_axis")
    q, k, v, gate, beta = (
        b.stack([getattr(s, f) for s in steps], axis, hint=f) for f in ("q", "k", "v", "gate", "beta")
    )
    if not first.gate_is_log:
        gate = b.typed(b.op("Log", gate, hint="g"), g.value(gate).dtype, g.value(gate).shape)
    state = "" if is_zero_const(g, first.prev) else first.prev
    final = last.new
    if batch_dims == 0:  # one unbatched sequence: the node's state is [N = 1, HV, ...]
        state = state and b.unsqueeze(state, 0)
        final = b.fresh(f"{name}_state")
    o_full = b.fresh(f"{name}_o")
    b.add(fused_node({"q": q, "k": k, "v": v, "g": gate, "beta": beta, "state": state},
                     {"o": o_full, "final_state": final},
                     GdnAttrs(scale=1.0, state_layout=first.layout), name))
    if batch_dims == 0:
        b.typed(final, state_meta[0], None if state_meta[1] is None else (1, *state_meta[1]))
        b.squeeze(final, [0], out=last.new)
    b.typed(last.new, *state_meta)
    b.typed(o_full, g.value(v).dtype, shape_of(g, v))
    for t, (o_t, (dtype, shape)) in enumerate(zip(o_values, o_meta)):
        b.typed(b.op("Gather", o_full, b.const(t, hint=f"gdn_t{t}"), out=o_t, axis=axis), dtype, shape)
    return _info(g, g.node(g.producer(o_full)), len(steps), first, 1)  # type: ignore[arg-type]


def _info(g: Graph, node: Node, steps: int, first: Step, sequences: int) -> ChainInfo:
    q_shape, v_shape = shape_of(g, input_of(node, "q")), shape_of(g, input_of(node, "v"))
    return ChainInfo(
        node=node.name,
        steps=steps,
        heads=known_dim(v_shape, -2),
        key_dim=known_dim(q_shape, -1),
        value_dim=known_dim(v_shape, -1),
        layout=first.layout,
        gate=("per-key" if first.per_key else "per-head") + ("" if first.gate_is_log else ", direct"),
        initial_state=bool(input_of(node, "state")),
        sequences=sequences,
    )


def fuse_delta_nets(model: Model) -> FusionResult:
    """Find every chain in ``model.graph`` and fuse it: the chains of several sequences that
    share a state pool into one node each, every other chain alone; edits the graph in place."""
    g = model.graph
    chains, misses = find_chains(g)
    groups, singles, group_misses = group_sequences(g, chains)
    result = FusionResult(misses=[*misses, *group_misses])
    opset = model.opset("")
    names = (f"gated_delta_net_{i}" for i in itertools.count())
    for members in groups:
        fused = fuse_group(g, members, next(names))
        if isinstance(fused, Miss):
            result.misses.append(fused)
            singles.extend(m.chain for m in members)
            continue
        node, lengths = fused
        result.chains.append(_info(g, node, sum(lengths), members[0].chain.steps[0], len(lengths)))
    for chain in singles:
        info = fuse_chain(g, chain, opset, next(names))
        if isinstance(info, Miss):
            result.misses.append(info)
        else:
            result.chains.append(info)
    if result.chains and DOMAIN not in model.opset_imports:
        model.opset_imports[DOMAIN] = OPSET_VERSION
    return result

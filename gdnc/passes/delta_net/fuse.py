"""Replace each chain of T steps by ONE ``ai.gdnc::GatedDeltaNet`` node.

The per-token inputs are stacked along a new time axis (Unsqueeze + Concat) and each
per-token output ``o_t`` becomes ``Gather(o, t)``; the data-movement folding that runs
next turns those stacks and gathers back into the original full tensors.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from gdnc.ir.graph import Graph, Model, Node, make_attrs
from gdnc.opset import gated_delta_net as fused_op
from gdnc.opset.gated_delta_net import GdnAttrs
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


def _unsqueeze(g: Graph, value: str, axis: int, opset: int, position: float) -> str:
    out = g.fresh_name(f"{value}_u")
    if opset >= 13:
        axes = g.constant(np.array([axis], dtype=np.int64), "gdn_axis")
        g.add_node(Node("Unsqueeze", [value, axes], [out]), position)
    else:
        g.add_node(Node("Unsqueeze", [value], [out], attrs=make_attrs(axes=[axis])), position)
    shape = shape_of(g, value)
    g.value(out).dtype = g.value(value).dtype
    if shape is not None:
        g.value(out).shape = shape[:axis] + (1,) + shape[axis:]
    return out


def _stack(g: Graph, values: list[str], axis: int, opset: int, position: float, hint: str) -> str:
    parts = [_unsqueeze(g, v, axis, opset, position) for v in values]
    out = g.fresh_name(hint)
    g.add_node(Node("Concat", parts, [out], attrs=make_attrs(axis=axis)), position)
    g.value(out).dtype = g.value(values[0]).dtype
    shape = shape_of(g, parts[0])
    if shape is not None:
        g.value(out).shape = shape[:axis] + (len(parts),) + shape[axis + 1:]
    return out


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
    q, k, v, gate, beta = (
        _stack(g, [getattr(s, f) for s in steps], axis, opset, position, f"{name}_{f}")
        for f in ("q", "k", "v", "gate", "beta")
    )
    if not first.gate_is_log:
        log_gate = g.fresh_name(f"{name}_g")
        g.add_node(Node("Log", [gate], [log_gate]), position)
        g.value(log_gate).dtype, g.value(log_gate).shape = g.value(gate).dtype, g.value(gate).shape
        gate = log_gate
    state = "" if is_zero_const(g, first.prev) else first.prev
    final = last.new
    if batch_dims == 0:  # one unbatched sequence: the node's state is [N = 1, HV, ...]
        state = state and _unsqueeze(g, state, 0, opset, position)
        final = g.fresh_name(f"{name}_state")
    o_full = g.fresh_name(f"{name}_o")
    attrs = GdnAttrs(scale=1.0, state_layout=first.layout)
    g.add_node(
        Node(fused_op.OP_TYPE, [q, k, v, gate, beta, state], [o_full, final],
             domain=fused_op.DOMAIN, attrs=make_attrs(**attrs.to_onnx()), name=name),
        position,
    )
    if batch_dims == 0:
        g.value(final).dtype = state_meta[0]
        g.value(final).shape = None if state_meta[1] is None else (1, *state_meta[1])
        squeeze_axes = [g.constant(np.array([0], dtype=np.int64), "gdn_axis")] if opset >= 13 else []
        g.add_node(Node("Squeeze", [final, *squeeze_axes], [last.new],
                        attrs={} if opset >= 13 else make_attrs(axes=[0])), position)
    g.value(last.new).dtype, g.value(last.new).shape = state_meta
    v_shape = shape_of(g, v)
    g.value(o_full).dtype = g.value(v).dtype
    g.value(o_full).shape = v_shape
    for t, (o_t, (dtype, shape)) in enumerate(zip(o_values, o_meta)):
        index = g.constant(np.array(t, dtype=np.int64), f"gdn_t{t}")
        g.add_node(Node("Gather", [o_full, index], [o_t], attrs=make_attrs(axis=axis)), position)
        g.value(o_t).dtype, g.value(o_t).shape = dtype, shape
    return _info(g, g.node(g.producer(o_full)), len(steps), first, 1)  # type: ignore[arg-type]


def _info(g: Graph, node: Node, steps: int, first: Step, sequences: int) -> ChainInfo:
    q_shape, v_shape = shape_of(g, node.inputs[0]), shape_of(g, node.inputs[2])
    return ChainInfo(
        node=node.name,
        steps=steps,
        heads=known_dim(v_shape, -2),
        key_dim=known_dim(q_shape, -1),
        value_dim=known_dim(v_shape, -1),
        layout=first.layout,
        gate=("per-key" if first.per_key else "per-head") + ("" if first.gate_is_log else ", direct"),
        initial_state=len(node.inputs) > 5 and bool(node.inputs[5]),
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
    if result.chains and fused_op.DOMAIN not in model.opset_imports:
        model.opset_imports[fused_op.DOMAIN] = fused_op.OPSET_VERSION
    return result

"""Group the chains of several sequences that share a state pool into ONE fused node.

A multi-sequence batch spelled out sequence by sequence (llama.cpp's unfused path, gdnc's
GGUF builder) looks like this: chain n starts from the pool row ``Gather(pool, slots[n])``
(a state without batch dims), step t reads row r of packed tensors (``Gather(X, r)``, r a
constant), and the final state goes back with ``ScatterND(pool', [[slots[n]]], state[None])``,
the sequences' writes chained one after the other. When, in sequence order, the chains read
exactly rows 0..T-1 of the same packed q, k, v, g and beta, they are ONE GatedDeltaNet over
the pool: packed inputs, ``cu_seqlens`` from the row ranges, ``state_in_index`` =
``state_out_index`` = ``slots``, and the pool after the last write as its pool output.

Chains that do not fit are left to the one-chain fusion; the reason comes back as a Miss.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from gdnc.ir.builder import GraphBuilder
from gdnc.ir.graph import Graph, Node
from gdnc.opset.gated_delta_net import GdnAttrs, fused_node
from gdnc.passes.delta_net.chains import Chain
from gdnc.passes.patterns import axes_of, norm_axes, producer, rank, static_shape
from gdnc.passes.rewrite import Miss

RULE = "delta-net-sequences"
FIELDS = ("q", "k", "v", "gate", "beta")


@dataclass(frozen=True)
class PoolChain:
    """One sequence's chain with its pool read (``slots[index]``) and its write-back nodes."""

    chain: Chain
    pool: str
    slots: str
    index: int
    update: int  # Unsqueeze(final state, 0)
    write: int  # ScatterND into the pool


def _scalar_gather(g: Graph, value: str) -> tuple[str, int] | None:
    """(X, r) when ``value`` = Gather(X, r) on axis 0 with a constant scalar r."""
    node = producer(g, value, "Gather")
    if node is None or node.attr("axis", 0) != 0:
        return None
    r = g.const_value(node.inputs[1])
    return None if r is None or r.ndim != 0 else (node.inputs[0], int(r))


def _pool_read(g: Graph, prev: str) -> tuple[str, str, str, int] | None:
    """(pool, slot, slots, n) when ``prev`` = Gather(pool, slot) with slot = slots[n]."""
    node = producer(g, prev, "Gather")
    if node is None or node.attr("axis", 0) != 0 or rank(g, node.inputs[1]) != 0:
        return None
    pool, slot = node.inputs
    found = _scalar_gather(g, slot)
    return None if found is None else (pool, slot, found[0], found[1])


def _indexes_slot(g: Graph, indices: str, slot: str) -> bool:
    """``indices`` is ``slot`` reshaped to [1, 1]."""
    value = indices
    while value != slot:
        node = producer(g, value, "Reshape", "Unsqueeze")
        if node is None:
            return False
        value = node.inputs[0]
    return static_shape(g, indices) == (1, 1)


def _pool_write(g: Graph, chain: Chain, slot: str) -> tuple[int, int] | Miss:
    last = chain.steps[-1]
    readers = [r for r in g.consumers(last.new) if r not in last.nodes]
    if len(readers) != 1 or g.is_graph_output(last.new):
        return Miss(RULE, f"{last.new}: the final state is not only written back to the pool", value=last.new)
    up = g.node(readers[0])
    axes = axes_of(g, up) if up.op_type == "Unsqueeze" else None
    if axes is None or norm_axes(axes, last.rank + 1) != [0]:
        return Miss(RULE, f"{last.new}: the final state is not unsqueezed for a pool write", value=last.new)
    writes = g.consumers(up.outputs[0])
    node = g.node(writes[0]) if len(writes) == 1 else None
    if node is None or node.op_type != "ScatterND" or node.inputs[2] != up.outputs[0] \
            or node.attr("reduction", "none") != "none":
        return Miss(RULE, f"{last.new}: the final state is not scattered into a pool", value=last.new)
    if not _indexes_slot(g, node.inputs[1], slot):
        return Miss(RULE, f"{last.new}: written to another slot than the one it was read from",
                    value=last.new)
    return readers[0], writes[0]


def _pool_chain(g: Graph, chain: Chain) -> PoolChain | Miss | None:
    first = chain.steps[0]
    if first.rank != 3:
        return None
    read = _pool_read(g, first.prev)
    if read is None:
        return None
    pool, slot, slots, n = read
    write = _pool_write(g, chain, slot)
    if isinstance(write, Miss):
        return write
    return PoolChain(chain, pool, slots, n, *write)


def _rows(g: Graph, members: list[PoolChain]) -> tuple[dict[str, str], list[int]] | Miss:
    """The packed tensor of every field and the sequence lengths, or why not."""
    packed: dict[str, str] = {}
    lengths, next_row = [], 0
    for m in members:
        for step in m.chain.steps:
            rows = set()
            for f in FIELDS:
                found = _scalar_gather(g, getattr(step, f))
                if found is None:
                    return Miss(RULE, f"{step.new}: {f} is not a constant row of a packed tensor",
                                value=step.new)
                if packed.setdefault(f, found[0]) != found[0]:
                    return Miss(RULE, f"{step.new}: {f} reads {found[0]}, not {packed[f]}", value=step.new)
                rows.add(found[1])
            if rows != {next_row}:
                return Miss(RULE, f"{step.new}: reads rows {sorted(rows)}, expected row {next_row}",
                            value=step.new)
            next_row += 1
        lengths.append(m.chain.length)
    for f, x in packed.items():
        shape = static_shape(g, x)
        if shape is None or shape[0] != next_row:
            return Miss(RULE, f"{x}: the sequences cover {next_row} of its rows, not all", value=x)
    return packed, lengths


def _group_miss(g: Graph, members: list[PoolChain]) -> Miss | None:
    first = members[0]
    n = len(members)
    if [m.index for m in members] != list(range(n)) or static_shape(g, first.slots) != (n,):
        return Miss(RULE, f"{first.slots}: the chains do not read slots 0..{n - 1} of it once each",
                    value=first.slots)
    kinds = {(m.chain.steps[0].layout, m.chain.steps[0].per_key, m.chain.steps[0].gate_is_log)
             for m in members}
    if len(kinds) != 1:
        return Miss(RULE, f"{first.pool}: the sequences' steps differ in layout or gate kind",
                    value=first.pool)
    data = first.pool
    for m in members:
        node = g.node(m.write)
        if node.inputs[0] != data:
            return Miss(RULE, f"{node.outputs[0]}: pool writes are not chained in sequence order",
                        value=node.outputs[0])
        data = node.outputs[0]
        if m is not members[-1] and (len(g.consumers(data)) != 1 or g.is_graph_output(data)):
            return Miss(RULE, f"{data}: an intermediate pool is read by something else", value=data)
    return None


def group_sequences(g: Graph, chains: list[Chain]) -> tuple[list[list[PoolChain]], list[Chain], list[Miss]]:
    """Pool-sharing groups of chains (sequence order), the chains left, and the reasons."""
    by_pool: dict[tuple[str, str], list[PoolChain]] = defaultdict(list)
    rest: list[Chain] = []
    misses: list[Miss] = []
    for chain in chains:
        found = _pool_chain(g, chain)
        if isinstance(found, PoolChain):
            by_pool[(found.pool, found.slots)].append(found)
            continue
        if isinstance(found, Miss):
            misses.append(found)
        rest.append(chain)
    groups = []
    for members in by_pool.values():
        members.sort(key=lambda m: m.index)
        refused = _group_miss(g, members)
        if refused is None:
            groups.append(members)
        else:
            misses.append(refused)
            rest.extend(m.chain for m in members)
    return groups, rest, misses


def fuse_group(g: Graph, members: list[PoolChain], name: str) -> tuple[Node, list[int]] | Miss:
    """Replace the group's chains and pool writes by ONE node; returns it and the lengths."""
    found = _rows(g, members)
    if isinstance(found, Miss):
        return found
    packed, lengths = found
    first = members[0].chain.steps[0]
    steps = [s for m in members for s in m.chain.steps]
    removed = {n for s in steps for n in s.nodes} | {n for m in members for n in (m.update, m.write)}
    position = max(g.position(n) for n in removed)
    pool_out = g.node(members[-1].write).outputs[0]
    meta = {v: (g.value(v).dtype, g.value(v).shape) for v in [pool_out, *(s.o for s in steps)]}
    g.remove_nodes(removed)
    b = GraphBuilder(g, position=position, prefix=f"{name}_")
    gate = packed["gate"]
    if not first.gate_is_log:
        gate = b.typed(b.op("Log", gate, hint="g"), g.value(gate).dtype, g.value(gate).shape)
    cu = b.const([0, *np.cumsum(lengths)], hint=f"{name}_cu_seqlens")
    slots = members[0].slots
    o = b.fresh(f"{name}_o")
    node = fused_node({"q": packed["q"], "k": packed["k"], "v": packed["v"], "g": gate,
                       "beta": packed["beta"], "state": members[0].pool, "cu_seqlens": cu,
                       "state_in_index": slots, "state_out_index": slots},
                      {"o": o, "final_state": pool_out},
                      GdnAttrs(scale=1.0, state_layout=first.layout), name)
    b.add(node)
    b.typed(o, g.value(packed["v"]).dtype, static_shape(g, packed["v"]))
    b.typed(pool_out, *meta[pool_out])
    for r, s in enumerate(steps):
        b.typed(b.op("Gather", o, b.const(r, hint=f"gdn_t{r}"), out=s.o, axis=0), *meta[s.o])
    return node, lengths

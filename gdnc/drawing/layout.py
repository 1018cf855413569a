"""Layered (top-to-bottom) layout of a small DAG of boxes, in inches.

Sugiyama in brief: each node gets a layer (as late as its readers allow, so a side input
sits right above the op reading it), edges spanning several layers get a bend point per
layer in between, the order within layers comes from barycenter sweeps (fewest crossings
kept), and x positions from repeated projections onto each node's neighbours' mean, keeping
boxes ``hgap`` apart (isotonic regression, pool-adjacent-violators).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import networkx as nx

Point = tuple[float, float]
_BEND_WIDTH = 0.12
_SWEEPS = 12
_PORT_STEP = 0.18  # inches between edge ends on one side of a box


@dataclass(frozen=True)
class Layout:
    """Centres of the nodes, and each edge ``(u, v)`` as points from ``u``'s bottom edge
    through its bends to ``v``'s top edge; ``width`` x ``height`` covers everything, y grows up."""

    centers: dict[Hashable, Point]
    edges: dict[tuple[Hashable, Hashable], list[Point]]
    width: float
    height: float


def _layers(dag: nx.DiGraph) -> dict[Hashable, int]:
    layer: dict[Hashable, int] = {}
    for n in nx.topological_sort(dag):
        layer[n] = max((layer[p] + 1 for p in dag.predecessors(n)), default=0)
    for n in reversed(list(nx.topological_sort(dag))):
        succ = [layer[s] for s in dag.successors(n)]
        if succ:
            layer[n] = min(succ) - 1
    low = min(layer.values())
    return {n: v - low for n, v in layer.items()}


def _with_bends(dag: nx.DiGraph, layer: dict[Hashable, int]) -> tuple[nx.DiGraph, dict, dict]:
    """``dag`` with a bend node per layer crossed; the bends of every original edge."""
    full = nx.DiGraph()
    full.add_nodes_from(dag.nodes)
    level = dict(layer)
    bends: dict[tuple[Hashable, Hashable], list[Hashable]] = {}
    for u, v in dag.edges:
        crossed = range(layer[u] + 1, layer[v])
        chain: list[Hashable] = [("bend", u, v, i) for i in crossed]
        level.update(zip(chain, crossed))
        nx.add_path(full, [u, *chain, v])
        bends[(u, v)] = chain
    return full, level, bends


def _crossings(full: nx.DiGraph, rows: list[list[Hashable]]) -> int:
    count = 0
    for upper, lower in zip(rows, rows[1:]):
        pos = {n: i for i, n in enumerate(lower)}
        pairs = [(i, pos[s]) for i, n in enumerate(upper) for s in full.successors(n)]
        count += sum(1 for a, b in pairs for c, d in pairs if a < c and b > d)
    return count


def _by_barycenter(row: list[Hashable], ref: list[Hashable], near) -> list[Hashable]:
    """``row`` sorted by the mean position of each node's neighbours ``near(n)`` in ``ref``."""
    at = {n: j for j, n in enumerate(ref)}
    old = {n: j for j, n in enumerate(row)}

    def center(n: Hashable) -> float:
        seen = [at[m] for m in near(n)]
        return sum(seen) / len(seen) if seen else old[n]
    return sorted(row, key=center)


def _order(full: nx.DiGraph, level: dict[Hashable, int]) -> list[list[Hashable]]:
    rows: list[list[Hashable]] = [[] for _ in range(max(level.values()) + 1)]
    for n in nx.dfs_preorder_nodes(full):
        rows[level[n]].append(n)
    best, best_count = [list(r) for r in rows], _crossings(full, rows)
    for sweep in range(_SWEEPS):
        if sweep % 2 == 0:
            for i in range(1, len(rows)):
                rows[i] = _by_barycenter(rows[i], rows[i - 1], full.predecessors)
        else:
            for i in range(len(rows) - 2, -1, -1):
                rows[i] = _by_barycenter(rows[i], rows[i + 1], full.successors)
        count = _crossings(full, rows)
        if count < best_count:
            best, best_count = [list(r) for r in rows], count
    return best


def _pack(desired: list[float], widths: list[float], gap: float) -> list[float]:
    """Centres as close to ``desired`` as possible (least squares), in order, boxes ``gap`` apart."""
    offsets = [0.0]
    for a, b in zip(widths, widths[1:]):
        offsets.append(offsets[-1] + (a + b) / 2 + gap)
    blocks: list[tuple[float, int]] = []  # (mean, count) of pooled positions
    for d, off in zip(desired, offsets):
        blocks.append((d - off, 1))
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m2, n2), (m1, n1) = blocks.pop(), blocks.pop()
            blocks.append(((m1 * n1 + m2 * n2) / (n1 + n2), n1 + n2))
    base = [m for m, n in blocks for _ in range(n)]
    return [b + off for b, off in zip(base, offsets)]


def layered_layout(dag: nx.DiGraph, sizes: dict[Hashable, tuple[float, float]],
                   hgap: float = 0.25, vgap: float = 0.32) -> Layout:
    """Lay out ``dag`` (nodes sized ``sizes[n]`` = (width, height) in inches) top to bottom."""
    full, level, bends = _with_bends(dag, _layers(dag))
    rows = _order(full, level)
    width = {n: sizes[n][0] if n in sizes else _BEND_WIDTH for n in full}
    x: dict[Hashable, float] = {}
    for row in rows:
        x.update(zip(row, _pack([0.0] * len(row), [width[n] for n in row], hgap)))
    for sweep in range(4 * _SWEEPS):
        order = rows if sweep % 2 == 0 else rows[::-1]
        for row in order:
            desired = []
            for n in row:
                near = [x[m] for m in (*full.predecessors(n), *full.successors(n))]
                desired.append(sum(near) / len(near) if near else x[n])
            x.update(zip(row, _pack(desired, [width[n] for n in row], hgap)))
    heights = [max((sizes[n][1] for n in row if n in sizes), default=0.0) for row in rows]
    y, top = {}, 0.0
    for row, h in zip(rows, heights):
        for n in row:
            y[n] = top - h / 2
        top -= h + vgap
    left = min(x[n] - width[n] / 2 for n in full)
    right = max(x[n] + width[n] / 2 for n in full)
    height = -top - vgap
    centers = {n: (x[n] - left, y[n] + height) for n in dag.nodes}
    edges = {e: [(x[b] - left, y[b] + height) for b in chain] for e, chain in bends.items()}
    for n, (cx, cy) in centers.items():
        w, h = sizes[n]
        ins = sorted(dag.in_edges(n), key=lambda e: (edges[e] or [centers[e[0]]])[-1][0])
        for e, dx in zip(ins, _ports(len(ins), w)):
            edges[e].append((cx + dx, cy + h / 2))
        outs = sorted(dag.out_edges(n), key=lambda e: (edges[e] or [centers[e[1]]])[0][0])
        for e, dx in zip(outs, _ports(len(outs), w)):
            edges[e].insert(0, (cx + dx, cy - h / 2))
    return Layout(centers, edges, right - left, height)


def _ports(count: int, width: float) -> list[float]:
    """Offsets from a box's centre of ``count`` edge ends spread along a side ``width`` long."""
    step = min(_PORT_STEP, width * 0.8 / max(count, 1))
    return [(i - (count - 1) / 2) * step for i in range(count)]

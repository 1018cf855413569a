"""Link matched steps into per-sequence chains (step t's new state is step t+1's previous)."""

from __future__ import annotations

from dataclasses import dataclass

from gdnc.ir.graph import Graph
from gdnc.passes.delta_net.steps import RULE, Step, match_step
from gdnc.passes.rewrite import Miss


@dataclass(frozen=True)
class Chain:
    steps: tuple[Step, ...]

    @property
    def length(self) -> int:
        return len(self.steps)


def _reader_names(g: Graph, nids: set[int]) -> str:
    return ", ".join(sorted(g.node(n).name or g.node(n).op_type for n in nids))


def _check(g: Graph, steps: list[Step]) -> Miss | None:
    """Reasons a linked run of steps must not become one node, or None."""
    first = steps[0]
    for i, (s, nxt) in enumerate(zip(steps, steps[1:])):
        extra = set(g.consumers(s.new)) - s.nodes - nxt.nodes
        if extra:
            who = _reader_names(g, extra)
            return Miss(RULE, f"step {i}: state {s.new} is also read by node {who}", value=s.new, node=who)
        if g.is_graph_output(s.new):
            return Miss(RULE, f"step {i}: state {s.new} is a graph output", value=s.new)
    for i, s in enumerate(steps):
        same = (s.layout, s.per_key, s.gate_is_log, s.rank) == (
            first.layout, first.per_key, first.gate_is_log, first.rank)
        if not same:
            return Miss(RULE, f"step {i}: layout or gate kind differs from step 0 of its chain",
                        value=s.new)
    return None


def find_chains(g: Graph) -> tuple[list[Chain], list[Miss]]:
    """Every maximal chain of steps, and the near-misses (steps or chains refused, why)."""
    steps: list[Step] = []
    misses: list[Miss] = []
    for nid in g.node_ids():
        node = g.node(nid)
        if node.op_type != "Add":
            continue
        found = match_step(g, nid)
        if isinstance(found, Miss):
            misses.append(found)
        elif found is not None:
            steps.append(found)
    news = {s.new for s in steps}
    # chains may share an initial state (a zeros constant, say); a step's new state read by
    # two steps is a fork, and a chain through it is refused
    by_prev: dict[str, Step] = {}
    forks: set[str] = set()
    for s in steps:
        if s.prev in news:
            if s.prev in by_prev:
                forks.add(s.prev)
            by_prev[s.prev] = s
    chains: list[Chain] = []
    for start in (s for s in steps if s.prev not in news):
        run = [start]
        while run[-1].new in by_prev and run[-1].new not in forks:
            run.append(by_prev[run[-1].new])
        refused = _check(g, run)
        if refused is None and run[-1].new in forks:
            refused = Miss(RULE, f"state {run[-1].new} feeds two steps", value=run[-1].new)
        if refused is None:
            chains.append(Chain(tuple(run)))
        else:
            misses.append(refused)
    return chains, misses

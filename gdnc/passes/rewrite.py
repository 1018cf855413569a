"""The one rewrite loop: apply a list of declarative rules to a graph until nothing fires.

A rule is an object with ``name``, ``ops`` (anchor op types; empty = every node) and
``apply(graph, node_id) -> bool | Miss``: True when it rewrote the graph, False when it does
not apply, or a ``Miss`` (a near-miss with a reason) worth reporting. Rules are stateless.
Matchers combine with ``+`` (plain lists). ``graph_rewrite`` counts fires per rule.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gdnc.errors import RewriteError
from gdnc.ir.graph import Graph


@dataclass(frozen=True)
class Miss:
    """A rule that nearly applied: ``reason`` says why, in words; ``value`` and ``node`` name the
    value and node it is about ("" when none)."""

    rule: str
    reason: str
    value: str = ""
    node: str = ""

    def to_json(self) -> dict[str, str]:
        """``rule`` and ``reason``, with ``value`` and ``node`` where known."""
        return {k: v for k, v in vars(self).items() if v or k in ("rule", "reason")}


class Rule(Protocol):
    name: str
    ops: tuple[str, ...]

    def apply(self, graph: Graph, nid: int) -> bool | Miss: ...


@dataclass
class RewriteStats:
    """What one named rewrite stage did."""

    name: str
    fired: Counter[str] = field(default_factory=Counter)
    misses: list[Miss] = field(default_factory=list)  # of every round, each once
    rounds: int = 0

    def add_miss(self, miss: Miss) -> None:
        if miss not in self.misses:
            self.misses.append(miss)


def graph_rewrite(graph: Graph, rules: Sequence[Rule], name: str, max_rounds: int = 50) -> RewriteStats:
    """Apply ``rules`` over the nodes in topological order, round after round, to a fixpoint."""
    stats = RewriteStats(name)
    by_op: dict[str, list[Rule]] = {}
    generic = [r for r in rules if not r.ops]
    for rule in rules:
        for op in rule.ops:
            by_op.setdefault(op, []).append(rule)
    for _ in range(max_rounds):
        stats.rounds += 1
        changed = False
        for nid in graph.topological_order():
            if not graph.has_node(nid):
                continue
            for rule in by_op.get(graph.node(nid).op_type, []) + generic:
                result = rule.apply(graph, nid)
                if isinstance(result, Miss):
                    stats.add_miss(result)
                elif result:
                    stats.fired[rule.name] += 1
                    changed = True
                    break
        if not changed:
            return stats
    raise RewriteError(f"rewrite stage {name!r} did not converge in {max_rounds} rounds")

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
    """What one named rewrite stage did. ``misses`` holds the near-misses of every round, each
    once, less those of a rule that later fired at the same node (no miss after all)."""

    name: str
    fired: Counter[str] = field(default_factory=Counter)
    rounds: int = 0
    _misses: dict[tuple[str, int], list[Miss]] = field(default_factory=dict)

    @property
    def misses(self) -> list[Miss]:
        return list(dict.fromkeys(m for found in self._misses.values() for m in found))

    def missed(self, rule: str, nid: int, miss: Miss) -> None:
        found = self._misses.setdefault((rule, nid), [])
        if miss not in found:
            found.append(miss)

    def applied(self, rule: str, nid: int) -> None:
        self.fired[rule] += 1
        self._misses.pop((rule, nid), None)


def graph_rewrite(graph: Graph, rules: Sequence[Rule], name: str, max_rounds: int = 50,
                  stats: RewriteStats | None = None) -> RewriteStats:
    """Apply ``rules`` over the nodes in topological order, round after round, to a fixpoint;
    ``stats`` (default: new) carries on the counts and misses of an earlier call."""
    stats = RewriteStats(name) if stats is None else stats
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
                    stats.missed(rule.name, nid, result)
                elif result:
                    stats.applied(rule.name, nid)
                    changed = True
                    break
        if not changed:
            return stats
    raise RewriteError(f"rewrite stage {name!r} did not converge in {max_rounds} rounds")

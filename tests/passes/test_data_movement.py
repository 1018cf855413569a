"""FoldDataMovement on hand-built regions, and the miss it reports (with value and node)."""

from __future__ import annotations

import numpy as np

from gdnc.ir.builder import FLOAT, GraphBuilder
from gdnc.ir.graph import Graph
from gdnc.passes.data_movement import FoldDataMovement
from gdnc.passes.rewrite import Miss, graph_rewrite
from gdnc.passes.shapes import infer_shapes
from gdnc.runtime.executor import Executor


def _graph(rows: list[int]) -> tuple[Graph, GraphBuilder]:
    """out = Concat of x[r][None] for r in ``rows`` (x [4, 3])."""
    e = GraphBuilder.new("move")
    x = e.input("x", FLOAT, [4, 3])
    e.output(e.concat([e.unsqueeze(e.gather(x, r, 0), 0) for r in rows], 0), "out")
    model = e.model()
    infer_shapes(model)
    return e.graph, e


def test_a_stack_of_all_rows_in_order_folds_away() -> None:
    g, e = _graph([0, 1, 2, 3])
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    stats = graph_rewrite(g, [FoldDataMovement()], "fold")
    assert stats.fired == {"fold-data-movement": 1} and stats.misses == []
    assert "Concat" not in g.op_histogram()
    np.testing.assert_array_equal(Executor(e.model()).run({"x": x})["out"].numpy(), x)


def test_a_permutation_of_rows_is_a_miss_naming_the_concat() -> None:
    g, _ = _graph([1, 0, 3, 2])
    (concat,) = (n for n in g.node_ids() if g.node(n).op_type == "Concat")
    value = g.node(concat).outputs[0]
    stats = graph_rewrite(g, [FoldDataMovement()], "fold")
    assert stats.fired == {}
    assert stats.misses == [Miss("fold-data-movement", f"{value!r} is not a transpose/reshape of 'x'",
                                 value=value, node=g.node(concat).name)]


def test_the_misses_of_every_round_are_kept() -> None:
    """A miss reported in round 1 only stays in the stats after round 2."""
    g, _ = _graph([0, 1, 2, 3])
    calls = {"miss": 0, "fire": 0}

    class MissOnce:
        name, ops = "miss-once", ("Identity",)

        def apply(self, graph: Graph, nid: int) -> bool | Miss:
            calls["miss"] += 1
            return Miss(self.name, "first round", value="out") if calls["miss"] == 1 else False

    class FireOnce:
        name, ops = "fire-once", ("Identity",)

        def apply(self, graph: Graph, nid: int) -> bool:
            calls["fire"] += 1
            return calls["fire"] == 1

    stats = graph_rewrite(g, [MissOnce(), FireOnce()], "rounds")
    assert stats.rounds == 2 and stats.fired == {"fire-once": 1}
    assert stats.misses == [Miss("miss-once", "first round", value="out")]


def test_a_miss_of_a_rule_that_later_fires_at_its_node_is_dropped() -> None:
    g, _ = _graph([0, 1, 2, 3])
    calls = {"n": 0, "other": 0}

    class MissThenFire:
        name, ops = "miss-then-fire", ("Identity",)

        def apply(self, graph: Graph, nid: int) -> bool | Miss:
            calls["n"] += 1
            return Miss(self.name, "not yet") if calls["n"] == 1 else calls["n"] == 2

    class FireOnce:  # makes a second round
        name, ops = "fire-once", ("Identity",)

        def apply(self, graph: Graph, nid: int) -> bool:
            calls["other"] += 1
            return calls["other"] == 1

    stats = graph_rewrite(g, [MissThenFire(), FireOnce()], "rounds")
    assert stats.fired == {"miss-then-fire": 1, "fire-once": 1} and stats.misses == []

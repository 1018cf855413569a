"""The conversion pipeline: a list of named stages over one Model, with a report."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from gdnc import progress
from gdnc.ir.graph import Model
from gdnc.passes.canonicalize import canonicalize
from gdnc.passes.cleanup import CLEANUP_RULES, dead_code_elimination
from gdnc.passes.constant_fold import fold_constants
from gdnc.passes.data_movement import FoldDataMovement
from gdnc.passes.delta_net import ABSORB_RULES, UNFUSED_RULES, ChainInfo, fuse_delta_nets
from gdnc.passes.rewrite import Miss, RewriteStats, graph_rewrite
from gdnc.passes.shapes import infer_shapes


@dataclass
class ConversionReport:
    """What the pipeline did: chains fused, node counts, rule fires, near-misses, timing."""

    nodes_before: int
    nodes_after: int = 0
    ops_before: dict[str, int] = field(default_factory=dict)
    ops_after: dict[str, int] = field(default_factory=dict)
    chains: list[ChainInfo] = field(default_factory=list)
    misses: list[Miss] = field(default_factory=list)
    fired: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    target: str = "native"

    @property
    def unfused(self) -> list[Miss]:
        """The near-misses that left a candidate step or chain unfused (``UNFUSED_RULES``)."""
        return [m for m in self.misses if m.rule in UNFUSED_RULES]

    def to_json(self) -> dict:
        return {
            "target": self.target,
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "ops_before": self.ops_before,
            "ops_after": self.ops_after,
            "chains": [vars(c) for c in self.chains],
            "near_misses": [m.to_json() for m in self.misses],
            "rules_fired": dict(self.fired),
            "seconds": round(self.seconds, 4),
        }


Stage = Callable[[Model, ConversionReport], None]


def _fold(model: Model, report: ConversionReport) -> None:
    report.fired["constant-fold"] += fold_constants(model)


def _shapes(model: Model, report: ConversionReport) -> None:
    infer_shapes(model)


def _canonicalize(model: Model, report: ConversionReport) -> None:
    report.fired.update(canonicalize(model.graph).fired)


def _fuse(model: Model, report: ConversionReport) -> None:
    result = fuse_delta_nets(model)
    report.chains.extend(result.chains)
    report.misses.extend(result.misses)
    report.fired["fuse-gated-delta-net"] += len(result.chains)


def _simplify(model: Model, report: ConversionReport) -> None:
    """Fold, clean and absorb to a fixpoint, removing dead nodes between rounds (a rule
    that looks at the readers of a value, like the scale absorption, needs them gone)."""
    opset = model.opset("")
    rules = [FoldDataMovement(opset=opset), *CLEANUP_RULES, *ABSORB_RULES(opset)]
    stats = RewriteStats("simplify")
    for _ in range(20):
        fired = sum(stats.fired.values())
        graph_rewrite(model.graph, rules, "simplify", stats=stats)
        removed = dead_code_elimination(model.graph)
        report.fired["dead-code"] += removed
        if sum(stats.fired.values()) == fired and not removed:
            break
    report.fired.update(stats.fired)
    report.misses.extend(stats.misses)


STAGES: list[tuple[str, Stage]] = [
    ("shapes", _shapes),
    ("fold-constants", _fold),
    ("shapes-2", _shapes),
    ("canonicalize", _canonicalize),
    ("fuse", _fuse),
    ("simplify", _simplify),
    ("shapes-3", _shapes),
]


def fuse_model(
    model: Model, *, dump_after: Callable[[str, Model], None] | None = None
) -> ConversionReport:
    """Run every stage on ``model`` in place; ``dump_after(stage, model)`` sees each result."""
    start = time.perf_counter()
    g = model.graph
    report = ConversionReport(nodes_before=len(g), ops_before=g.op_histogram())
    bar = progress.task("converting", total=len(STAGES))
    for name, stage in STAGES:
        bar.describe(f"converting: {name}")
        stage(model, report)
        bar.advance()
        if dump_after is not None:
            dump_after(name, model)
    g.check()
    report.nodes_after = len(g)
    report.ops_after = g.op_histogram()
    report.seconds = time.perf_counter() - start
    return report

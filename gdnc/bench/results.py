"""What ``gdnc bench`` measured: suites of rows, one row per batch size or length, one
``Measure`` per competitor; ``to_json`` gives the ``--json`` object."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gdnc.bench.options import GdnShape
from gdnc.bench.timing import Timing

FUSED = "fused"  # the competitor every ratio compares against
UNFUSED = "unfused"


@dataclass(frozen=True)
class Measure:
    """One competitor at one point: time per call, tokens/s, and for op-level decode the state
    bytes read + written per second (``gbps``) and its share of the copy bandwidth."""

    median_ms: float
    min_ms: float
    tok_s: float
    gbps: float | None = None
    pct_copy_bw: float | None = None

    @classmethod
    def of(cls, timing: Timing, tokens: int, state_bytes: int | None = None,
           copy_gbps: float = math.nan) -> Measure:
        """``tokens`` per call; ``state_bytes`` read and written per call (decode at op level)."""
        gbps = None if state_bytes is None else state_bytes / timing.median_s / 1e9
        return cls(timing.median_s * 1e3, timing.min_s * 1e3, tokens / timing.median_s, gbps,
                   None if gbps is None else 100 * gbps / copy_gbps)

    def to_json(self) -> dict[str, float]:
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass
class Row:
    x: int
    results: dict[str, Measure] = field(default_factory=dict)

    def speedups(self) -> dict[str, float]:
        """Fused throughput over each other competitor's (> 1: fused is faster)."""
        if FUSED not in self.results:
            return {}
        fused = self.results[FUSED].tok_s
        return {name: fused / m.tok_s for name, m in self.results.items() if name != FUSED}


@dataclass
class Suite:
    """``key``: model_decode, model_prefill, op_decode or op_prefill; ``x_name``: batch or
    length; ``skipped``: competitor -> why it did not run (not installed, ...). Op decode:
    ``cache_resident``, point -> bytes of its rotated pools where they are too few to overflow
    the ``cache_bytes`` of last-level cache as planned (part of the state reads hit the cache:
    such a point can pass 100% of the copy bandwidth)."""

    key: str
    title: str
    x_name: str
    xs: tuple[int, ...]
    shape: GdnShape | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    cache_bytes: int = 0
    cache_resident: dict[int, int] = field(default_factory=dict)
    rows: list[Row] = field(init=False)

    def __post_init__(self) -> None:
        self.rows = [Row(x) for x in self.xs]

    def row(self, x: int) -> Row:
        return self.rows[self.xs.index(x)]

    @property
    def competitors(self) -> list[str]:
        """Names measured in any row, first-measured first."""
        return list(dict.fromkeys(name for row in self.rows for name in row.results))

    def to_json(self) -> dict[str, object]:
        return {
            "suite": self.key, "title": self.title, "x": self.x_name,
            "shape": None if self.shape is None else vars(self.shape),
            "competitors": self.competitors, "skipped": self.skipped,
            "cache_bytes": self.cache_bytes, "cache_resident": self.cache_resident,
            "rows": [{self.x_name: r.x, **{n: m.to_json() for n, m in r.results.items()},
                      "fused_speedup": r.speedups()} for r in self.rows],
        }


@dataclass
class BenchResult:
    model: str
    arch: str
    device: dict[str, object]
    rounds: int
    copy_bandwidth_gbps: float = math.nan
    suites: list[Suite] = field(default_factory=list)
    wall_s: float = math.nan
    load: tuple[float, ...] = ()  # 1-minute load average at start and end (where the OS says)

    def suite(self, key: str) -> list[Suite]:
        return [s for s in self.suites if s.key == key]

    def to_json(self) -> dict[str, object]:
        return {"model": self.model, "arch": self.arch, "device": self.device,
                "threads": self.device["threads"], "copy_bandwidth_GBps": self.copy_bandwidth_gbps,
                "rounds": self.rounds, "wall_s": self.wall_s, "load_average": list(self.load),
                "suites": [s.to_json() for s in self.suites]}

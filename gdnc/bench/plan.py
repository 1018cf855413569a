"""A benchmark run as a list of jobs, one competitor at one point of a suite each (so that
progress can count them), over a shared context."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from gdnc.bench.options import BenchOptions
from gdnc.bench.results import Measure, Suite
from gdnc.bench.timing import copy_bandwidth, synchronizer

WARMUP = 2  # untimed calls before the rounds (the first one builds graphs, compiles kernels)


@dataclass
class Context:
    """The device, its synchronizer and the options; ``copy_gbps`` is measured before the jobs run."""

    device: torch.device
    opts: BenchOptions
    copy_gbps: float = math.nan
    sync: Callable[[], None] = field(init=False)

    def __post_init__(self) -> None:
        self.sync = synchronizer(self.device)

    def measure_copy_bandwidth(self) -> None:
        self.copy_gbps = copy_bandwidth(self.device, self.opts.rounds)


@dataclass(frozen=True)
class Job:
    """``measure()`` is competitor ``name`` at point ``x`` of ``suite``, or None when it could
    not run (the reason then in ``suite.skipped``)."""

    label: str
    suite: Suite
    x: int
    name: str
    measure: Callable[[], Measure | None]

    def run(self) -> None:
        result = self.measure()
        if result is not None:
            self.suite.row(self.x).results[self.name] = result

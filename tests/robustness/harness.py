"""Run hostile cases through gdnc's command line in-process and hold them to the promise.

The promise for a bad input: a non-zero exit, ONE line on stderr that names the problem, no
Python traceback and no "internal error", done within ``DEADLINE_S`` seconds, and no Python-
level allocation beyond ``MEMORY_LIMIT`` bytes (numpy arrays are traced by tracemalloc, so an
allocation sized from an unvalidated count shows up here). Every case is tallied in ``TALLY``;
``conftest.py`` prints the counts at the end of the run.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import signal
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from gdnc import cli

DEADLINE_S = 10.0
MEMORY_LIMIT = 256 << 20


@dataclass
class Outcome:
    """What one in-process ``gdnc ...`` call did."""

    args: list[str]
    code: int
    stdout: str
    stderr: str
    seconds: float
    peak_bytes: int

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


@dataclass
class Tally:
    """Counts per suite: cases tried, refused with a one-line error, accepted, broken."""

    tried: Counter = field(default_factory=Counter)
    refused: Counter = field(default_factory=Counter)
    accepted: Counter = field(default_factory=Counter)
    broken: list[str] = field(default_factory=list)
    notes: Counter = field(default_factory=Counter)  # (suite, outcome) -> cases

    def note(self, suite: str, outcome: str) -> None:
        """Count one case of ``suite`` that ended in ``outcome`` (other than refused/accepted)."""
        self.tried[suite] += 1
        self.notes[suite, outcome] += 1

    def lines(self) -> list[str]:
        out = []
        for suite in sorted(self.tried):
            parts = [f"{self.refused[suite]} refused with a one-line error"] if self.refused[suite] else []
            parts += [f"{self.accepted[suite]} accepted"] if self.accepted[suite] else []
            parts += [f"{n} {outcome}" for (s, outcome), n in sorted(self.notes.items()) if s == suite]
            parts.append(f"{sum(b.startswith(suite + ':') for b in self.broken)} crashed or hung")
            out.append(f"{suite}: {self.tried[suite]} cases tried: {', '.join(parts)}")
        return out


TALLY = Tally()

# what the commands import lazily: imported once up front, so no case pays (or traces) it
_LAZY_IMPORTS = (
    "gdnc.commands.convert", "gdnc.commands.inspect", "gdnc.commands.run", "gdnc.commands.compare",
    "gdnc.commands.logits", "gdnc.commands.onnx_compare", "gdnc.commands.generate",
    "gdnc.commands.gguf_compare", "gdnc.commands.gguf_export", "gdnc.commands.compare_report",
    "gdnc.frontends.gguf_file", "gdnc.models.qwen_hybrid.graph",
    "gdnc.frontends.onnx_model", "gdnc.runtime.executor", "gdnc.models.qwen_hybrid.model",
    "gdnc.opset.registry", "gdnc.ir.to_onnx", "gdnc.passes.pipeline", "click",
)


class DeadlineExceeded(Exception):
    pass


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise DeadlineExceeded in the main thread if the block runs longer than ``seconds``."""
    def _alarm(signum, frame):
        raise DeadlineExceeded(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_cli(args: list[str], *, seconds: float = DEADLINE_S) -> Outcome:
    """``gdnc ARGS`` in this process, as the console entry point runs it."""
    for name in _LAZY_IMPORTS:
        importlib.import_module(name)
    stdout, stderr = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["gdnc", *args]
    tracemalloc.start()
    start = time.perf_counter()
    code = 0
    try:
        with deadline(seconds), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                cli.main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        sys.argv = argv
    return Outcome(list(args), code, stdout.getvalue(), stderr.getvalue(), elapsed, peak)


def hold_to_promise(suite: str, case: str, outcome: Outcome, *, mention: str | None = None,
                    may_succeed: bool = False) -> None:
    """Tally ``outcome`` and assert the promise; ``mention``: a fragment the error must name."""
    TALLY.tried[suite] += 1
    problems = []
    if outcome.seconds > DEADLINE_S:
        problems.append(f"took {outcome.seconds:.1f} s")
    if outcome.peak_bytes > MEMORY_LIMIT:
        problems.append(f"allocated {outcome.peak_bytes >> 20} MiB")
    if "Traceback" in outcome.stderr or "internal error" in outcome.stderr:
        problems.append(f"crashed: {outcome.stderr.strip()[-400:]}")
    elif outcome.code == 0:
        if not may_succeed:
            problems.append("exit code 0 for a bad input")
    else:
        lines = outcome.error_lines
        if len(lines) != 1 or not lines[0].startswith("error: "):
            problems.append(f"error is not one 'error: ...' line: {outcome.stderr!r}")
        elif mention is not None and mention.lower() not in lines[0].lower():
            problems.append(f"error does not mention {mention!r}: {lines[0]}")
    if problems:
        TALLY.broken.append(f"{suite}: {case}: {'; '.join(problems)}")
        raise AssertionError(f"{case}: {'; '.join(problems)}")
    if outcome.code == 0:
        TALLY.accepted[suite] += 1
    else:
        TALLY.refused[suite] += 1

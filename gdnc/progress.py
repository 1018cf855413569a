"""Progress bars for the command line (rich, on stderr); library code reports through here.

Library loops call :func:`track` (a sequence of known length) or :func:`task` (a count that
grows as work is done). With no bars opened, the library use, ``--json`` and ``--quiet``, they
cost nothing and print nothing. The CLI opens them once around a command with :func:`bars`;
they are transient: the report printed afterwards stays, the bars go.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

T = TypeVar("T")
_active: ContextVar[Progress | None] = ContextVar("gdnc_progress", default=None)


@contextmanager
def bars(console: Console, enabled: bool = True) -> Iterator[Progress | None]:
    """Show the tasks the block starts as bars on ``console`` (nothing when not ``enabled`` or
    when ``console`` is not a terminal: logs and pipes get no bars)."""
    if not (enabled and console.is_terminal):
        yield None
        return
    prog = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True)
    token = _active.set(prog)
    try:
        with prog:
            yield prog
    finally:
        _active.reset(token)


class Task:
    """One bar: ``advance(n)`` as work is done; ``describe(text)`` for the stage now running.
    A bar whose total is reached goes away (finished steps do not pile up under a long task)."""

    def __init__(self, prog: Progress | None, description: str, total: int | None) -> None:
        self._prog = prog
        self._id: TaskID | None = None if prog is None else prog.add_task(description, total=total)

    def advance(self, n: int = 1) -> None:
        if self._prog is not None and self._id is not None:
            self._prog.advance(self._id, n)
            if next(t for t in self._prog.tasks if t.id == self._id).finished:
                self._prog.remove_task(self._id)
                self._id = None

    def describe(self, description: str) -> None:
        if self._prog is not None and self._id is not None:
            self._prog.update(self._id, description=description)


def task(description: str, total: int | None = None) -> Task:
    """A bar in the open :func:`bars` (a no-op Task when none is open); ``total`` None: a
    spinner with a count."""
    return Task(_active.get(), description, total)


def track(items: Sequence[T] | Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate ``items``, advancing a bar of ``total`` (default ``len(items)``) as each is done."""
    if total is None and isinstance(items, Sequence):
        total = len(items)
    bar = task(description, total)
    for item in items:
        yield item
        bar.advance()


@contextmanager
def step(description: str) -> Iterator[None]:
    """One piece of work of unknown length (reading a file, writing one) as a bar of one."""
    bar = task(description, 1)
    yield
    bar.advance()

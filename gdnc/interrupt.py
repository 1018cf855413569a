"""Ctrl-C bookkeeping for the command line: remember that SIGINT arrived.

Python turns SIGINT into ``KeyboardInterrupt`` wherever the main thread happens to be, and some
code re-raises it as another exception (class creation wraps it in ``RuntimeError`` when it lands
in ``__set_name__``, e.g. while torch imports). :func:`recording` keeps the usual
``KeyboardInterrupt`` but records the signal first, so the CLI boundary can tell "interrupted"
from an internal error whatever exception reaches it (:func:`received`).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_received = threading.Event()


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    _received.set()
    signal.default_int_handler(signum, frame)


@contextmanager
def recording() -> Iterator[None]:
    """While the block runs, record SIGINT before raising ``KeyboardInterrupt`` (main thread
    only; nothing changes elsewhere or where SIGINT is ignored, as in background jobs); the
    previous handler is back afterwards."""
    previous = signal.getsignal(signal.SIGINT)
    main_thread = threading.current_thread() is threading.main_thread()
    if not main_thread or previous is signal.SIG_IGN or previous is _on_sigint:
        yield
        return
    _received.clear()
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def received() -> bool:
    """Whether SIGINT arrived since the outermost :func:`recording` block began."""
    return _received.is_set()

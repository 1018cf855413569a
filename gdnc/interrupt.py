"""Ctrl-C bookkeeping for the command line: remember that SIGINT arrived.

Python turns SIGINT into ``KeyboardInterrupt`` wherever the main thread happens to be, and some
code re-raises it as another exception (class creation wraps it in ``RuntimeError`` when it lands
in ``__set_name__``, e.g. while torch imports). :func:`install` keeps the usual
``KeyboardInterrupt`` but records the signal first, so the CLI boundary can tell "interrupted"
from an internal error whatever exception reaches it (:func:`received`).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

_received = threading.Event()


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    _received.set()
    signal.default_int_handler(signum, frame)


def install() -> None:
    """Record SIGINT before raising ``KeyboardInterrupt`` (main thread only; a no-op elsewhere
    and where SIGINT is ignored, as in background jobs)."""
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _on_sigint)


def received() -> bool:
    """Whether SIGINT arrived since :func:`install`."""
    return _received.is_set()

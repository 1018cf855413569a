"""Stop signals for the command line: SIGINT (Ctrl-C), SIGTERM and SIGHUP, recorded and raised.

Python turns SIGINT into ``KeyboardInterrupt`` wherever the main thread happens to be, and some
code re-raises it as another exception (class creation wraps it in ``RuntimeError`` when it lands
in ``__set_name__``, e.g. while torch imports). SIGTERM and SIGHUP would end the process on the
spot, leaving half-written temporary files. :func:`recording` makes all three unwind the same
way: SIGINT raises the usual ``KeyboardInterrupt``, SIGTERM and SIGHUP raise :class:`Terminated`
(a ``KeyboardInterrupt`` too, so every cleanup for Ctrl-C runs for them), and each records its
signal first, so the CLI boundary can tell "stopped" from an internal error whatever exception
reaches it (:func:`received`) and end with that signal's line and exit status (:func:`ending`).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

# the signals recording() handles, with the line the command line ends with
LINES: dict[int, str] = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}
if hasattr(signal, "SIGHUP"):  # POSIX
    LINES[signal.SIGHUP] = "terminated"

STOP_SIGNALS = tuple(LINES)
_received: list[int] = []  # the first signal recorded since the outermost recording() began


class Terminated(KeyboardInterrupt):  # noqa: N818 - it is the KeyboardInterrupt of SIGTERM / SIGHUP
    """SIGTERM or SIGHUP arrived (``signum``). A subclass of ``KeyboardInterrupt``: whatever
    cleans up after Ctrl-C cleans up after these; not that class itself, so CPython does not
    end the process by SIGINT when it escapes."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if not _received:
        _received.append(signum)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


@contextmanager
def recording() -> Iterator[None]:
    """While the block runs, SIGINT, SIGTERM and SIGHUP are recorded, then raised as
    ``KeyboardInterrupt`` / :class:`Terminated` (main thread only; a signal that is ignored, as
    SIGINT in background jobs or SIGHUP under nohup, stays ignored); the previous handlers are
    back afterwards. Nested blocks leave the outer one's handlers in place."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    # None: a handler not installed from Python, that could not be put back
    mine = [sig for sig, handler in previous.items() if handler not in (signal.SIG_IGN, _on_signal, None)]
    if _on_signal not in previous.values():  # the outermost block: a new run
        _received.clear()
    for sig in mine:
        signal.signal(sig, _on_signal)
    try:
        yield
    finally:
        for sig in mine:
            signal.signal(sig, previous[sig])


def received() -> int:
    """The signal that arrived first since the outermost :func:`recording` block began; 0 if none."""
    return _received[0] if _received else 0


def ending() -> tuple[str, int]:
    """The line and exit status to end with after :func:`received`'s signal (128 + its
    number), SIGINT's if none was recorded (an interrupt raised by other means)."""
    signum = received() or signal.SIGINT
    return LINES[signum], 128 + signum

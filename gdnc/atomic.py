"""Atomic file outputs: every file gdnc writes goes through ``Replacement``.

``Replacement(target)`` stages the new version of ``target`` as a hidden temporary file beside
it (``.<name>.<8 hex>.tmp``, created empty, mode 0666 less the umask), lets the caller write
it, and on success fsyncs it and renames it over ``target``. On any exception, KeyboardInterrupt
included, it removes its temporary files and leaves ``target`` as it was. A process killed at any
moment therefore leaves ``target`` either as it was or complete, never truncated.

What a kill can leave: after SIGKILL, hidden temporaries (nothing runs any more to remove them)
and, in the instant between the renames of a replacement with ``new_files``, those new files in
place with no target referring to them yet (or, just after the target's rename, the files it
was to remove); after SIGINT, nothing: SIGINT is held back while the temporaries are created and while the
commit runs, and raised right after, so a Ctrl-C lands either before the commit (temporaries
removed, old files intact) or after it (new files complete).

Errors (permission denied, disk full, the target is a directory, its folder is missing) are
raised as one-line ``GdncError`` messages naming the target, with nothing left behind.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import signal
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from gdnc.errors import GdncError, InputError


def check_target(path: str | Path) -> Path:
    """``path`` as a Path if a file can be put there; else a GdncError: it is a directory, or
    its folder is missing. Cheap: call it before long work whose result goes to ``path``."""
    path = Path(path)
    if path.is_dir():
        raise GdncError(f"cannot write {path}: it is a directory", fix="give a file name inside it")
    if not path.parent.is_dir():
        raise GdncError(f"cannot write {path}: no folder {path.parent}", fix=f"mkdir -p {path.parent}")
    return path


def check_not_overwriting(output: str | Path, inputs: Iterable[str | Path], what: str = "the input") -> None:
    """InputError ("the output would overwrite ``what``") if ``output`` is (the same file as)
    one of ``inputs``."""
    output = Path(output)
    if not output.exists():
        return
    for path in inputs:
        if Path(path).exists() and os.path.samefile(output, path):
            raise InputError(f"{output}: the output would overwrite {what}", fix="choose another output path")


class Replacement:
    """Write new versions of files, then put them in place all at once (module docstring).

    ``Replacement(target, new_files=(...))``: ``new_files`` are files this write introduces
    under names not in use yet (say a data file named for this write, that the new ``target``
    refers to). They are renamed into place first, then ``target`` over its old version; should
    that last rename fail, they are removed again. ``temp(path)`` is the temporary file to write
    for ``path`` (the target or a new file); ``remove_on_commit(...)`` names files to delete
    once the target is in place (a data file only the old version used).
    """

    def __init__(self, target: str | Path, *, new_files: Iterable[str | Path] = ()) -> None:
        self.target = Path(target)
        self._order = [*map(Path, new_files), self.target]
        self._temps: dict[Path, Path] = {}
        self._obsolete: list[Path] = []

    def temp(self, path: str | Path) -> Path:
        return self._temps[Path(path)]

    def remove_on_commit(self, *paths: Path) -> None:
        self._obsolete.extend(paths)

    def __enter__(self) -> Replacement:
        for path in self._order:
            check_target(path)
        try:
            with _sigint_deferred():
                for path in self._order:
                    self._temps[path] = _create_temp(path)
        except OSError as exc:
            self._discard()
            raise self._error(exc) from exc
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        with _sigint_deferred():
            if exc is None:
                try:
                    self._commit()
                    return
                except BaseException as failure:
                    exc = failure
            self._discard()
        if isinstance(exc, OSError):
            raise self._error(exc) from exc
        if exc_type is None:  # the commit failed, otherwise than with an OSError
            raise exc

    def _commit(self) -> None:
        for temp in self._temps.values():
            _fsync(temp)
        renamed = []
        try:
            for path in self._order[:-1]:
                os.replace(self._temps[path], path)
                renamed.append(path)
                _fsync(path.parent)  # in place for good before the target refers to it
            os.replace(self._temps[self.target], self.target)
        except BaseException:
            for path in renamed:
                with suppress(FileNotFoundError):
                    path.unlink()
            raise
        for path in self._obsolete:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise GdncError(f"wrote {self.target}, but cannot remove the old {path}: "
                                f"{_reason(exc)}") from exc
        _fsync(self.target.parent)

    def _discard(self) -> None:
        for temp in self._temps.values():
            with suppress(FileNotFoundError):
                temp.unlink()

    def _error(self, exc: OSError) -> GdncError:
        return GdncError(f"cannot write {self.target}: {_reason(exc)}")


@contextmanager
def open_replacing(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """``open`` for writing (mode "w" or "wb"), through a ``Replacement`` of ``path``."""
    if mode not in ("w", "wb"):
        raise ValueError(f"open_replacing: mode {mode!r} is not 'w' or 'wb'")
    with Replacement(path) as rep, open(rep.temp(path), mode,
                                        encoding=None if "b" in mode else "utf-8") as fh:
        yield fh


def write_text(path: str | Path, text: str) -> None:
    """Replace ``path`` by ``text`` (UTF-8), atomically."""
    with open_replacing(path) as fh:
        fh.write(text)


def write_json(path: str | Path, data: object) -> None:
    """Replace ``path`` by ``data`` as indented JSON and a final newline, atomically."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def _create_temp(path: Path) -> Path:
    """A new empty hidden file beside ``path``."""
    while True:
        temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return temp
        except FileExistsError:  # someone else's: try another name
            continue


def _reason(exc: OSError) -> str:
    """What went wrong, on one line, without the (temporary) file name."""
    return " ".join((exc.strerror or str(exc) or type(exc).__name__).split())


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file, or a folder's entries) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if not (path.is_dir() and exc.errno == errno.EINVAL):  # folders some file systems cannot
            raise
    finally:
        os.close(fd)


@contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold SIGINT back while the block runs, then raise it (main thread, Python handler only)."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield
        return
    pending: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pending:
            signal.raise_signal(signal.SIGINT)

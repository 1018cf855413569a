"""Atomic file outputs: every file gdnc writes goes through ``Replacement``.

``Replacement(target)`` stages the new version of ``target`` as a hidden temporary file beside
it (``.<name>.<8 hex>.tmp``, created empty, mode 0666 less the umask), lets the caller write
it, and on success fsyncs it and renames it over ``target``. On any exception, KeyboardInterrupt
included, it removes its temporary files and leaves ``target`` as it was. A process killed at any
moment therefore leaves ``target`` either as it was or complete, never truncated.

What a kill can leave: after SIGKILL, hidden temporaries (nothing runs any more to remove them)
and, in the instant between the renames of a replacement with ``new_files``, those new files in
place with no target referring to them yet (or, just after the target's rename, the files it
was to remove); after SIGINT, SIGTERM or SIGHUP, nothing: those signals are held back while the
temporaries are created and while the commit runs, and raised right after, so a stop lands
either before the commit (temporaries removed, old files intact) or after it (new files complete).

Streams are written in place, never replaced: a target that is a FIFO, a character device
(``/dev/null``, a terminal) or this process's own stdout or stderr (``/dev/stdout``, whatever it
is; written through that descriptor, after what was printed) is opened and written as it is.
Other targets that are no regular file (a directory, a socket, a block device) are refused.

Inputs are never lost: ``check_outputs`` refuses, before any work, an output that is one of
the run's inputs (the same file: path, hard link or symlink), and inside a ``keeping(inputs)``
block no ``Replacement`` writes over or removes one of them.

Errors (permission denied, disk full, the target is a directory, its folder is missing) are
raised as one-line ``GdncError`` messages naming the target, with nothing left behind.
"""

from __future__ import annotations

import errno
import io
import json
import os
import secrets
import signal
import stat
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import IO, Any, BinaryIO

from gdnc.errors import GdncError, InputError
from gdnc.interrupt import STOP_SIGNALS

# what a target that is neither a regular file nor a stream is, in refusals
_KINDS = {stat.S_ISSOCK: "a socket", stat.S_ISBLK: "a block device"}


def check_target(path: str | Path) -> Path:
    """``path`` as a Path if a file can be put there (a regular file or a stream, existing or
    not); else a GdncError: it is a directory or another kind of file, or its folder is
    missing. Cheap: call it before long work whose result goes to ``path``."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:  # a symlink loop, a folder that cannot be searched
        raise GdncError(f"cannot write {path}: {_reason(exc)}") from exc
    if mode is not None and stat.S_ISDIR(mode):
        raise GdncError(f"cannot write {path}: it is a directory", fix="give a file name inside it")
    if mode is not None and not (stat.S_ISREG(mode) or _is_stream(mode)):
        kind = next((what for test, what in _KINDS.items() if test(mode)), "not a regular file")
        raise GdncError(f"cannot write {path}: it is {kind}", fix="give the path of a regular file")
    if not path.parent.is_dir():
        raise GdncError(f"cannot write {path}: no folder {path.parent}", fix=f"mkdir -p {path.parent}")
    return path


def check_outputs(outputs: Iterable[str | Path | None], inputs: Mapping[Path, str]) -> None:
    """Check each of ``outputs`` (None: not asked for) with ``check_target``; an InputError
    (one line, naming both) for one that is written by replacement and is the same file as one
    of ``inputs`` (the same path, a hard link or a symlink; ``inputs`` maps each to what it is,
    "the input X") or as an earlier output. Cheap: before any work."""
    seen: dict[tuple[int, int] | str, str] = {
        key: what for path, what in inputs.items() if (key := _identity(path)) is not None}
    for output in outputs:
        if output is None:
            continue
        path = check_target(output)
        if writes_in_place(path):
            continue
        keys: list[tuple[int, int] | str] = [os.path.realpath(path)]
        keys += [key] if (key := _identity(path)) is not None else []
        clash = next((seen[key] for key in keys if key in seen), None)
        if clash is not None:
            raise InputError(f"{path}: the output would overwrite {clash}", fix="choose another output path")
        seen.update(dict.fromkeys(keys, f"the other output {path}"))


def writes_in_place(path: str | Path) -> bool:
    """Whether ``Replacement`` writes ``path`` in place: a stream (module docstring)."""
    try:
        return _is_stream(os.stat(path).st_mode) or _standard_stream(Path(path)) is not None
    except OSError:
        return False


_kept: list[dict[tuple[int, int], Path]] = []  # one per open keeping() block


@contextmanager
def keeping(paths: Iterable[str | Path]) -> Iterator[None]:
    """While the block runs, no ``Replacement`` writes over or removes any of ``paths`` (the
    files they are now, whatever their names: hard links and symlinks too): a run's inputs.
    Writing over one is an InputError; a file to remove on commit that is one stays."""
    scope = {key: Path(path) for path in paths if (key := _identity(path)) is not None}
    _kept.append(scope)
    try:
        yield
    finally:
        _kept.pop()


class Replacement:
    """Write new versions of files, then put them in place all at once (module docstring).

    ``Replacement(target, new_files=(...))``: ``new_files`` are files this write introduces
    under names not in use yet (say a data file named for this write, that the new ``target``
    refers to). They are renamed into place first, then ``target`` over its old version; should
    that last rename fail, they are removed again. ``open(path)`` is the binary file to write
    for ``path`` (the target or a new file), ``temp(path)`` the temporary file behind it;
    ``remove_on_commit(...)`` names files to delete once the target is in place (a data file
    only the old version used). A target that is a stream is written in place: ``open`` writes
    to it directly, it has no temporary file, and it takes no ``new_files``.
    """

    def __init__(self, target: str | Path, *, new_files: Iterable[str | Path] = ()) -> None:
        self.target = Path(target)
        self._order = [*map(Path, new_files), self.target]
        self._temps: dict[Path, Path] = {}
        self._obsolete: list[Path] = []

    def temp(self, path: str | Path) -> Path:
        return self._temps[Path(path)]

    def open(self, path: str | Path) -> BinaryIO:
        path = Path(path)
        if path in self._temps:
            return open(self._temps[path], "wb")  # noqa: SIM115 - the caller closes it
        return _open_stream(path)

    def remove_on_commit(self, *paths: Path) -> None:
        self._obsolete.extend(paths)

    def __enter__(self) -> Replacement:
        for path in self._order:
            check_target(path)
            kept = _kept_as(path)
            if kept is not None and not writes_in_place(path):
                raise InputError(f"{path}: the output would overwrite the input {kept}",
                                 fix="choose another output path")
        staged = self._order
        if writes_in_place(self.target):
            if len(self._order) > 1:
                raise GdncError(f"cannot write {self.target}: a stream takes no files beside it "
                                f"({self._order[0].name})", fix="give the path of a regular file")
            staged = []
        try:
            with _stops_deferred():
                for path in staged:
                    self._temps[path] = _create_temp(path)
        except OSError as exc:
            self._discard()
            raise self._error(exc) from exc
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        with _stops_deferred():
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
        if not self._temps:  # a stream, written in place
            return
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
            if _kept_as(path) is not None:  # an input of this run refers to it
                continue
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
    with Replacement(path) as rep, rep.open(path) as raw:
        if "b" in mode:
            yield raw
            return
        with io.TextIOWrapper(raw, encoding="utf-8") as fh:
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


def _is_stream(mode: int) -> bool:
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


def _standard_stream(path: Path) -> int | None:
    """1 or 2 if ``path`` is the file this process's stdout or stderr is, else None."""
    key = _identity(path)
    return next((fd for fd in (1, 2) if key is not None and _identity(fd) == key), None)


def _open_stream(path: Path) -> BinaryIO:
    """``path``, a stream, opened to write as it is: our own stdout or stderr through its
    descriptor (after what was printed to it), any other one as a file (not created, not
    truncated)."""
    fd = _standard_stream(path)
    if fd is not None:
        (sys.stdout if fd == 1 else sys.stderr).flush()
        return os.fdopen(os.dup(fd), "wb")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOCTTY)
    except OSError as exc:
        raise GdncError(f"cannot write {path}: {_reason(exc)}") from exc
    if not _is_stream(os.fstat(fd).st_mode):  # replaced by another kind of file meanwhile
        os.close(fd)
        raise GdncError(f"cannot write {path}: it was replaced while gdnc ran", fix="run it again")
    return os.fdopen(fd, "wb")


def _identity(path: str | Path | int) -> tuple[int, int] | None:
    """(device, inode) of the file ``path`` (or descriptor) names, symlinks followed; None if
    there is none."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _kept_as(path: Path) -> Path | None:
    """The input of an open ``keeping`` block that ``path`` is, if any."""
    key = _identity(path)
    return next((scope[key] for scope in _kept if key in scope), None) if key is not None else None


@contextmanager
def _stops_deferred() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP back while the block runs, then raise the first that came
    (main thread; each signal only where its handler can be put back)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: handler for sig in STOP_SIGNALS
                if (handler := signal.getsignal(sig)) not in (None, signal.SIG_IGN)}
    pending: list[int] = []
    for sig in previous:
        signal.signal(sig, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if pending:
            signal.raise_signal(pending[0])

"""Test-only: run ``gdnc ARGS`` with one moment of its output writing stretched, to kill it there.

Usage: ``python tests/robustness/slow_writer.py MARKER MODE gdnc ARGS...`` (ARGS include
``-o OUTPUT``). MARKER (a path outside OUTPUT's folder) is created when the moment comes:

- ``write``: every file opened for writing in OUTPUT's folder is written ``CHUNK`` bytes at a
  time, ``SLEEP`` seconds apart; once the first chunk is on disk, MARKER appears and the writing
  waits ``PAUSE`` seconds (all of it goes to temporary files: nothing is renamed before the
  writing is done);
- ``before-rename``: ``os.replace`` onto OUTPUT creates MARKER and waits ``PAUSE`` seconds
  before renaming (a data file written with the model is in place by then, unreferenced);
- ``after-rename``: the same, right after that rename (the previous data file is still there).
"""

from __future__ import annotations

import builtins
import os
import sys
import time
from pathlib import Path

CHUNK, SLEEP, PAUSE = 4096, 0.005, 1.0


class _SlowFile:
    """A file whose writes go to disk in chunks, ``SLEEP`` apart; after the first chunk of all
    (MARKER does not exist yet), MARKER is created and the pause is ``PAUSE``."""

    def __init__(self, fh, marker: Path) -> None:
        self._fh, self._marker = fh, marker

    def write(self, data) -> int:
        view = memoryview(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
        for start in range(0, len(view), CHUNK):
            self._fh.write(view[start:start + CHUNK])
            self._fh.flush()
            if self._marker.exists():
                time.sleep(SLEEP)
            else:
                self._marker.touch()
                time.sleep(PAUSE)
        return len(view)

    def __getattr__(self, name: str):
        return getattr(self._fh, name)

    def __enter__(self) -> _SlowFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()


def _slow_writes(folder: Path, marker: Path) -> None:
    real_open = builtins.open

    def slow_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        writing = any(c in mode for c in "wax+")
        if writing and isinstance(file, (str, os.PathLike)) and Path(file).resolve().parent == folder:
            return _SlowFile(fh, marker)
        return fh

    builtins.open = slow_open


def _pause_at_rename(output: Path, marker: Path, after: bool) -> None:
    real_replace = os.replace

    def replace(src, dst, **kwargs):
        onto_output = Path(dst).resolve() == output
        if onto_output and not after:
            marker.touch()
            time.sleep(PAUSE)
        real_replace(src, dst, **kwargs)
        if onto_output and after:
            marker.touch()
            time.sleep(PAUSE)

    os.replace = replace


def main() -> None:
    marker, mode, args = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    output = Path(args[args.index("-o") + 1]).resolve()
    if mode == "write":
        _slow_writes(output.parent, marker)
    elif mode in ("before-rename", "after-rename"):
        _pause_at_rename(output, marker, after=mode == "after-rename")
    else:
        raise SystemExit(f"slow_writer: unknown mode {mode!r}")
    sys.argv = ["gdnc", *args]
    from gdnc.__main__ import run

    run()


if __name__ == "__main__":
    main()

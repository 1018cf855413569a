"""Native CPU kernels: a C source shipped in the package, compiled once by the machine's C
compiler and loaded with ctypes.

``library(source)`` gives the loaded library, or raises ``NativeUnavailable`` with the reason
(no compiler, a failed build, ``GDNC_NATIVE=off``); ``function`` gives one typed C function of it
or that reason. Callers keep a torch path for that case.
The build (``$CC``, else ``cc``/``gcc``/``clang``; ``-O2 -fPIC -shared -ffp-contract=off``, with
``-fopenmp`` when the compiler takes it) lands in ``<cache>/native/`` keyed by the source's bytes,
the flags, the compiler's path and the machine, written beside and renamed into place (processes
starting at once each build and one file wins); with the cache off, or a cache folder that cannot
be written, it lands in a temporary folder that is removed once loaded. A library built with
OpenMP shares the OpenMP runtime torch has already loaded (same soname), so its threads are
torch's.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path

from gdnc.cache_dir import cache_dir
from gdnc.errors import GdncError

FLAGS = ("-O3", "-fPIC", "-shared", "-ffp-contract=off", "-std=c11")
OPENMP = "-fopenmp"
BUILD_SECONDS = 120


class NativeUnavailable(GdncError):
    """The native kernels cannot be used here; the message says why."""


class _Unwritable(NativeUnavailable):
    """The build's folder cannot be written."""


def compiler() -> str | None:
    """The C compiler to use: ``$CC``, else the first of cc, gcc, clang on PATH."""
    chosen = os.environ.get("CC")
    if chosen:
        return shutil.which(chosen)
    return next(filter(None, map(shutil.which, ("cc", "gcc", "clang"))), None)


def switched_off() -> bool:
    """Whether the user turned the native kernels off (``GDNC_NATIVE`` = 0, off, no or false)."""
    return os.environ.get("GDNC_NATIVE", "").lower() in ("0", "off", "no", "false")


@cache
def library(source: Path) -> ctypes.CDLL:
    """``source`` compiled and loaded (once per process); NativeUnavailable with the reason."""
    if switched_off():
        raise NativeUnavailable(f"GDNC_NATIVE={os.environ['GDNC_NATIVE']}")
    cc = compiler()
    if cc is None:
        raise NativeUnavailable("no C compiler found (set CC, or install cc/gcc/clang)")
    folder = cache_dir()
    if folder is not None:
        try:
            return _load(_build(cc, source, folder / "native"))
        except _Unwritable:
            pass  # a read-only cache: build for this process alone, as with the cache off
    try:
        tmp = tempfile.TemporaryDirectory(prefix="gdnc-native-")
    except OSError as exc:
        raise NativeUnavailable(f"cannot write the native build to {tempfile.gettempdir()}: "
                                f"{exc.strerror or exc}") from None
    with tmp:
        return _load(_build(cc, source, Path(tmp.name)))


def function(source: Path, name: str, argtypes: tuple[type, ...]) -> Callable[..., int] | str:
    """The C function ``name`` of ``source``'s library, typed (``argtypes``, an int result), or
    why there is none (the NativeUnavailable message)."""
    try:
        fn = getattr(library(source), name)
    except NativeUnavailable as exc:
        return str(exc)
    fn.argtypes = list(argtypes)
    fn.restype = ctypes.c_int
    typed: Callable[..., int] = fn
    return typed


def _build(cc: str, source: Path, folder: Path) -> Path:
    """The shared library built from ``source`` in ``folder`` (reused when it is there)."""
    text = source.read_bytes()
    for flags in ((*FLAGS, OPENMP), FLAGS):
        key = hashlib.sha256(b"\0".join([text, " ".join(flags).encode(), cc.encode(),
                                         platform.machine().encode()])).hexdigest()[:24]
        target = folder / f"{source.stem}-{key}.so"
        if target.is_file():
            return target
        try:
            folder.mkdir(parents=True, exist_ok=True)
            staged = Path(tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")[1])
        except OSError as exc:
            raise _Unwritable(f"cannot write the native build to {folder}: {exc.strerror or exc}") from None
        try:
            done = subprocess.run([cc, *flags, str(source), "-o", str(staged)], capture_output=True,
                                  text=True, timeout=BUILD_SECONDS, check=False)
            if done.returncode == 0:
                os.replace(staged, target)
                return target
            error = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        except (OSError, subprocess.TimeoutExpired) as exc:
            error = str(exc)
        finally:
            staged.unlink(missing_ok=True)
    raise NativeUnavailable(f"{Path(cc).name} could not build {source.name}: {error}")


def _load(path: Path) -> ctypes.CDLL:
    try:
        return ctypes.CDLL(str(path))
    except OSError as exc:
        raise NativeUnavailable(f"cannot load {path.name}: {exc}") from None

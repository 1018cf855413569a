"""``.npz`` files of named arrays (``np.savez`` / ``np.savez_compressed``): every member's
header is checked before any data is read, so a file cannot make gdnc allocate what it merely
claims; outputs are written atomically."""

from __future__ import annotations

import math
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib import format as npy

from gdnc.atomic import open_replacing
from gdnc.errors import InputError, first_line
from gdnc.runtime import memory

# deflate expands at most 258 bytes per 2 bits of input; a member claiming more is lying
DEFLATE_MAX_RATIO = 1032
_READERS = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0,
            (3, 0): npy.read_array_header_2_0}  # 3.0 is 2.0 with a UTF-8 header: ASCII for plain dtypes
_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)  # what np.savez / np.savez_compressed write


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of ``path`` by name. InputError (one line naming the file, and the member
    where there is one) for a file that is missing or not a zip archive; a member that is not a
    ``.npy`` array, is stored with another compression or holds Python objects; a header whose
    shape and dtype need other bytes than the member holds; a member claiming more bytes than
    the file (stored) or deflate (compressed) can give; data that does not decompress; and
    arrays that together need more memory than this machine has available."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            size = path.stat().st_size
            need = sum(_checked_bytes(archive, info, f"{path}: member {info.filename!r}", size)
                       for info in members)
            memory.require({"arrays": need}, torch.device("cpu"), str(path), fix="give a smaller .npz file")
            return {info.filename.removesuffix(".npy"): _read(archive, info) for info in members}
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise InputError(f"{path}: not a readable .npz file ({first_line(exc)})") from None


def _checked_bytes(archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str, file_size: int) -> int:
    """The data bytes member ``info``'s header declares, once checked against the bytes the
    member holds and the bytes the file (of ``file_size``) can give it."""
    if not info.filename.endswith(".npy") or info.is_dir():
        raise InputError(f"{where} is not a .npy array (np.savez writes only those)")
    if info.compress_type not in _METHODS:
        raise InputError(f"{where} uses zip compression method {info.compress_type}; gdnc reads "
                         "stored or deflated members (np.savez, np.savez_compressed)")
    limit = file_size if info.compress_type == zipfile.ZIP_STORED else DEFLATE_MAX_RATIO * file_size
    if info.compress_size > file_size or info.file_size > limit:
        raise InputError(f"{where} claims {info.file_size} bytes, more than a file of {file_size} "
                         "bytes can hold")
    try:
        with archive.open(info) as fh:
            version = npy.read_magic(fh)
            if version not in _READERS:
                raise InputError(f"{where}: .npy format version {version} is unknown")
            shape, _, dtype = _READERS[version](fh)
            header = fh.tell()
    except (ValueError, EOFError) as exc:
        raise InputError(f"{where}: not a readable .npy header ({first_line(exc)})") from None
    if dtype.hasobject:
        raise InputError(f"{where} holds Python objects (pickled data), which gdnc never reads")
    data = math.prod(shape) * dtype.itemsize
    if header + data != info.file_size:
        raise InputError(f"{where}: its header declares {dtype} {list(shape)} ({data} bytes), the "
                         f"member holds {info.file_size - header} bytes of data")
    return data


def _read(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    with archive.open(info) as fh:
        return npy.read_array(fh, allow_pickle=False)


def save_npz(path: Path, arrays: Mapping[str, Any]) -> None:
    """Write ``arrays`` to ``path`` (np.savez: bfloat16 and float8 arrays as their raw bytes),
    atomically."""
    with open_replacing(path, "wb") as fh:
        np.savez(fh, **arrays)

"""Structural check of a GGUF file's bytes, run before the ``gguf`` package parses it.

``validate_gguf(path)`` walks the header, every metadata entry and every tensor info of a
little-endian GGUF v2/v3 file through bounds-checked reads of a read-only memory map: nothing is
read outside the file, every count is checked against the bytes left before anything is sized
from it, and the walk's cost is bounded by the file size and the limits below. It returns
nothing, or raises a one-line ``ModelLoadError`` naming the first problem (key, tensor, offset
and the numbers involved): "PATH: not a GGUF file (...)" or "PATH: not a readable GGUF file:
...".

What it checks: the magic; the version; counts the file can hold; every key (UTF-8, unique, not
one of the reader's ``GGUF.*`` names); every value (a known type; strings and arrays inside the
file; no arrays of arrays; ``general.alignment`` a UINT32 power of two); every tensor info (a
unique UTF-8 name, 1 to 4 dimensions, each >= 1, an element count within int64, a known ggml
type, a first dimension that is a multiple of the type's block size, a data offset aligned to
``general.alignment``, data inside the file and overlapping no other tensor's). String values
are not decoded here (``GgufFile`` names a key whose text is not UTF-8); whether the values make
a usable model is for the readers of the metadata to judge.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
from gguf import (
    GGML_QUANT_SIZES,
    GGUF_DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    GGMLQuantizationType,
    GGUFReader,
    GGUFValueType,
)
from gguf.gguf_reader import READER_SUPPORTED_VERSIONS

from gdnc.errors import ModelLoadError

MAGIC = struct.pack("<I", GGUF_MAGIC)
MAX_DIMS = 4  # GGML_MAX_DIMS
INT64_MAX = (1 << 63) - 1
# limits above the models gdnc runs (tens of keys, under two thousand tensors, a vocabulary of
# <= 262,144 tokens in three arrays: tokens, token types, merges) that bound the reader's work
# to seconds per file (each array item becomes Python objects)
MAX_KEYS = 1 << 12
MAX_TENSORS = 1 << 13
MAX_ARRAY_ITEMS = 3 << 18  # over all metadata arrays together
# the smallest encodings: key length, one-char key, type, a one-byte value; name length,
# one-char name, n_dims, one dimension, type, offset
MIN_KEY_BYTES = 8 + 1 + 4 + 1
MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 8 + 4 + 8
SCALAR_SIZES = {int(t): np.dtype(d).itemsize for t, d in GGUFReader.gguf_scalar_to_np.items()}
U32, U64 = struct.Struct("<I"), struct.Struct("<Q")


@dataclass(frozen=True)
class TensorInfo:
    """One tensor info entry as stored: ggml dims (ne0 first), raw type, offset in the data."""

    name: str
    dims: tuple[int, ...]
    raw_type: int
    offset: int


class _Cursor:
    """Little-endian reads at a moving offset ``pos`` into ``buf``, each checked against its end."""

    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self.buf, self.path, self.pos, self.size = buf, path, 0, len(buf)

    def fail(self, message: str) -> NoReturn:
        raise ModelLoadError(f"{self.path}: not a readable GGUF file: {message}")

    def need(self, n: int, what: str) -> None:
        """Fail unless ``n`` bytes of ``what`` fit between ``pos`` and the end of the file."""
        if n > self.size - self.pos:
            self.fail(f"{what} ({n} bytes at offset {self.pos}) runs past the end of the file "
                      f"({self.size} bytes)")

    def skip(self, n: int, what: str) -> int:
        """Step over ``n`` bytes of ``what``; the offset they start at."""
        self.need(n, what)
        self.pos += n
        return self.pos - n

    def u32(self, what: str) -> int:
        return int(U32.unpack_from(self.buf, self.skip(U32.size, what))[0])

    def u64(self, what: str) -> int:
        return int(U64.unpack_from(self.buf, self.skip(U64.size, what))[0])

    def skip_string(self, what: str) -> int:
        """Step over a length-prefixed string; the offset its bytes start at."""
        return self.skip(self.u64(f"length of {what}"), what)

    def text(self, what: str) -> str:
        """A length-prefixed string that must be UTF-8 (keys, tensor names)."""
        start = self.skip_string(what)
        try:
            return self.buf[start:self.pos].decode("utf-8")
        except UnicodeDecodeError:
            self.fail(f"{what} ({self.pos - start} bytes at offset {start}) is not valid UTF-8")

    def skip_strings(self, count: int, what: str) -> None:
        """Step over ``count`` strings, the items of ``what``: a quick walk (the hot loop of a
        vocabulary), and when that runs past the end, a checked one that says where."""
        unpack, buf, pos = U64.unpack_from, self.buf, self.pos
        try:
            for _ in range(count):
                pos += U64.size + unpack(buf, pos)[0]
        except (struct.error, OverflowError):  # a length field past the end, or past 2^63
            pos = self.size + 1
        if pos > self.size:
            for j in range(count):
                self.skip_string(f"string {j} of {what}")
        self.pos = pos


def validate_gguf(path: str | Path) -> None:
    """Check ``path``; ModelLoadError names the first problem (contract: module docstring)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            if fh.seek(0, 2) == 0:
                raise ModelLoadError(f"{path}: the file is empty, not a GGUF file")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                cur = _Cursor(buf, path)
                n_tensors, n_keys = _header(cur)
                alignment = _metadata(cur, n_keys)
                infos = [_tensor_info(cur, i) for i in range(n_tensors)]
                _check_data(cur, infos, alignment, data_start=cur.pos + -cur.pos % alignment)
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read the file ({exc.strerror or exc})") from exc


def _header(cur: _Cursor) -> tuple[int, int]:
    """Magic and version; (tensor count, key count), both known to fit in the file."""
    magic = cur.buf[:4]
    if magic != MAGIC:
        raise ModelLoadError(f"{cur.path}: not a GGUF file (it starts with {magic!r}, not {MAGIC!r})")
    cur.pos = 4
    version = cur.u32("GGUF version")
    if version not in READER_SUPPORTED_VERSIONS:
        order = " (a big-endian file?)" if version and version & 0xFFFF == 0 else ""
        cur.fail(f"GGUF version {version}{order} is not supported "
                 f"(supported: {', '.join(map(str, READER_SUPPORTED_VERSIONS))})")
    n_tensors, n_keys = cur.u64("tensor count"), cur.u64("metadata key count")
    left = cur.size - cur.pos
    for what, n, least, limit in (("metadata key count", n_keys, MIN_KEY_BYTES, MAX_KEYS),
                                  ("tensor count", n_tensors, MIN_TENSOR_INFO_BYTES, MAX_TENSORS)):
        if n * least > left:
            cur.fail(f"{what} {n} cannot fit in the {left} bytes left before the end of the file "
                     f"({cur.size} bytes)")
        if n > limit:
            cur.fail(f"{what} {n} is more than gdnc reads ({limit})")
        left -= n * least
    return n_tensors, n_keys


def _metadata(cur: _Cursor, n_keys: int) -> int:
    """Walk ``n_keys`` key/value entries; the data alignment they set."""
    seen: dict[str, int] = {}
    alignment, items = GGUF_DEFAULT_ALIGNMENT, 0
    for i in range(n_keys):
        start = cur.pos
        key = cur.text(f"key {i}")
        if key in seen:
            cur.fail(f"duplicate metadata key {key!r} (entries at offsets {seen[key]} and {start})")
        if key.startswith("GGUF."):
            cur.fail(f"metadata key {key!r} at offset {start} uses the reserved prefix 'GGUF.'")
        seen[key] = start
        vtype = cur.u32(f"value type of key {key!r}")
        value_at = cur.pos
        if vtype == GGUFValueType.ARRAY:
            items += _array(cur, key, MAX_ARRAY_ITEMS - items)
        else:
            _value(cur, vtype, f"key {key!r}")
        if key == "general.alignment":
            alignment = _alignment(cur, vtype, value_at)
    return alignment


def _value(cur: _Cursor, vtype: int, what: str) -> None:
    """Step over one scalar or string value of ``what``."""
    if vtype == GGUFValueType.STRING:
        cur.skip_string(f"string value of {what}")
    elif vtype in SCALAR_SIZES:
        cur.skip(SCALAR_SIZES[vtype], f"value of {what}")
    else:
        cur.fail(f"unknown value type {vtype} for {what} at offset {cur.pos - 4}")


def _array(cur: _Cursor, key: str, budget: int) -> int:
    """Step over the array value of ``key``; its item count (at most ``budget``)."""
    item_type = cur.u32(f"item type of key {key!r}")
    count = cur.u64(f"item count of key {key!r}")
    if item_type == GGUFValueType.ARRAY:
        cur.fail(f"key {key!r} holds an array of arrays (not supported)")
    if item_type != GGUFValueType.STRING and item_type not in SCALAR_SIZES:
        cur.fail(f"unknown value type {item_type} for the items of key {key!r} "
                 f"at offset {cur.pos - 12}")
    # a string item takes at least its length field
    least = U64.size if item_type == GGUFValueType.STRING else SCALAR_SIZES[item_type]
    cur.need(count * least, f"array of {count} {GGUFValueType(item_type).name} for key {key!r}")
    if count > budget:
        cur.fail(f"array of {count} items for key {key!r} takes the metadata past "
                 f"{MAX_ARRAY_ITEMS} array items, more than gdnc reads")
    if item_type == GGUFValueType.STRING:
        cur.skip_strings(count, f"key {key!r}")
    else:
        cur.pos += count * least
    return count


def _alignment(cur: _Cursor, vtype: int, value_at: int) -> int:
    if vtype != GGUFValueType.UINT32:
        cur.fail(f"general.alignment has value type {_type_name(vtype)}, want UINT32")
    alignment = int(struct.unpack_from("<I", cur.buf, value_at)[0])
    if alignment == 0 or alignment & (alignment - 1):
        cur.fail(f"general.alignment {alignment} is not a power of two")
    return alignment


def _type_name(vtype: int) -> str:
    try:
        return GGUFValueType(vtype).name
    except ValueError:
        return str(vtype)


def _tensor_info(cur: _Cursor, i: int) -> TensorInfo:
    name = cur.text(f"name of tensor {i}")
    what = f"tensor {name!r}"
    n_dims = cur.u32(f"dimension count of {what}")
    if not 1 <= n_dims <= MAX_DIMS:
        cur.fail(f"{what} has {n_dims} dimensions (1 to {MAX_DIMS})")
    dims = tuple(cur.u64(f"dimension {d} of {what}") for d in range(n_dims))
    raw_type = cur.u32(f"ggml type of {what}")
    return TensorInfo(name, dims, raw_type, cur.u64(f"data offset of {what}"))


def _check_data(cur: _Cursor, infos: list[TensorInfo], alignment: int, data_start: int) -> None:
    """Every tensor's shape, type and data range; no two names or data ranges alike."""
    ranges: list[tuple[int, int, str]] = []
    names: set[str] = set()
    for t in infos:
        if t.name in names:
            cur.fail(f"duplicate tensor name {t.name!r}")
        names.add(t.name)
        start = data_start + t.offset
        nbytes = _data_bytes(cur, t)
        if t.offset % alignment:
            cur.fail(f"tensor {t.name!r} data offset {t.offset} is not a multiple of "
                     f"general.alignment {alignment}")
        if start + nbytes > cur.size:
            cur.fail(f"tensor {t.name!r} data ({nbytes} bytes at offset {start}) runs past the end "
                     f"of the file ({cur.size} bytes)")
        ranges.append((start, start + nbytes, t.name))
    ranges.sort()
    reach, owner = 0, ""  # the furthest end of the data ranges so far, and whose it is
    for start, end, name in ranges:
        if start < reach:
            cur.fail(f"tensor {name!r} data (bytes {start}..{end}) overlaps tensor {owner!r} "
                     f"(ending at byte {reach})")
        if end > reach:
            reach, owner = end, name


def _data_bytes(cur: _Cursor, t: TensorInfo) -> int:
    """Bytes of ``t``'s data, from a shape and type known to be valid."""
    what = f"tensor {t.name!r}"
    if min(t.dims) < 1:
        cur.fail(f"{what} has a zero dimension (dims {list(t.dims)})")
    n_elements = math.prod(t.dims)
    if n_elements > INT64_MAX:
        cur.fail(f"{what} dims {list(t.dims)} make {n_elements} elements, more than 2^63 - 1")
    try:
        qtype = GGMLQuantizationType(t.raw_type)
    except ValueError:
        cur.fail(f"{what} has unknown ggml type {t.raw_type}")
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    if t.dims[0] % block_size:
        cur.fail(f"{what} of type {qtype.name} has first dimension {t.dims[0]}, not a multiple of "
                 f"its block size {block_size}")
    return n_elements // block_size * type_size

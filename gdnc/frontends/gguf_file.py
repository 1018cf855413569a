"""Read a GGUF file: metadata as Python values, tensors as their raw bytes (``raw``, zero-copy)
or dequantized to float32 numpy (``tensor``).

Shapes are numpy order (ggml's ``ne`` reversed), as the ``gguf`` package returns them. The
file's structure is checked by ``gguf_validate`` before the ``gguf`` package parses it. Every
problem (not a GGUF file, truncated, unknown quant type, missing tensor, wrong shape) is a
one-line ``ModelLoadError``.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from pathlib import Path
from typing import cast

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, ReaderField, ReaderTensor
from gguf.quants import dequantize

from gdnc import progress
from gdnc.errors import ModelLoadError, first_line
from gdnc.frontends.gguf_validate import validate_gguf

# quant types we dequantize; anything else is refused by name
SUPPORTED_TYPES = frozenset({
    GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16,
    GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_K,
    GGMLQuantizationType.Q5_K, GGMLQuantizationType.Q6_K,
})


class _Reader(GGUFReader):
    """``GGUFReader``, faster: it slices a plain ndarray view of the memory map (slicing a
    ``np.memmap`` runs Python code per slice) and reads each metadata array in one pass, an
    array of scalars as ONE view, an array of strings as one slice per string (the stock
    reader builds several views per item: seconds for a real vocabulary). ``contents()`` gives
    the same values. Only for files ``validate_gguf`` accepted: little-endian, arrays inside the
    file, no arrays of arrays."""

    @property  # type: ignore[override]  # a plain ndarray where the base holds the memmap
    def data(self) -> np.ndarray:
        return self._plain

    @data.setter
    def data(self, mapped: np.memmap) -> None:
        self._plain = np.asarray(mapped)

    def _get_field_parts(self, orig_offs: int, raw_type: int
                         ) -> tuple[int, list[np.ndarray], list[int], list[GGUFValueType]]:
        if raw_type != GGUFValueType.ARRAY:
            return super()._get_field_parts(orig_offs, raw_type)
        item_type, count = self._get(orig_offs, np.uint32), self._get(orig_offs + 4, np.uint64)
        sub = GGUFValueType(int(item_type[0]))
        offs = orig_offs + 12
        items: list[np.ndarray] = []
        if sub == GGUFValueType.STRING:
            data, unpack = self.data, struct.Struct("<Q").unpack_from
            buffer = data.data
            for _ in range(int(count[0])):
                start = offs + 8
                offs = start + unpack(buffer, offs)[0]
                items.append(data[start:offs])
        else:
            items.append(self._get(offs, self.gguf_scalar_to_np[sub], int(count[0])))
            offs += items[0].nbytes
        return (offs - orig_offs, [item_type, count, *items], list(range(2, 2 + len(items))),
                [GGUFValueType.ARRAY, sub])


class GgufFile:
    """An opened GGUF file. ``metadata`` maps key -> str / int / float / bool / list."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"{self.path}: no such file")
        with progress.step(f"reading {self.path.name}"):
            self._read()

    def _read(self) -> None:
        validate_gguf(self.path)
        try:
            reader = _Reader(self.path)
            self.metadata: dict[str, object] = {
                name: _contents(self.path, name, field) for name, field in reader.fields.items()
                if not name.startswith("GGUF.")
            }
            self._tensors: dict[str, ReaderTensor] = {t.name: t for t in reader.tensors}
            self._dequantized: dict[str, np.ndarray] = {}
        except ModelLoadError:
            raise
        except Exception as exc:  # a problem the validator does not know: still one line
            raise ModelLoadError(f"{self.path}: not a readable GGUF file ({first_line(exc)})") from exc

    @property
    def architecture(self) -> str:
        return cast(str, self.key("general.architecture", str))

    def key(self, name: str, kind: type | tuple[type, ...], default: object = ...) -> object:
        """Metadata value ``name`` of Python type ``kind``; ModelLoadError when missing/wrong."""
        if name not in self.metadata:
            if default is ...:
                raise ModelLoadError(f"{self.path}: metadata key {name!r} is missing")
            return default
        value = self.metadata[name]
        want = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        if isinstance(value, bool) and kind in (int, float):
            raise ModelLoadError(f"{self.path}: metadata key {name!r} is a bool, want {want}")
        if not isinstance(value, kind):
            raise ModelLoadError(
                f"{self.path}: metadata key {name!r} has type {type(value).__name__}, want {want}")
        return value

    def has_tensor(self, name: str) -> bool:
        return name in self._tensors

    def tensor_names(self) -> list[str]:
        return list(self._tensors)

    def tensor_shape(self, name: str) -> tuple[int, ...] | None:
        """Shape of tensor ``name`` in numpy order (nothing is read); None when it is absent."""
        t = self._tensors.get(name)
        return None if t is None else _numpy_shape(t)

    def check_tensor(self, name: str, shape: tuple[int, ...] | None = None) -> ReaderTensor:
        """Tensor ``name``'s entry (nothing read); ModelLoadError when it is missing, of a quant
        type we cannot read, or of another shape (numpy order) than ``shape``."""
        t = self._tensors.get(name)
        if t is None:
            raise ModelLoadError(f"{self.path}: tensor {name!r} is missing")
        qtype = GGMLQuantizationType(t.tensor_type)
        if qtype not in SUPPORTED_TYPES:
            raise ModelLoadError(f"{self.path}: tensor {name!r} has quant type {qtype.name}, "
                                 f"supported: {', '.join(sorted(q.name for q in SUPPORTED_TYPES))}")
        dims = _numpy_shape(t)
        if shape is not None and dims != tuple(shape):
            raise ModelLoadError(
                f"{self.path}: tensor {name!r} has shape {list(dims)}, expected {list(shape)}")
        return t

    def tensor_nbytes(self, name: str) -> int:
        """Bytes of tensor ``name`` in the file."""
        return int(self._tensors[name].n_bytes)

    def raw(self, name: str) -> tuple[np.ndarray, str, tuple[int, ...]]:
        """Tensor ``name`` as the file holds it: its bytes (a read-only uint8 view of the memory
        map, nothing copied), its ggml type name and its shape in numpy order."""
        t = self.check_tensor(name)
        data = np.asarray(t.data)
        return data.reshape(-1).view(np.uint8), GGMLQuantizationType(t.tensor_type).name, _numpy_shape(t)

    def tensor(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """Tensor ``name`` as float32 in numpy order, checked against ``shape`` when given.

        Dequantized once per file and kept (read-only): for the few small tensors read as
        values (the graphs hold weights as inputs, ``raw`` binds them)."""
        t = self.check_tensor(name, shape)
        qtype = GGMLQuantizationType(t.tensor_type)
        dims = _numpy_shape(t)
        if name not in self._dequantized:
            try:  # garbage scales may overflow: the values are the file's, not an error
                with np.errstate(over="ignore", invalid="ignore"):
                    data = dequantize(np.asarray(t.data), qtype)
            except Exception as exc:  # truncated data, inconsistent block counts
                raise ModelLoadError(f"{self.path}: tensor {name!r} cannot be read ({exc})") from exc
            array = np.ascontiguousarray(data, dtype=np.float32).reshape(dims)
            array.setflags(write=False)
            self._dequantized[name] = array
        return self._dequantized[name]

    def tensor_types(self) -> Mapping[str, str]:
        return {n: GGMLQuantizationType(t.tensor_type).name for n, t in self._tensors.items()}


def _numpy_shape(t: ReaderTensor) -> tuple[int, ...]:
    return tuple(int(d) for d in reversed(t.shape))


def _contents(path: Path, name: str, field: ReaderField) -> object:
    """The value of metadata key ``name``; ModelLoadError when its text is not UTF-8."""
    try:
        return field.contents()
    except UnicodeDecodeError as exc:
        raise ModelLoadError(f"{path}: metadata key {name!r} holds a string that is not valid "
                             f"UTF-8 (byte {exc.start})") from exc

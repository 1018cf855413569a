"""Read a GGUF file: metadata as Python values, tensors dequantized to float32 numpy.

Shapes are numpy order (ggml's ``ne`` reversed), as the ``gguf`` package returns them. Every
problem (not a GGUF file, truncated, unknown quant type, missing tensor, wrong shape) is a
one-line ``ModelLoadError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, ReaderTensor
from gguf.quants import dequantize

from gdnc.errors import ModelLoadError

# quant types we dequantize; anything else is refused by name
SUPPORTED_TYPES = frozenset({
    GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16,
    GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_K,
    GGMLQuantizationType.Q5_K, GGMLQuantizationType.Q6_K,
})


class GgufFile:
    """An opened GGUF file. ``metadata`` maps key -> str / int / float / bool / list."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"{self.path}: no such file")
        try:
            reader = GGUFReader(self.path)
            self.metadata: dict[str, object] = {
                name: field.contents() for name, field in reader.fields.items()
                if not name.startswith("GGUF.")
            }
            self._tensors: dict[str, ReaderTensor] = {}
            self._dequantized: dict[str, np.ndarray] = {}
            for t in reader.tensors:
                if t.name in self._tensors:
                    raise ModelLoadError(f"{self.path}: tensor {t.name!r} appears twice")
                self._tensors[t.name] = t
        except ModelLoadError:
            raise
        except Exception as exc:  # the gguf package raises ValueError, IndexError, ...
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelLoadError(f"{self.path}: not a readable GGUF file ({detail})") from exc

    @property
    def architecture(self) -> str:
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str):
            raise ModelLoadError(f"{self.path}: no general.architecture key")
        return arch

    def key(self, name: str, kind: type | tuple[type, ...], default: object = ...) -> object:
        """Metadata value ``name`` of Python type ``kind``; ModelLoadError when missing/wrong."""
        if name not in self.metadata:
            if default is ...:
                raise ModelLoadError(f"{self.path}: metadata key {name!r} is missing")
            return default
        value = self.metadata[name]
        if isinstance(value, bool) and kind in (int, float):
            raise ModelLoadError(f"{self.path}: metadata key {name!r} is a bool, want {kind}")
        if not isinstance(value, kind):
            raise ModelLoadError(
                f"{self.path}: metadata key {name!r} has type {type(value).__name__}, "
                f"want {getattr(kind, '__name__', kind)}")
        return value

    def has_tensor(self, name: str) -> bool:
        return name in self._tensors

    def tensor_names(self) -> list[str]:
        return list(self._tensors)

    def tensor(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """Tensor ``name`` as float32 in numpy order, checked against ``shape`` when given.

        Dequantized once per file and kept (read-only): every graph built from the file (one
        per unfused batch composition) shares the arrays."""
        t = self._tensors.get(name)
        if t is None:
            raise ModelLoadError(f"{self.path}: tensor {name!r} is missing")
        qtype = GGMLQuantizationType(t.tensor_type)
        if qtype not in SUPPORTED_TYPES:
            raise ModelLoadError(f"{self.path}: tensor {name!r} has quant type {qtype.name}, "
                                 f"supported: {', '.join(sorted(q.name for q in SUPPORTED_TYPES))}")
        dims = tuple(int(d) for d in reversed(t.shape))
        if shape is not None and dims != tuple(shape):
            raise ModelLoadError(
                f"{self.path}: tensor {name!r} has shape {list(dims)}, expected {list(shape)}")
        if name not in self._dequantized:
            try:
                data = dequantize(np.asarray(t.data), qtype)
            except Exception as exc:  # truncated data, inconsistent block counts
                raise ModelLoadError(f"{self.path}: tensor {name!r} cannot be read ({exc})") from exc
            array = np.ascontiguousarray(data, dtype=np.float32).reshape(dims)
            array.setflags(write=False)
            self._dequantized[name] = array
        return self._dequantized[name]

    def tensor_types(self) -> Mapping[str, str]:
        return {n: GGMLQuantizationType(t.tensor_type).name for n, t in self._tensors.items()}

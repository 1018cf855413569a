"""Tensor payloads of an ONNX model, checked before anything turns them into arrays.

A ``TensorProto`` declares a data type and dims; its bytes are inline (``raw_data`` or a
typed field such as ``float_data``) or in an external file named by ``external_data``. The
declaration fixes how many bytes (or typed entries) there must be, so nothing is ever sized
from a number the file merely claims:

- ``declared_nbytes`` / ``declared_entries``: the byte / typed-entry count the dims and data
  type call for, after refusing unknown data types, negative dims and element counts that
  overflow int64.
- ``check_inline``: the data present matches that count exactly.
- ``model_tensors``: every tensor of a model (initializers, sparse ones, tensor attributes;
  of every graph, subgraph and function body), each with the label errors call it by.
- ``load_external``: reads each external tensor's bytes into ``raw_data``, but only from a
  regular file inside the model's folder (a plain relative location, symlinks resolved),
  only a byte range that lies within the file and is exactly the declared size, and never
  the same bytes for two tensors.

``load_tensor_data`` does all of it for a model. Every failure is a ``ModelLoadError``
naming the tensor and the problem.
"""

from __future__ import annotations

import math
import os
import stat
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import onnx
from onnx import TensorProto
from onnx.external_data_helper import ExternalDataInfo

from gdnc.errors import ModelLoadError

INT64_MAX = (1 << 63) - 1

# elements packed several to a byte: bits per element (the others use the numpy itemsize)
_PACKED_BITS: dict[int, int] = {
    TensorProto.INT4: 4, TensorProto.UINT4: 4, TensorProto.FLOAT4E2M1: 4,
    TensorProto.INT2: 2, TensorProto.UINT2: 2,
    TensorProto.FLOAT6E2M3: 6, TensorProto.FLOAT6E3M2: 6,
}
# typed-field entries per element where it is not one: complex numbers take two floats,
# 4- and 2-bit elements are packed into one int32 entry per byte (6-bit ones are not)
_ENTRIES_PER_ELEMENT: dict[int, int] = {TensorProto.COMPLEX64: 2, TensorProto.COMPLEX128: 2}
_ELEMENTS_PER_ENTRY: dict[int, int] = {TensorProto.INT4: 2, TensorProto.UINT4: 2, TensorProto.FLOAT4E2M1: 2,
                       TensorProto.INT2: 4, TensorProto.UINT2: 4}


def element_count(dims: Iterable[int], what: str) -> int:
    """The product of ``dims``; ModelLoadError for a negative dim or an int64 overflow."""
    dims = list(dims)
    if any(d < 0 for d in dims):
        raise ModelLoadError(f"{what} has a negative dim in {dims}")
    if math.prod(d for d in dims if d) > INT64_MAX:
        raise ModelLoadError(f"{what}: dims {dims} overflow int64")
    return math.prod(dims)


def _data_type(tensor: TensorProto, what: str) -> int:
    dt = tensor.data_type
    if dt == TensorProto.UNDEFINED or dt not in TensorProto.DataType.values():
        raise ModelLoadError(f"{what} has unknown data_type {dt}")
    return dt


def declared_nbytes(tensor: TensorProto, what: str) -> int:
    """Bytes of ``tensor``'s payload as dims and data type declare it (raw / external form)."""
    dt = _data_type(tensor, what)
    if dt == TensorProto.STRING:
        raise ModelLoadError(f"{what}: a STRING tensor cannot hold raw or external data")
    count = element_count(tensor.dims, what)
    bits = _PACKED_BITS.get(dt) or onnx.helper.tensor_dtype_to_np_dtype(dt).itemsize * 8
    return -(-count * bits // 8)


def declared_entries(tensor: TensorProto, what: str) -> tuple[str, int]:
    """(typed field name, entry count) ``tensor``'s dims and data type call for."""
    dt = _data_type(tensor, what)
    count = element_count(tensor.dims, what)
    per_entry = _ELEMENTS_PER_ENTRY.get(dt, 1)
    return onnx.helper.tensor_dtype_to_field(dt), -(-count // per_entry) * _ENTRIES_PER_ELEMENT.get(dt, 1)


_TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")


def check_inline(tensor: TensorProto, what: str) -> None:
    """Refuse an inline tensor whose data does not match its dims and data type exactly."""
    if tensor.HasField("segment"):
        raise ModelLoadError(f"{what} is stored in segments, which gdnc does not read")
    present = [f for f in _TYPED_FIELDS if len(getattr(tensor, f))]
    if tensor.HasField("raw_data"):
        expected = declared_nbytes(tensor, what)
        if present:
            raise ModelLoadError(f"{what} has both raw_data and {present[0]}")
        held = len(tensor.raw_data)  # protobuf hands over a copy: measured once
        if held != expected:
            raise ModelLoadError(f"{what}: dims {list(tensor.dims)} need {expected} bytes of "
                                 f"raw_data, the file holds {held}")
        return
    field, expected = declared_entries(tensor, what)
    if any(f != field for f in present):
        other = next(f for f in present if f != field)
        raise ModelLoadError(f"{what}: data_type {TensorProto.DataType.Name(tensor.data_type)} "
                             f"keeps its values in {field}, not {other}")
    got = len(getattr(tensor, field))
    if got != expected:
        raise ModelLoadError(f"{what}: dims {list(tensor.dims)} need {expected} values in "
                             f"{field}, the file holds {got}")


@dataclass(frozen=True)
class _Extent:
    """Where one external tensor's bytes are: a checked file inside the folder, a range."""

    tensor: TensorProto
    what: str
    file: Path
    offset: int
    length: int


def _plain_relative(location: str, what: str) -> PurePosixPath:
    """``location`` as a relative path with no ``..``, drive, root or NUL; else refused."""
    if not location:
        raise ModelLoadError(f"{what}: external data has no location")
    if "\0" in location:
        raise ModelLoadError(f"{what}: external data location {location!r} contains a NUL byte")
    posix, windows = PurePosixPath(location), PureWindowsPath(location)
    if posix.is_absolute() or windows.drive or windows.root:
        raise ModelLoadError(f"{what}: external data location {location!r} is an absolute path")
    if ".." in posix.parts or ".." in windows.parts:
        raise ModelLoadError(f"{what}: external data location {location!r} leaves the model's "
                             f"folder ('..')")
    return posix


def _resolve_inside(folder: Path, location: str, what: str) -> Path:
    """The real path of ``location`` under ``folder`` (resolved), if it exists and is inside."""
    relative = _plain_relative(location, what)
    try:
        real = (folder / relative).resolve(strict=True)
    except FileNotFoundError:
        raise ModelLoadError(f"{what}: external data file {location!r} does not exist") from None
    except RuntimeError:  # Python < 3.13 reports a symlink loop so
        raise ModelLoadError(f"{what}: external data file {location!r} cannot be resolved "
                             f"(a symlink loop)") from None
    except OSError as exc:
        raise ModelLoadError(f"{what}: external data file {location!r} cannot be resolved "
                             f"({exc.strerror or exc})") from None
    if not real.is_relative_to(folder):
        raise ModelLoadError(f"{what}: external data file {location!r} resolves outside the "
                             f"model's folder (a symlink)")
    return real


def _extent(tensor: TensorProto, what: str, folder: Path) -> _Extent:
    """Where ``tensor``'s external bytes are, every claim about them checked."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unknown keys are ignored, as onnx does
        try:
            info = ExternalDataInfo(tensor)
        except ValueError as exc:
            raise ModelLoadError(f"{what}: bad external data offset or length ({exc})") from None
    file = _resolve_inside(folder, info.location, what)
    status = file.stat()
    if not stat.S_ISREG(status.st_mode):
        raise ModelLoadError(f"{what}: external data location {info.location!r} is not a regular file")
    expected = declared_nbytes(tensor, what)
    size, offset = status.st_size, info.offset or 0
    if offset > size:
        raise ModelLoadError(f"{what}: external data offset {offset} is past the end of "
                             f"{info.location!r} ({size} bytes)")
    length = size - offset if info.length is None else info.length
    if offset + length > size:
        raise ModelLoadError(f"{what}: external data range [{offset}, {offset + length}) runs "
                             f"past the end of {info.location!r} ({size} bytes)")
    if length != expected:
        raise ModelLoadError(f"{what}: external data length {length} does not match dims "
                             f"{list(tensor.dims)} ({expected} bytes)")
    return _Extent(tensor, what, file, offset, length)


def _check_disjoint(extents: list[_Extent]) -> None:
    """Two tensors may not share bytes: reading is then bounded by the files' sizes."""
    ordered = sorted((e for e in extents if e.length), key=lambda e: (e.file, e.offset))
    for before, after in zip(ordered, ordered[1:]):
        if before.file == after.file and after.offset < before.offset + before.length:
            raise ModelLoadError(f"{after.what}: external data overlaps that of {before.what} "
                                 f"in {after.file.name!r}")


def _read(extent: _Extent) -> bytes:
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(extent.file, flags)
    except OSError as exc:
        raise ModelLoadError(f"{extent.what}: cannot open external data file "
                             f"{extent.file.name!r} ({exc.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ModelLoadError(f"{extent.what}: external data {extent.file.name!r} is not a "
                                 f"regular file")
        data = os.pread(fd, extent.length, extent.offset)
    finally:
        os.close(fd)
    if len(data) != extent.length:
        raise ModelLoadError(f"{extent.what}: external data file {extent.file.name!r} ended "
                             f"early (it changed while being read)")
    return data


def load_external(tensors: Iterable[tuple[TensorProto, str]], folder: Path) -> int:
    """Read every EXTERNAL tensor of ``(tensor, label)`` into ``raw_data``; returns how many.

    Everything is checked before anything is read. ``folder``: the model's folder, resolved.
    """
    extents = [_extent(t, what, folder) for t, what in tensors
               if t.data_location == TensorProto.EXTERNAL]
    _check_disjoint(extents)
    for extent in extents:
        data = _read(extent)
        tensor = extent.tensor
        tensor.raw_data = data
        tensor.ClearField("data_location")
        del tensor.external_data[:]
    return len(extents)


def model_tensors(proto: onnx.ModelProto) -> Iterator[tuple[TensorProto, str]]:
    """Every ``TensorProto`` of ``proto`` with its label: initializers, sparse initializers'
    values and indices, and tensor attributes, in the main graph, every subgraph, the
    training graphs and every function body. A sparse tensor's dims are checked on the way."""
    yield from _graph_tensors(proto.graph)
    for info in proto.training_info:
        yield from _graph_tensors(info.initialization)
        yield from _graph_tensors(info.algorithm)
    for function in proto.functions:
        yield from _node_tensors(function.node)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[tuple[TensorProto, str]]:
    for tensor in graph.initializer:
        yield tensor, f"initializer {tensor.name!r}"
    for sparse in graph.sparse_initializer:
        yield from _sparse_parts(sparse, f"sparse initializer {sparse.values.name!r}")
    yield from _node_tensors(graph.node)


def _node_tensors(nodes: Iterable[onnx.NodeProto]) -> Iterator[tuple[TensorProto, str]]:
    for node in nodes:
        for attr in node.attribute:
            what = f"tensor attribute {attr.name!r} of node {node.name or node.op_type!r}"
            if attr.HasField("t"):
                yield attr.t, what
            for tensor in attr.tensors:
                yield tensor, what
            if attr.HasField("sparse_tensor"):
                yield from _sparse_parts(attr.sparse_tensor, what)
            for sparse in attr.sparse_tensors:
                yield from _sparse_parts(sparse, what)
            if attr.HasField("g"):
                yield from _graph_tensors(attr.g)
            for sub in attr.graphs:
                yield from _graph_tensors(sub)


def _sparse_parts(sparse: onnx.SparseTensorProto, what: str) -> Iterator[tuple[TensorProto, str]]:
    element_count(sparse.dims, what)
    yield sparse.values, f"values of {what}"
    yield sparse.indices, f"indices of {what}"


def load_tensor_data(proto: onnx.ModelProto, folder: Path) -> int:
    """Read external data into every tensor of ``proto`` that has some (``load_external``),
    then hold every tensor's data to its declaration (``check_inline``). Returns how many
    tensors were external. ``folder``: the model's folder, resolved."""
    tensors = list(model_tensors(proto))
    external = load_external(tensors, folder)
    for tensor, what in tensors:
        check_inline(tensor, what)
    return external

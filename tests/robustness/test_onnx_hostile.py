"""Hostile ONNX files through ``gdnc inspect / convert / compare / run``, held to the promise
of ``harness.py``: a non-zero exit with one ``error: ...`` line naming the problem (or, for a
file that is odd but well formed, possibly success), no traceback, within the deadline, no
allocation sized from the file's claims, and for ``convert`` no output left behind.

Every case is built in ``tmp_path`` from a small valid export (``zoo.export_hf``, T=2) or a
tiny hand-made graph: truncations (every top-level field boundary, every field boundary
inside the graph, and evenly spaced offsets), byte flips drawn by hypothesis, broken dataflow
(cycles, dangling names in the main graph and in subgraphs, duplicate producers, missing
initializers, outputs nothing produces), broken headers, tensors whose data contradicts their
dims or type, external data that points out of the model's folder, past its file or at the
wrong number of bytes (and a secret file outside the folder that must never be opened),
unknown ops and absurd attributes. A few cases also run as real ``python -m gdnc``
processes. ``-m slow`` draws many more byte flips.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from corpus.zoo import export_hf
from tests.robustness.harness import Outcome, hold_to_promise, run_cli

SUITE = "onnx"
ALL_COMMANDS = ("inspect", "convert", "compare", "run")
Edit = Callable[[onnx.ModelProto], None]


# --------------------------------------------------------------------------- sources

class Base:
    """The valid export every mutated case starts from, and inputs that run it. (A plain
    class: hypothesis would print a dataclass's 40 kB of fields with every failing example.)"""

    def __init__(self, proto: onnx.ModelProto, blob: bytes, inputs: Path) -> None:
        self.proto, self.blob, self.inputs = proto, blob, inputs

    def __repr__(self) -> str:
        return f"Base({self.proto.graph.name!r}, {len(self.blob)} bytes)"

    def edited(self, edit: Edit) -> onnx.ModelProto:
        proto = copy.deepcopy(self.proto)
        edit(proto)
        return proto


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Base:
    zoo = export_hf(T=2, exporter="dynamo")
    folder = tmp_path_factory.mktemp("base")
    np.savez(folder / "inputs.npz", **zoo.inputs)
    blob = Path(zoo.path).read_bytes()
    return Base(onnx.ModelProto.FromString(blob), blob, folder / "inputs.npz")


def _write(folder: Path, proto: onnx.ModelProto | bytes, name: str = "m.onnx") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(proto if isinstance(proto, bytes) else proto.SerializeToString())
    return path


def _args(command: str, model: Path, inputs: Path | None, out_dir: Path) -> list[str]:
    if command == "convert":
        return ["convert", str(model), "-o", str(out_dir / "converted.onnx"), "-q"]
    if command == "run":
        return ["run", str(model), "--inputs", str(inputs)]
    return [command, str(model)]


def expect(case: str, model: Path, inputs: Path | None = None, *,
           commands: tuple[str, ...] = ALL_COMMANDS, mention: str | None = None,
           may_succeed: bool = False) -> dict[str, Outcome]:
    """Run ``model`` through each command and hold every outcome to the promise; a refused
    ``convert`` must leave its output folder empty. ``run`` needs ``inputs``."""
    out_dir = model.parent / "out"
    outcomes = {}
    for command in commands:
        out_dir.mkdir(exist_ok=True)
        for leftover in out_dir.iterdir():
            leftover.unlink()
        outcome = run_cli(_args(command, model, inputs, out_dir))
        hold_to_promise(SUITE, f"{case} [{command}]", outcome, mention=mention, may_succeed=may_succeed)
        if command == "convert" and outcome.code != 0:
            assert not list(out_dir.iterdir()), f"{case}: refused convert left {list(out_dir.iterdir())}"
        outcomes[command] = outcome
    return outcomes


def _initializer(proto: onnx.ModelProto, name: str) -> TensorProto:
    return next(t for t in proto.graph.initializer if t.name == name)


def _first(proto: onnx.ModelProto, op_type: str) -> onnx.NodeProto:
    return next(n for n in proto.graph.node if n.op_type == op_type)


def _set_attr(op_type: str, name: str, value) -> Edit:
    def edit(proto: onnx.ModelProto) -> None:
        node = _first(proto, op_type)
        kept = [a for a in node.attribute if a.name != name]
        del node.attribute[:]
        node.attribute.extend([*kept, helper.make_attribute(name, value)])
    return edit


# --------------------------------------------------------------------------- truncation

def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def _field_spans(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[int, int, int]]:
    """(field number, start, end) of each field of the protobuf message in data[start:end]."""
    pos, end = start, len(data) if end is None else end
    spans = []
    while pos < end:
        first = pos
        key, pos = _varint(data, pos)
        wire = key & 7
        if wire == 0:
            _, pos = _varint(data, pos)
        elif wire == 2:
            length, pos = _varint(data, pos)
            pos += length
        else:
            pos += 8 if wire == 1 else 4
        spans.append((key >> 3, first, pos))
    return spans


GRAPH_FIELD = 7  # ModelProto.graph


def _truncation_points(blob: bytes) -> tuple[set[int], set[int]]:
    """(offsets where a top-level field ends: a shorter but well-formed message, the other
    offsets to cut at: field boundaries inside the graph, their neighbours, a spread)."""
    top = _field_spans(blob)
    boundaries = {end for _, _, end in top} | {0}
    _, graph_start, graph_end = next(f for f in top if f[0] == GRAPH_FIELD)
    inside = {p for _, s, e in _field_spans(blob, _payload(blob, graph_start), graph_end)
              for p in (s, s + 1, e - 1)}
    inside |= {b + d for b in boundaries for d in (-1, 1)}
    inside |= set(range(1, 24)) | {len(blob) * k // 40 for k in range(1, 40)}
    return boundaries - {len(blob)}, {p for p in inside if 0 < p < len(blob)} - boundaries


def test_truncation_at_every_field_boundary_and_between(base, tmp_path) -> None:
    boundaries, cuts = _truncation_points(base.blob)
    assert len(boundaries) >= 4 and len(cuts) > 100
    for at in sorted(boundaries):
        path = _write(tmp_path / f"b{at}", base.blob[:at])
        expect(f"truncated at field boundary {at}", path, commands=("inspect", "convert"),
               may_succeed=True)
    for at in sorted(cuts):
        path = _write(tmp_path / "cut", base.blob[:at])
        expect(f"truncated at {at}", path, commands=("inspect",), mention="ONNX model")
    path = _write(tmp_path / "cut", base.blob[: len(base.blob) // 2])
    expect("truncated half-way", path, base.inputs, mention="not a readable ONNX model")


# --------------------------------------------------------------------------- byte flips

def _payload(blob: bytes, start: int) -> int:
    """Where the payload of the length-delimited field at ``start`` begins."""
    return _varint(blob, _varint(blob, start)[1])[1]


INITIALIZER_FIELD, RAW_DATA_FIELD = 5, 9  # GraphProto.initializer, TensorProto.raw_data


def _structural_offsets(blob: bytes) -> list[int]:
    """Offsets outside the initializers' raw data: flips there change the model's structure."""
    inside = np.zeros(len(blob), bool)
    _, graph_start, graph_end = next(f for f in _field_spans(blob) if f[0] == GRAPH_FIELD)
    for number, start, end in _field_spans(blob, _payload(blob, graph_start), graph_end):
        if number == INITIALIZER_FIELD:
            for field_number, s, e in _field_spans(blob, _payload(blob, start), end):
                if field_number == RAW_DATA_FIELD:
                    inside[_payload(blob, s): e] = True
    return np.flatnonzero(~inside).tolist()


FUZZ_COMMANDS = ALL_COMMANDS


def _flip_case(base: Base, folder: Path, data: st.DataObject) -> None:
    structural = _structural_offsets(base.blob)
    offset = st.one_of(st.sampled_from(structural), st.integers(0, len(base.blob) - 1))
    flips = data.draw(st.lists(st.tuples(offset, st.integers(1, 255)), min_size=1, max_size=4))
    blob = bytearray(base.blob)
    for at, mask in flips:
        blob[at] ^= mask
    command = data.draw(st.sampled_from(FUZZ_COMMANDS))
    path = _write(folder, bytes(blob))
    expect(f"flips {flips}", path, base.inputs, commands=(command,), may_succeed=True)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


_FUZZ = dict(derandomize=True, deadline=None, database=None,
             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(max_examples=120, **_FUZZ)
@given(data=st.data())
def test_byte_flips(base, fuzz_dir, data) -> None:
    _flip_case(base, fuzz_dir, data)


@pytest.mark.slow
@settings(max_examples=1500, **_FUZZ)
@given(data=st.data())
def test_byte_flips_many(base, fuzz_dir, data) -> None:
    """On demand (``-m slow``): many more flips."""
    _flip_case(base, fuzz_dir, data)


# --------------------------------------------------------------------------- dataflow

def _cycle(proto: onnx.ModelProto) -> None:
    """The first node reading another node's output now reads its own reader's output too."""
    producers = {o: n for n in proto.graph.node for o in n.output}
    reader = next(n for n in proto.graph.node if any(i in producers for i in n.input))
    upstream = producers[next(i for i in reader.input if i in producers)]
    upstream.input[0] = reader.output[0]


def _self_loop(proto: onnx.ModelProto) -> None:
    node = _first(proto, "Exp")
    node.input[0] = node.output[0]


def _duplicate_producer(proto: onnx.ModelProto) -> None:
    _first(proto, "Sqrt").output[0] = _first(proto, "Exp").output[0]


def _same_output_twice(proto: onnx.ModelProto) -> None:
    node = _first(proto, "Exp")
    node.output.append(node.output[0])


def _writes_graph_input(proto: onnx.ModelProto) -> None:
    _first(proto, "Exp").output[0] = proto.graph.input[0].name


def _drop_initializer(name: str) -> Edit:
    def edit(proto: onnx.ModelProto) -> None:
        proto.graph.initializer.remove(_initializer(proto, name))
    return edit


def _rename_input_of(op_type: str, name: str) -> Edit:
    def edit(proto: onnx.ModelProto) -> None:
        _first(proto, op_type).input[0] = name
    return edit


def _output_named(name: str) -> Edit:
    def edit(proto: onnx.ModelProto) -> None:
        proto.graph.output[0].name = name
    return edit


def _duplicate_initializer(proto: onnx.ModelProto) -> None:
    proto.graph.initializer.append(copy.deepcopy(proto.graph.initializer[0]))


def _duplicate_input(proto: onnx.ModelProto) -> None:
    proto.graph.input.append(copy.deepcopy(proto.graph.input[0]))


DATAFLOW_CASES: dict[str, tuple[Edit, str]] = {
    "cycle": (_cycle, "cycle"),
    "self loop": (_self_loop, "cycle"),
    "dangling input": (_rename_input_of("Exp", "nowhere"), "'nowhere', which nothing produces"),
    "missing initializer": (_drop_initializer("val_0"), "'val_0', which nothing produces"),
    "duplicate producer": (_duplicate_producer, "two producers"),
    "same output twice": (_same_output_twice, "two producers"),
    "node writes a graph input": (_writes_graph_input, "already a graph input"),
    "output not produced": (_output_named("phantom"), "'phantom' is not produced"),
    "no outputs": (lambda p: p.graph.ClearField("output"), "no outputs"),
    "duplicate initializer": (_duplicate_initializer, "twice"),
    "duplicate input": (_duplicate_input, "twice"),
    "node without op_type": (lambda p: _first(p, "Exp").ClearField("op_type"), "no op_type"),
}


@pytest.mark.parametrize("case", DATAFLOW_CASES)
def test_broken_dataflow(base, tmp_path, case) -> None:
    edit, mention = DATAFLOW_CASES[case]
    expect(case, _write(tmp_path, base.edited(edit)), base.inputs, mention=mention)


def _branch(name: str, nodes: list[onnx.NodeProto], output: str) -> onnx.GraphProto:
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(output, TensorProto.FLOAT, [2])])


def _if_model(then_nodes: list[onnx.NodeProto], then_output: str) -> onnx.ModelProto:
    """y = If(c, then: ``then_nodes`` (reading the outer ``x``), else: -x)."""
    branch = helper.make_node("If", ["c"], ["y"], name="branch",
                              then_branch=_branch("then", then_nodes, then_output),
                              else_branch=_branch("else", [helper.make_node("Neg", ["x"], ["n"])], "n"))
    graph = helper.make_graph(
        [branch], "main",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _loop_model(body_reads: str) -> onnx.ModelProto:
    """A Loop whose body adds ``body_reads`` to its carried value."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond"], ["cond_out"]),
         helper.make_node("Add", ["acc", body_reads], ["acc_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [2])])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["n", "", "x"], ["y"], body=body)], "main",
        [helper.make_tensor_value_info("n", TensorProto.INT64, []),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _nested_if(inner_reads: str) -> onnx.ModelProto:
    inner = _if_model([helper.make_node("Identity", [inner_reads], ["t"])], "t").graph.node[0]
    inner.output[0] = "inner_y"
    return _if_model([inner], "inner_y")


SUBGRAPH_CASES: dict[str, tuple[onnx.ModelProto, str | None]] = {
    "If branch reads the outer scope": (_if_model([helper.make_node("Abs", ["x"], ["t"])], "t"), None),
    "If branch reads a dangling name": (_if_model([helper.make_node("Abs", ["ghost"], ["t"])], "t"),
                                        "'ghost', which nothing produces"),
    "If branch output not produced": (_if_model([helper.make_node("Abs", ["x"], ["t"])], "u"),
                                      "'u' is not produced"),
    "If branch outputs an outer value": (_if_model([], "x"), "'x' of an enclosing graph"),
    "If branch has a cycle": (_if_model([helper.make_node("Abs", ["b"], ["a"]),
                                         helper.make_node("Abs", ["a"], ["b"])], "b"), "cycle"),
    "Loop body reads the outer scope": (_loop_model("x"), None),
    "Loop body reads a dangling name": (_loop_model("ghost"), "'ghost', which nothing produces"),
    "nested If reads the outermost scope": (_nested_if("x"), None),
    "nested If reads a dangling name": (_nested_if("ghost"), "'ghost', which nothing produces"),
}


@pytest.mark.parametrize("case", SUBGRAPH_CASES)
def test_subgraph_dataflow(tmp_path, case) -> None:
    proto, mention = SUBGRAPH_CASES[case]
    outcomes = expect(case, _write(tmp_path, proto), commands=("inspect", "convert"),
                      mention=mention, may_succeed=mention is None)
    if mention is None:
        assert outcomes["inspect"].code == 0, outcomes["inspect"].stderr


def _rename_op(op_type: str) -> Edit:
    def edit(proto: onnx.ModelProto) -> None:
        _first(proto, "Exp").op_type = op_type
    return edit


def test_text_that_is_not_utf8_or_not_printable(base, tmp_path) -> None:
    op_type = b'"\tTranspose'  # NodeProto.op_type (field 4), 9 bytes
    assert op_type in base.blob
    path = _write(tmp_path / "a", base.blob.replace(op_type, b'"\t\xd4ranspose', 1))
    expect("op_type not UTF-8", path, base.inputs, mention="not UTF-8")
    for case, edit in {"op_type with a newline": _rename_op("Ex\np"),
                       "op_type with a group separator": _rename_op("Ex\x1dp"),
                       "value name with a carriage return": _rename_input_of("Exp", "select\r3")}.items():
        expect(case, _write(tmp_path / "b", base.edited(edit)), base.inputs, mention="not printable")


# --------------------------------------------------------------------------- headers

def _set_opset(version: int, domain: str = "") -> Edit:
    def edit(proto: onnx.ModelProto) -> None:
        proto.opset_import.append(helper.make_opsetid(domain, version))
        if domain == "":
            proto.opset_import.remove(proto.opset_import[0])
    return edit


def _header(**fields) -> Edit:
    def edit(proto: onnx.ModelProto) -> None:
        for key, value in fields.items():
            setattr(proto, key, value)
    return edit


HEADER_CASES: dict[str, tuple[Edit, str]] = {
    "ir_version 0": (_header(ir_version=0), "ir_version"),
    "ir_version -1": (_header(ir_version=-1), "ir_version"),
    "ir_version 2^62": (_header(ir_version=1 << 62), "ir_version"),
    "opset 0": (_set_opset(0), "version 0"),
    "opset -5": (_set_opset(-5), "version -5"),
    "opset 10^9": (_set_opset(10**9), "version 1000000000"),
    "custom domain opset -3": (_set_opset(-3, "com.evil"), "version -3"),
    "default domain imported twice": (lambda p: p.opset_import.append(helper.make_opsetid("ai.onnx", 18)),
                                      "twice"),
    "no opset_import": (lambda p: p.ClearField("opset_import"), "opset"),
    "no graph": (lambda p: p.ClearField("graph"), "no graph"),
}


@pytest.mark.parametrize("case", HEADER_CASES)
def test_broken_header(base, tmp_path, case) -> None:
    edit, mention = HEADER_CASES[case]
    expect(case, _write(tmp_path, base.edited(edit)), base.inputs, mention=mention)


def _nested_ifs(depth: int) -> onnx.ModelProto:
    """``depth`` If nodes, each in the then-branch of the one above it."""
    leaf = graph = _branch("leaf", [helper.make_node("Identity", ["x"], ["y0"])], "y0")
    for level in range(1, depth + 1):
        node = helper.make_node("If", ["c"], [f"y{level}"], then_branch=graph, else_branch=leaf)
        graph = _branch(f"level{level}", [node], f"y{level}")
    main = helper.make_graph(graph.node, "main", [
        helper.make_tensor_value_info("c", TensorProto.BOOL, []),
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])], list(graph.output))
    return helper.make_model(main, opset_imports=[helper.make_opsetid("", 18)])


def _deep_ifs_blob(depth: int) -> bytes:
    """A model whose If nodes nest ``depth`` levels, serialized by hand (protobuf will not
    build a message deeper than it can parse back)."""
    node = helper.make_node("Identity", ["x"], ["y"]).SerializeToString()
    for _ in range(depth):
        attr = _tag(1, b"then_branch") + _tag(6, _tag(1, node)) + bytes([0xA0, 0x01, _GRAPH])
        node = _tag(1, b"c") + _tag(2, b"y") + _tag(4, b"If") + _tag(5, attr)
    opset = helper.make_opsetid("", 18).SerializeToString()
    return bytes([0x08, 10]) + _tag(GRAPH_FIELD, _tag(1, node)) + _tag(8, opset)


_GRAPH = onnx.AttributeProto.GRAPH  # AttributeProto.type (field 20), GraphProto.node is field 1


def _tag(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _encode_varint(number << 3 | 2) + _encode_varint(len(payload)) + payload


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


FILE_CASES: dict[str, tuple[Callable[[], bytes], str | None]] = {
    "empty file": (lambda: b"", "empty"),
    "text file": (lambda: b"this is not a model\n" * 20, "ONNX model"),
    "png header": (lambda: b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "ONNX model"),
    "gguf magic": (lambda: b"GGUF\x03\x00\x00\x00" + bytes(64), "ONNX model"),
    "random bytes": (lambda: np.random.default_rng(0).bytes(4096), "ONNX model"),
    "varint that never ends": (lambda: b"\x08" + b"\xff" * 64, "ONNX model"),
    "length past the end": (lambda: b"\x3a\xff\xff\xff\xff\x0f", "ONNX model"),
    "30 nested If levels": (lambda: _nested_ifs(30).SerializeToString(), None),
    "40 nested If levels": (lambda: _deep_ifs_blob(40), "nested deeper"),
}


@pytest.mark.parametrize("case", FILE_CASES)
def test_not_a_model(tmp_path, case) -> None:
    make, mention = FILE_CASES[case]
    expect(case, _write(tmp_path, make()), commands=("inspect", "convert", "compare"),
           mention=mention, may_succeed=mention is None)


def test_missing_file_and_folder(tmp_path) -> None:
    expect("missing file", tmp_path / "absent.onnx", commands=("inspect",), mention="no such file")
    (tmp_path / "dir.onnx").mkdir()
    expect("a folder", tmp_path / "dir.onnx", commands=("inspect",), mention="no such file")


# --------------------------------------------------------------------------- inline tensors

def _tensor(name: str, **fields) -> Edit:
    """Set fields of initializer ``name`` (``dims``/typed lists replace, None clears)."""
    def edit(proto: onnx.ModelProto) -> None:
        tensor = _initializer(proto, name)
        for key, value in fields.items():
            tensor.ClearField(key)
            if isinstance(value, list):
                getattr(tensor, key).extend(value)
            elif value is not None:
                setattr(tensor, key, value)
    return edit


def _raw(name: str, transform: Callable[[bytes], bytes]) -> Edit:
    def edit(proto: onnx.ModelProto) -> None:
        tensor = _initializer(proto, name)
        tensor.raw_data = transform(tensor.raw_data)
    return edit


def _segment(proto: onnx.ModelProto) -> None:
    _initializer(proto, "zeros").segment.begin = 0


def _both_fields(proto: onnx.ModelProto) -> None:
    _initializer(proto, "zeros").float_data.extend([0.0] * 256)


def _constant_attribute(dims: list[int], raw: bytes) -> Edit:
    """Feed the first Exp from a Constant whose tensor attribute declares ``dims``."""
    def edit(proto: onnx.ModelProto) -> None:
        value = TensorProto(name="", data_type=TensorProto.FLOAT, dims=dims, raw_data=raw)
        exp = _first(proto, "Exp")
        proto.graph.node.insert(0, helper.make_node("Constant", [], ["const_in"], name="const", value=value))
        exp.input[0] = "const_in"
    return edit


def _sparse_initializer(dims: list[int]) -> Edit:
    def edit(proto: onnx.ModelProto) -> None:
        values = numpy_helper.from_array(np.ones(2, np.float32), "sparse_w")
        indices = numpy_helper.from_array(np.array([0, 3], np.int64), "sparse_w_indices")
        proto.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, dims))
    return edit


def _string_tensor_with_raw(proto: onnx.ModelProto) -> None:
    proto.graph.initializer.append(TensorProto(name="s", data_type=TensorProto.STRING, dims=[2],
                                               raw_data=b"ab"))


BIG = 1 << 20
TENSOR_CASES: dict[str, tuple[Edit, str]] = {
    "raw_data short": (_raw("zeros", lambda b: b[:-4]), "need 1024 bytes"),
    "raw_data long": (_raw("zeros", lambda b: b + b"\0" * 4), "need 1024 bytes"),
    "raw_data empty": (_raw("zeros", lambda b: b""), "the file holds 0"),
    "dims 2^20 x 2^20 and no data": (_tensor("zeros", dims=[BIG, BIG], raw_data=None), "zeros"),
    "dims 2^40 and 4 bytes": (_tensor("zeros", dims=[1 << 40], raw_data=b"\0" * 4), "need 4398046511104"),
    "negative dim": (_tensor("zeros", dims=[2, -2, 8, 8]), "negative dim"),
    "dims overflow int64": (_tensor("zeros", dims=[1 << 32, 1 << 32], raw_data=b""), "overflow int64"),
    "dims overflow with a zero": (_tensor("zeros", dims=[1 << 62, 8, 0], raw_data=b""), "overflow int64"),
    "float_data too short": (_tensor("zeros", raw_data=None, float_data=[0.0] * 3),
                             "256 values in float_data"),
    "int64_data on a FLOAT": (_tensor("zeros", raw_data=None, int64_data=[0] * 256), "float_data"),
    "raw_data and float_data": (_both_fields, "both"),
    "data_type 0": (_tensor("zeros", data_type=0), "data_type 0"),
    "data_type 999": (_tensor("zeros", data_type=999), "data_type 999"),
    "FLOAT relabelled DOUBLE": (_tensor("zeros", data_type=TensorProto.DOUBLE), "need 2048 bytes"),
    "FLOAT relabelled INT32": (_tensor("zeros", data_type=TensorProto.INT32), "type-check"),
    "stored in segments": (_segment, "segments"),
    "STRING with raw_data": (_string_tensor_with_raw, "STRING"),
    "tensor attribute short": (_constant_attribute([16], b"\0" * 4), "tensor attribute 'value'"),
    "tensor attribute 2^40 elements": (_constant_attribute([1 << 40], b""), "tensor attribute 'value'"),
    "sparse initializer negative dim": (_sparse_initializer([-4]), "negative dim"),
    "sparse initializer overflow": (_sparse_initializer([1 << 40, 1 << 40]), "overflow int64"),
}


@pytest.mark.parametrize("case", TENSOR_CASES)
def test_tensor_data_contradicts_declaration(base, tmp_path, case) -> None:
    edit, mention = TENSOR_CASES[case]
    expect(case, _write(tmp_path, base.edited(edit)), base.inputs, mention=mention)


# --------------------------------------------------------------------------- external data

_OPENED: list[str] | None = None  # paths opened while a test records them
_HOOKED = False


def _audit(event: str, args: tuple) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


@contextlib.contextmanager
def recording_opens() -> Iterator[list[str]]:
    """Every path ``open``ed (``open``, ``os.open``, ...) inside the block. The audit hook
    stays installed for the process but records only while a block is active."""
    global _OPENED, _HOOKED
    if not _HOOKED:
        sys.addaudithook(_audit)
        _HOOKED = True
    _OPENED = opened = []
    try:
        yield opened
    finally:
        _OPENED = None


@dataclass(frozen=True)
class ExternalModel:
    """A model in ``folder`` with its tensors in ``folder/m.data``; ``secret`` lies outside."""

    folder: Path
    proto: onnx.ModelProto  # as stored: external_data entries, no raw data
    secret: Path

    def write(self, edit: Edit) -> Path:
        proto = copy.deepcopy(self.proto)
        edit(proto)
        return _write(self.folder, proto)


TARGET = "zeros"  # the external tensor the cases redirect: 1024 bytes


@pytest.fixture
def external(base, tmp_path) -> ExternalModel:
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save_model(copy.deepcopy(base.proto), str(folder / "m.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="m.data", size_threshold=0)
    proto = onnx.load(str(folder / "m.onnx"), load_external_data=False)
    assert _initializer(proto, TARGET).data_location == TensorProto.EXTERNAL
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"SECRET!!" * 128)  # exactly the size the target tensor declares
    return ExternalModel(folder, proto, secret)


def _external(**entries: str | None) -> Edit:
    """Set (None: remove) external_data entries of the target tensor."""
    def edit(proto: onnx.ModelProto) -> None:
        tensor = _initializer(proto, TARGET)
        current = {e.key: e.value for e in tensor.external_data}
        current.update(entries)
        del tensor.external_data[:]
        for key, value in current.items():
            if value is not None:
                tensor.external_data.add(key=key, value=value)
    return edit


def expect_no_escape(case: str, ext: ExternalModel, model: Path, inputs: Path, mention: str) -> None:
    """Refused everywhere, and the secret outside the folder never opened nor shown."""
    digest = hashlib.sha256(ext.secret.read_bytes()).hexdigest()
    with recording_opens() as opened:
        outcomes = expect(case, model, inputs, mention=mention)
    secret = os.path.realpath(ext.secret)
    assert not [p for p in opened if os.path.realpath(p) == secret], f"{case}: the secret was opened"
    for outcome in outcomes.values():
        assert "SECRET" not in outcome.stdout + outcome.stderr and digest not in outcome.stdout


def test_external_data_control(base, external) -> None:
    outcomes = expect("external data, valid", external.write(lambda p: None), base.inputs, may_succeed=True)
    assert all(o.code == 0 for o in outcomes.values()), {c: o.stderr for c, o in outcomes.items()}


ESCAPES: dict[str, tuple[Callable[[ExternalModel], str], str]] = {
    "absolute path": (lambda ext: str(ext.secret), "absolute"),
    "dot-dot": (lambda ext: "../secret.bin", "'..'"),
    "dot-dot inside": (lambda ext: "sub/../../secret.bin", "'..'"),
    "windows drive": (lambda ext: "C:\\secret.bin", "absolute"),
    "windows dot-dot": (lambda ext: "..\\secret.bin", "'..'"),
    "UNC path": (lambda ext: "\\\\host\\share\\secret.bin", "absolute"),
    "NUL byte": (lambda ext: "m.data\0../secret.bin", "NUL"),
    "symlinked file": (lambda ext: _link(ext.folder / "link.data", ext.secret), "outside"),
    "symlinked folder": (lambda ext: _link(ext.folder / "sub", ext.secret.parent) + "/secret.bin", "outside"),
    "symlink to /dev/zero": (lambda ext: _link(ext.folder / "zero.data", Path("/dev/zero")), "outside"),
}


def _link(link: Path, target: Path) -> str:
    link.symlink_to(target)
    return link.name


@pytest.mark.parametrize("case", ESCAPES)
def test_external_data_cannot_escape_the_folder(base, external, case) -> None:
    location, mention = ESCAPES[case]
    model = external.write(_external(location=location(external)))
    expect_no_escape(f"external {case}", external, model, base.inputs, mention)


def _fifo(folder: Path) -> str:
    os.mkfifo(folder / "pipe.data")
    return "pipe.data"


def _loop(folder: Path) -> str:
    (folder / "loop.data").symlink_to("loop.data")
    return "loop.data"


def _inner_link(folder: Path) -> str:
    (folder / "alias.data").symlink_to("m.data")
    return "alias.data"


def _directory(folder: Path) -> str:
    (folder / "weights").mkdir()
    return "weights"


LOCATIONS: dict[str, tuple[Callable[[Path], str], str | None]] = {
    "a missing file": (lambda folder: "absent.data", "does not exist"),
    "a directory": (_directory, "not a regular file"),
    "a FIFO": (_fifo, "not a regular file"),
    "a symlink loop": (_loop, "cannot be resolved"),
    "empty": (lambda folder: "", "no location"),
    "a symlink inside the folder": (_inner_link, None),
}


@pytest.mark.parametrize("case", LOCATIONS)
def test_external_data_location_kinds(base, external, case) -> None:
    location, mention = LOCATIONS[case]
    model = external.write(_external(location=location(external.folder)))
    outcomes = expect(f"external location is {case}", model, base.inputs, mention=mention,
                      may_succeed=mention is None)
    if mention is None:
        assert all(o.code == 0 for o in outcomes.values())


def _overlap(proto: onnx.ModelProto) -> None:
    """A second tensor of the same size reads the target's bytes."""
    twin = copy.deepcopy(_initializer(proto, TARGET))
    twin.name = "zeros_twin"
    proto.graph.initializer.append(twin)


def _target_dims(dims: list[int], data_type: int | None = None) -> Edit:
    def edit(proto: onnx.ModelProto) -> None:
        tensor = _initializer(proto, TARGET)
        del tensor.dims[:]
        tensor.dims.extend(dims)
        if data_type is not None:
            tensor.data_type = data_type
    return edit


def _data_size(ext: ExternalModel) -> int:
    return (ext.folder / "m.data").stat().st_size


RANGES: dict[str, tuple[Callable[[ExternalModel], Edit], str]] = {
    "offset past EOF": (lambda ext: _external(offset=str(_data_size(ext) + 8)), "past the end"),
    "offset + length past EOF": (lambda ext: _external(offset=str(_data_size(ext) - 512)), "past the end"),
    "length 2^62": (lambda ext: _external(length=str(1 << 62)), "past the end"),
    "negative offset": (lambda ext: _external(offset="-1024"), "offset"),
    "negative length": (lambda ext: _external(length="-4"), "length"),
    "offset not a number": (lambda ext: _external(offset="12abc"), "offset"),
    "length shorter than dims": (lambda ext: _external(length="512"), "does not match dims"),
    "no length, data follows": (lambda ext: _external(length=None), "does not match dims"),
    "two tensors share bytes": (lambda ext: _overlap, "overlaps"),
    "dims 2^20 x 2^20": (lambda ext: _target_dims([BIG, BIG]), "does not match dims"),
    "dims 2^40": (lambda ext: _target_dims([1 << 40]), "does not match dims"),
    "negative dims": (lambda ext: _target_dims([-256]), "negative dim"),
    "dims overflow int64": (lambda ext: _target_dims([1 << 40, 1 << 40]), "overflow int64"),
    "STRING type": (lambda ext: _target_dims([256], TensorProto.STRING), "STRING"),
    "data_type 999": (lambda ext: _target_dims([256], 999), "data_type 999"),
}


@pytest.mark.parametrize("case", RANGES)
def test_external_data_range_and_size(base, external, case) -> None:
    edit, mention = RANGES[case]
    expect(f"external {case}", external.write(edit(external)), base.inputs, mention=mention)


# --------------------------------------------------------------------------- ops and attributes

def _op(op_type: str, domain: str = "") -> Edit:
    def edit(proto: onnx.ModelProto) -> None:
        node = _first(proto, "Exp")
        node.op_type, node.domain = op_type, domain
        if domain:
            proto.opset_import.append(helper.make_opsetid(domain, 1))
    return edit


@pytest.mark.parametrize(("op_type", "domain"), [("Frobnicate", ""), ("Frobnicate", "com.evil")])
def test_unknown_op_inspects_but_does_not_run(base, tmp_path, op_type, domain) -> None:
    model = _write(tmp_path, base.edited(_op(op_type, domain)))
    case = f"unknown op {domain}::{op_type}"
    inspected = expect(case, model, commands=("inspect",), may_succeed=True)["inspect"]
    assert inspected.code == 0, inspected.stderr
    expect(case, model, base.inputs, commands=("run",), mention=f"{op_type} is not supported")
    expect(case, model, commands=("compare",), mention=op_type)


def _huge_attribute(proto: onnx.ModelProto) -> None:
    _set_attr("Transpose", "perm", list(range(1 << 18)))(proto)


def _attribute_type(code: int) -> Edit:
    def edit(proto: onnx.ModelProto) -> None:
        _first(proto, "Transpose").attribute[0].type = code  # type: ignore[assignment]
    return edit


def test_attribute_type_outside_the_enum(base, tmp_path) -> None:
    """Type 99 cannot be set through protobuf, only written: it parses as UNDEFINED."""
    ints = bytes([0xA0, 0x01, onnx.AttributeProto.INTS])  # AttributeProto.type (field 20) = INTS
    assert ints in base.blob
    path = _write(tmp_path, base.blob.replace(ints, bytes([0xA0, 0x01, 99]), 1))
    expect("attribute type 99", path, base.inputs, mention="unknown type")


ATTRIBUTE_CASES: dict[str, tuple[Edit, str]] = {
    "Transpose perm out of range": (_set_attr("Transpose", "perm", [0, 99999, 1, 2]), "perm"),
    "Transpose perm of 2^18 axes": (_huge_attribute, "perm"),
    "Gather axis 2^62": (_set_attr("Gather", "axis", 1 << 62), "axis"),
    "Gather axis as FLOAT": (_set_attr("Gather", "axis", 1.5), "axis"),
    "ScatterElements axis -2^63": (_set_attr("ScatterElements", "axis", -(1 << 63)), "axis"),
    "ScatterElements reduction bogus": (_set_attr("ScatterElements", "reduction", "bogus"), "reduction"),
    "ReduceSum keepdims -7": (_set_attr("ReduceSum", "keepdims", -7), "ReduceSum"),
    "attribute the op lacks": (_set_attr("Exp", "bogus", 3), "bogus"),
    "attribute given twice": (lambda p: _first(p, "Transpose").attribute.append(
        copy.deepcopy(_first(p, "Transpose").attribute[0])), "twice"),
    "attribute type UNDEFINED": (_attribute_type(0), "unknown type 0"),
    "input elem_type 999": (lambda p: setattr(p.graph.input[0].type.tensor_type, "elem_type", 999),
                            "elem_type 999"),
    "input dim -3": (lambda p: setattr(p.graph.input[0].type.tensor_type.shape.dim[0], "dim_value", -3),
                     "negative dim"),
}


@pytest.mark.parametrize("case", ATTRIBUTE_CASES)
def test_absurd_attributes_and_types(base, tmp_path, case) -> None:
    edit, mention = ATTRIBUTE_CASES[case]
    expect(case, _write(tmp_path, base.edited(edit)), base.inputs, mention=mention)


def _scatter_index(value: int) -> Edit:
    """The first ScatterElements' constant indices (``val_24``) all become ``value``."""
    def edit(proto: onnx.ModelProto) -> None:
        tensor = _initializer(proto, "val_24")
        tensor.raw_data = np.full(tuple(tensor.dims), value, np.int64).tobytes()
    return edit


def test_scatter_index_out_of_range(base, tmp_path) -> None:
    """Index values are data: inspect may pass them (nothing is folded), run names the node."""
    model = _write(tmp_path, base.edited(_scatter_index(7)))
    expect("ScatterElements index 7 of 2", model, base.inputs, commands=("inspect",), may_succeed=True)
    expect("ScatterElements index 7 of 2", model, base.inputs, commands=("run",), mention="ScatterElements")


def test_transpose_perm_on_rank_unknown_input(tmp_path) -> None:
    graph = helper.make_graph([helper.make_node("Transpose", ["x"], ["y"], perm=[0, 5])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = _write(tmp_path, helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    np.savez(tmp_path / "x.npz", x=np.ones((2, 3), np.float32))
    expect("Transpose perm [0, 5] of a rank-2 input", model, tmp_path / "x.npz", commands=("run",),
           mention="(Transpose): Dimension out of range")


# --------------------------------------------------------------------------- real processes

def test_real_processes_exit_non_zero_without_traceback(base, tmp_path) -> None:
    """A few cases as ``python -m gdnc`` processes (started together, to share their start-up)."""
    truncated = _write(tmp_path / "t", base.blob[: len(base.blob) // 3])
    cyclic = _write(tmp_path / "c", base.edited(_cycle))
    escape = tmp_path / "e"
    escape.mkdir()
    onnx.save_model(copy.deepcopy(base.proto), str(escape / "m.onnx"), save_as_external_data=True,
                    location="m.data", size_threshold=0)
    proto = onnx.load(str(escape / "m.onnx"), load_external_data=False)
    _external(location="../secret.bin")(proto)
    _write(escape, proto)
    huge = _write(tmp_path / "h", base.edited(_tensor("zeros", dims=[BIG, BIG], raw_data=None)))
    runs = {
        "truncated inspect": (["inspect", truncated], "not a readable ONNX model"),
        "cyclic run": (["run", cyclic, "--inputs", base.inputs], "cycle"),
        "escape convert": (["convert", escape / "m.onnx", "-o", tmp_path / "never.onnx"], "'..'"),
        "2^40 elements compare": (["compare", huge], "zeros"),
    }
    procs = {case: subprocess.Popen([sys.executable, "-m", "gdnc", *map(str, args)], text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for case, (args, _) in runs.items()}
    for case, proc in procs.items():
        _, stderr = proc.communicate(timeout=120)
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert proc.returncode == 1 and "Traceback" not in stderr, f"{case}: {proc.returncode} {stderr}"
        assert len(lines) == 1 and runs[case][1] in lines[0], f"{case}: {stderr}"
    assert not (tmp_path / "never.onnx").exists()



ADDRESS_SPACE_LIMIT = 8 << 30  # a gdnc process needs well under this; the hostile sizes far more
I64, F32 = TensorProto.INT64, TensorProto.FLOAT
# op -> its constant inputs: a few bytes asking for a huge output
HUGE_FROM_SMALL = {
    "ConstantOfShape": [("a", I64, [2], [1 << 15, 1 << 15])],
    "Expand": [("a", F32, [1], [1.0]), ("b", I64, [3], [1 << 12, 1 << 12, 1 << 8])],
    "Tile": [("a", F32, [2], [1.0, 2.0]), ("b", I64, [1], [1 << 40])],
    "Range": [("a", F32, [], [0.0]), ("b", F32, [], [1e12]), ("c", F32, [], [1.0])],
}


def _huge_from_small(op: str) -> onnx.ModelProto:
    """``y = x + op(constants)`` with op's output far too large to hold."""
    inits = [helper.make_tensor(*spec) for spec in HUGE_FROM_SMALL[op]]
    nodes = [helper.make_node(op, [t.name for t in inits], ["big"], name="huge"),
             helper.make_node("Add", ["x", "big"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F32, [1])],
                              [helper.make_tensor_value_info("y", F32, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _limit_address_space() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))


def test_small_files_asking_for_huge_tensors_are_one_line_errors(tmp_path) -> None:
    """ConstantOfShape [2^15, 2^15] (4 GiB from 200 bytes): inspect passes (nothing is folded),
    run is one line naming the node that could not allocate; both as real processes under an
    address-space limit."""
    model = _write(tmp_path, _huge_from_small("ConstantOfShape"))
    np.savez(tmp_path / "x.npz", x=np.ones(1, np.float32))
    cases = ((["inspect", model], 0, None),
             (["run", model, "--inputs", tmp_path / "x.npz"], 1, "allocate"))
    for args, code, fragment in cases:
        proc = subprocess.run([sys.executable, "-m", "gdnc", *map(str, args)], capture_output=True,
                              text=True, timeout=120, preexec_fn=_limit_address_space,
                              env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
        assert proc.returncode == code and "Traceback" not in proc.stderr, f"{args[0]}: {proc.stderr}"
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert fragment is None or (len(lines) == 1 and lines[0].startswith("error: node '")
                                    and fragment in lines[0]), proc.stderr


@pytest.mark.parametrize("op", list(HUGE_FROM_SMALL))
def test_folding_sizes_outputs_before_evaluating(op, monkeypatch) -> None:
    """Constant folding never evaluates a node whose output would be huge: it is left to the
    runtime, which allocates only when asked to run the model."""
    from gdnc.ir.from_onnx import model_from_proto
    from gdnc.passes import constant_fold

    model = model_from_proto(_huge_from_small(op))
    evaluated: list[str] = []
    real = constant_fold.eval_node
    monkeypatch.setattr(constant_fold, "eval_node",
                        lambda node, *args: evaluated.append(node.op_type) or real(node, *args))
    constant_fold.fold_constants(model)
    assert op not in evaluated and op in model.graph.op_histogram()

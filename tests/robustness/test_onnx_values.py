"""Well-formed ONNX models and ``--inputs`` files whose VALUES are odd or hostile, through
``gdnc run / compare / inspect``, held to the promise of ``harness.py``: feeds of the wrong
shape, dtype or name (in ``compare`` too, where onnxruntime runs them), ``.npz`` files whose
headers claim more than they hold, Range and OneHot given sizes that are not counts, devices
the machine lacks. And what must WORK: bfloat16 initializers (as LLM exports carry), rank-0
inputs, a STRING initializer nothing reads.

Every model is a tiny graph built with ``onnx.helper``; arrays are drawn fresh (the seed is in
the failure message)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
import torch
from numpy.lib import format as npy
from onnx import TensorProto, helper, numpy_helper

from gdnc.frontends.onnx_model import load_onnx
from gdnc.passes.constant_fold import fold_constants
from tests.robustness.harness import Outcome, hold_to_promise, run_cli

SUITE = "onnx"
F32, I64, BF16 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BFLOAT16
SEED = int(np.random.SeedSequence().entropy % 2**32)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(SEED)


def _model(path: Path, nodes: list, inputs: list, outputs: list, inits: list = ()) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8  # what the installed onnxruntime reads (compare runs it)
    onnx.save(model, str(path))
    return path


def _vi(name: str, elem: int, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _cli(case: str, args: list, *, mention: str | None = None, may_succeed: bool = False) -> Outcome:
    outcome = run_cli([str(a) for a in args])
    hold_to_promise(SUITE, f"{case} (seed {SEED})", outcome, mention=mention, may_succeed=may_succeed)
    return outcome


@pytest.fixture
def add_model(tmp_path, rng) -> tuple[Path, np.ndarray]:
    """y = x + w, x and w float32 [2, 3]."""
    w = rng.standard_normal((2, 3)).astype(np.float32)
    path = _model(tmp_path / "add.onnx", [helper.make_node("Add", ["x", "w"], ["y"])],
                  [_vi("x", F32, [2, 3])], [_vi("y", F32, [2, 3])], [numpy_helper.from_array(w, "w")])
    return path, w


# --------------------------------------------------------------------------- feeds

FEEDS = {  # case -> (arrays of the .npz, what the one line names)
    "wrong shape": (lambda r: {"x": r.standard_normal((4, 5)).astype(np.float32)},
                    "input 'x': shape [4, 5] given, the model wants [2, 3]"),
    "missing input": (lambda r: {"z": r.standard_normal((2, 3)).astype(np.float32)}, "missing model input"),
    "extra input": (lambda r: {"x": r.standard_normal((2, 3)).astype(np.float32),
                               "z": r.standard_normal(2).astype(np.float32)}, "unknown model input(s): z"),
    "wrong dtype": (lambda r: {"x": r.standard_normal((2, 3))}, "input 'x': dtype torch.float64"),
    "wrong rank": (lambda r: {"x": r.standard_normal(6).astype(np.float32)}, "input 'x': rank 1"),
    "strings": (lambda r: {"x": np.array([["a", "b", "c"]] * 2)}, "input 'x': numpy dtype <U1"),
}


@pytest.mark.parametrize("command", ["run", "compare"])
@pytest.mark.parametrize("case", list(FEEDS))
def test_bad_feeds_are_one_line_in_run_and_compare(add_model, tmp_path, rng, case, command) -> None:
    """compare checks the feeds before onnxruntime sees them (its errors span three lines)."""
    path, _ = add_model
    arrays, mention = FEEDS[case]
    np.savez(tmp_path / "in.npz", **arrays(rng))
    _cli(f"{case} [{command}]", [command, path, "--inputs", tmp_path / "in.npz"], mention=mention)


# --------------------------------------------------------------------------- .npz files

def _member(shape: tuple, dtype: str = "<f4", data: bytes = b"\0" * 16) -> bytes:
    out = io.BytesIO()
    npy.write_array_header_1_0(out, {"descr": dtype, "fortran_order": False, "shape": shape})
    return out.getvalue() + data


def _zip(path: Path, members: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _deflate_claim(path: Path) -> Path:
    """A deflated member whose zip entry (local header and central directory) claims 2 GiB:
    more than deflate can expand the file's few hundred bytes to."""
    _zip(path, {"x.npy": _member((4,))}, zipfile.ZIP_DEFLATED)
    data = bytearray(path.read_bytes())
    for signature, at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # uncompressed size fields
        start = data.index(signature) + at
        data[start:start + 4] = (1 << 31).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    return path


NPZ = {  # case -> (write the file, what the one line names)
    "header claims 36 TiB": (lambda p: _zip(p, {"x.npy": _member((9 << 40,))}), "39582418599936 bytes"),
    "header claims 36 TiB, deflated": (
        lambda p: _zip(p, {"x.npy": _member((9 << 40,))}, zipfile.ZIP_DEFLATED), "39582418599936 bytes"),
    "header claims fewer bytes": (lambda p: _zip(p, {"x.npy": _member((2,))}), "holds 16 bytes"),
    "member is not an array": (lambda p: _zip(p, {"x.txt": b"hello"}), "'x.txt' is not a .npy array"),
    "pickled objects": (lambda p: _zip(p, {"x.npy": _member((2,), "|O")}), "Python objects"),
    "garbage header": (lambda p: _zip(p, {"x.npy": b"\x93NUMPY\x01\x00\x10\x00{'descr': 5}   \n"}),
                       "not a readable .npy header"),
    "bzip2 member": (lambda p: _zip(p, {"x.npy": _member((4,))}, zipfile.ZIP_BZIP2), "compression method 12"),
    "zip entry claims more than deflate gives": (_deflate_claim, "more than a file of"),
    "a .npy file": (lambda p: np.save(p.with_suffix(".npy"), np.ones(3)) or p.with_suffix(".npy").rename(p),
                    "not a readable .npz file"),
    "a folder": (lambda p: p.mkdir(), "not a readable .npz file"),
    "missing": (lambda p: None, "no such file"),
}


@pytest.mark.parametrize("command", ["run", "compare"])
@pytest.mark.parametrize("case", list(NPZ))
def test_npz_headers_are_checked_before_reading(add_model, tmp_path, case, command) -> None:
    path, _ = add_model
    write, mention = NPZ[case]
    inputs = tmp_path / "in.npz"
    write(inputs)
    _cli(f".npz {case} [{command}]", [command, path, "--inputs", inputs], mention=mention)


def test_npz_arrays_over_the_memory_available_are_refused(add_model, tmp_path, monkeypatch) -> None:
    from gdnc.runtime import memory

    path, _ = add_model
    np.savez(tmp_path / "in.npz", x=np.ones((2, 3), np.float32))
    monkeypatch.setattr(memory, "available_bytes", lambda device: 8)
    _cli(".npz over the memory available", ["run", path, "--inputs", tmp_path / "in.npz"],
         mention="needs about")


# --------------------------------------------------------------------------- Range, OneHot

def _range_model(tmp_path: Path, start: float, limit: float, delta: float) -> Path:
    """y = x + Range(start, limit, delta), the bounds as float32 initializers."""
    inits = [numpy_helper.from_array(np.array(v, np.float32), n)
             for n, v in zip("abc", (start, limit, delta))]
    nodes = [helper.make_node("Range", ["a", "b", "c"], ["r"], name="rng"),
             helper.make_node("Add", ["x", "r"], ["y"])]
    return _model(tmp_path / "range.onnx", nodes, [_vi("x", F32, [1])], [_vi("y", F32, None)], inits)


def _one_hot_model(tmp_path: Path, depth: float) -> Path:
    """y = x + OneHot([0, 1], Identity(depth)) (through Identity: onnx's type check does not see it)."""
    inits = [numpy_helper.from_array(np.array([0, 1], np.int64), "i"),
             numpy_helper.from_array(np.array(depth, np.float32), "d0"),
             numpy_helper.from_array(np.array([0.0, 1.0], np.float32), "v")]
    nodes = [helper.make_node("Identity", ["d0"], ["d"]),
             helper.make_node("OneHot", ["i", "d", "v"], ["o"], name="oh"),
             helper.make_node("Add", ["x", "o"], ["y"])]
    return _model(tmp_path / "onehot.onnx", nodes, [_vi("x", F32, [1])], [_vi("y", F32, None)], inits)


SIZES = {  # case -> (model, what the run's one line names)
    "Range delta 0": (lambda t: _range_model(t, 0.0, 5.0, 0.0), "node 'rng' (Range): delta is 0"),
    "Range limit inf": (lambda t: _range_model(t, 0.0, np.inf, 1.0),
                        "node 'rng' (Range): start 0.0, limit inf"),
    "Range start nan": (lambda t: _range_model(t, np.nan, 4.0, 1.0), "no finite length"),
    "OneHot depth inf": (lambda t: _one_hot_model(t, np.inf), "node 'oh' (OneHot): depth inf"),
    "OneHot depth nan": (lambda t: _one_hot_model(t, np.nan), "node 'oh' (OneHot): depth nan"),
}


@pytest.mark.parametrize("case", list(SIZES))
def test_sizes_that_are_not_counts(tmp_path, rng, case) -> None:
    """inspect folds nothing it cannot size (exit 0, the node kept); run names node and value."""
    make, mention = SIZES[case]
    model = make(tmp_path)
    inspected = _cli(f"{case} [inspect]", ["inspect", model], may_succeed=True)
    assert inspected.code == 0, inspected.stderr
    np.savez(tmp_path / "x.npz", x=rng.standard_normal(1).astype(np.float32))
    _cli(f"{case} [run]", ["run", model, "--inputs", tmp_path / "x.npz"], mention=mention)


@pytest.mark.parametrize("case", ["Range delta 0", "Range limit inf", "OneHot depth inf"])
def test_folding_leaves_sizes_that_are_not_counts_to_the_runtime(tmp_path, case) -> None:
    model = load_onnx(SIZES[case][0](tmp_path))
    op = case.split()[0]
    fold_constants(model)
    assert op in model.graph.op_histogram()


def test_range_bounds_given_at_run_time(tmp_path) -> None:
    nodes = [helper.make_node("Range", ["a", "b", "c"], ["y"], name="rng")]
    model = _model(tmp_path / "r.onnx", nodes, [_vi(n, F32, []) for n in "abc"], [_vi("y", F32, None)])
    cases = (("delta 0", (0, 5, 0), "delta is 0"), ("limit -inf", (0, -np.inf, -1), "limit -inf"))
    for case, bounds, mention in cases:
        np.savez(tmp_path / "in.npz", **{k: np.float32(v) for k, v in zip("abc", bounds)})
        _cli(f"Range {case} from inputs", ["run", model, "--inputs", tmp_path / "in.npz"], mention=mention)


# --------------------------------------------------------------------------- what must work

def _saved(outcome: Outcome, path: Path) -> dict[str, np.ndarray]:
    assert outcome.code == 0, outcome.stderr
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def test_bfloat16_initializer_and_input_run(tmp_path, rng) -> None:
    """y = x + float(w) with w a BF16 initializer; z = bf16 input b doubled, a BF16 output
    (np.savez stores bfloat16 as raw 2-byte items: read and written as such)."""
    w = rng.standard_normal(3).astype(ml_dtypes.bfloat16)
    nodes = [helper.make_node("Cast", ["w"], ["wf"], to=F32), helper.make_node("Add", ["x", "wf"], ["y"]),
             helper.make_node("Add", ["b", "b"], ["z"])]
    model = _model(tmp_path / "bf16.onnx", nodes, [_vi("x", F32, [2, 3]), _vi("b", BF16, [3])],
                   [_vi("y", F32, [2, 3]), _vi("z", BF16, [3])], [numpy_helper.from_array(w, "w")])
    x = rng.standard_normal((2, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(ml_dtypes.bfloat16)
    np.savez(tmp_path / "in.npz", x=x, b=b)
    outcome = _cli("BF16 initializer, input and output", ["run", model, "--inputs", tmp_path / "in.npz",
                                                          "-o", tmp_path / "out.npz"], may_succeed=True)
    out = _saved(outcome, tmp_path / "out.npz")
    np.testing.assert_array_equal(out["y"], x + w.astype(np.float32))
    assert out["z"].dtype.itemsize == 2
    np.testing.assert_array_equal(out["z"].view(ml_dtypes.bfloat16), b + b)
    assert "z: shape [3] bfloat16" in outcome.stdout


def test_rank0_inputs_run_and_compare(tmp_path, rng) -> None:
    model = _model(tmp_path / "r0.onnx", [helper.make_node("Mul", ["x", "s"], ["y"])],
                   [_vi("x", F32, [4]), _vi("s", F32, [])], [_vi("y", F32, [4])])
    x, s = rng.standard_normal(4).astype(np.float32), np.float32(rng.standard_normal())
    np.savez(tmp_path / "in.npz", x=x, s=s)
    outcome = _cli("rank-0 input", ["run", model, "--inputs", tmp_path / "in.npz", "-o", tmp_path / "o.npz"],
                   may_succeed=True)
    np.testing.assert_array_equal(_saved(outcome, tmp_path / "o.npz")["y"], x * s)
    compared = _cli("rank-0 input [compare]", ["compare", model, "--inputs", tmp_path / "in.npz"],
                    may_succeed=True)
    assert compared.code == 0, compared.stderr


def test_string_initializers(tmp_path, rng) -> None:
    """One nothing reads is ignored; one a node reads is refused, named."""
    strings = helper.make_tensor("s", TensorProto.STRING, [2], [b"a", b"b"])
    x = rng.standard_normal((2, 3)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    unused = _model(tmp_path / "u.onnx", [helper.make_node("Neg", ["x"], ["y"])], [_vi("x", F32, [2, 3])],
                    [_vi("y", F32, [2, 3])], [strings])
    outcome = _cli("unused STRING initializer", ["run", unused, "--inputs", tmp_path / "in.npz", "-o",
                                                  tmp_path / "o.npz"], may_succeed=True)
    np.testing.assert_array_equal(_saved(outcome, tmp_path / "o.npz")["y"], -x)
    used = _model(tmp_path / "s.onnx", [helper.make_node("Neg", ["x"], ["y"]),
                                        helper.make_node("Identity", ["s"], ["t"])],
                  [_vi("x", F32, [2, 3])], [_vi("y", F32, [2, 3]), _vi("t", TensorProto.STRING, [2])],
                  [strings])
    _cli("STRING initializer read by a node", ["run", used, "--inputs", tmp_path / "in.npz"],
         mention="initializer 's': numpy dtype object has no torch dtype")


@pytest.mark.parametrize(("device", "mention"), [("meta", "gdnc runs on cpu or cuda"),
                                                  ("nonsense", "is not a device name")]
                         + ([] if torch.cuda.is_available() else [("cuda", "no CUDA device")]))
def test_run_on_a_device_this_machine_lacks(add_model, tmp_path, rng, device, mention) -> None:
    path, _ = add_model
    np.savez(tmp_path / "in.npz", x=rng.standard_normal((2, 3)).astype(np.float32))
    _cli(f"run --device {device}", ["run", path, "--inputs", tmp_path / "in.npz", "--device", device],
         mention=mention)

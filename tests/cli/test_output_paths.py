"""An output never costs an input, and a stream named as an output stays a stream.

Every command that writes refuses, before any work, an output that is one of its inputs (the
same path, a hard link or a symlink to it; an ONNX input's external data file too) or another
of its outputs, with one line naming both, and leaves every file as it was. A conversion whose
input is a copy of the previous output, sharing its data file, keeps that data file. An output
that is a FIFO, ``/dev/null`` or this process's own stdout is written in place (``/dev/null``
through a symlink here: even a failing test must never replace the real one); a socket is
refused. In-process through the robustness harness (the "outputs" tally), but for stdout.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

from gdnc.frontends.onnx_model import load_onnx
from gdnc.ir.to_onnx import external_data_files, model_to_proto, save_onnx
from tests.robustness.harness import hold_to_promise, run_cli

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "hf_recurrent_gated_delta_rule_t16.onnx"
GGUF = ROOT / "tests" / "fixtures" / "gguf" / "qwen35-fixture-f32.gguf"
SUITE = "outputs"
WORK_S = 300  # the deadline of a command that does its work (tracemalloc slows it down)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A folder with ``m.onnx`` (the example, its weights in a data file), ``g.gguf`` and
    ``in.npz`` (random inputs of the example)."""
    folder = tmp_path_factory.mktemp("inputs")
    save_onnx(load_onnx(EXAMPLE), folder / "m.onnx", external_data=True)
    shutil.copy(GGUF, folder / "g.gguf")
    rng = np.random.default_rng()
    feeds = {}
    for value in onnx.load(str(EXAMPLE)).graph.input:
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rng.standard_normal(dims).astype(np.float32)
    np.savez(folder / "in.npz", **feeds)
    return folder


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> bytes:
    """The example converted to a regular file: what a stream must get."""
    path = tmp_path_factory.mktemp("reference") / "ref.onnx"
    outcome = run_cli(["convert", str(EXAMPLE), "-o", str(path), "-q"], seconds=WORK_S)
    assert outcome.code == 0, outcome.stderr
    return path.read_bytes()


def _snapshot(folder: Path) -> dict[str, tuple[bool, bytes]]:
    return {p.name: (p.is_symlink(), p.read_bytes()) for p in sorted(folder.iterdir())}


def _data(f: Path) -> Path:
    (data,) = external_data_files(f / "m.onnx")
    return data


def _link(f: Path, name: str, target: Path, hard: bool = False) -> Path:
    (os.link if hard else os.symlink)(target, f / name)
    return f / name


def _copy(f: Path, name: str) -> Path:
    shutil.copy(f / "m.onnx", f / name)  # the same data file, by the same relative location
    return f / name


# name -> (the command line in folder f, the output refused, the input its line must name)
Case = Callable[[Path], tuple[list, Path, str]]
OVERWRITES: dict[str, Case] = {
    "convert -o the input": lambda f: (["convert", f / "m.onnx", "-o", f / "m.onnx"], f / "m.onnx", "m.onnx"),
    "convert -o a hard link to the input": lambda f: (
        ["convert", f / "m.onnx", "-o", _link(f, "h.onnx", f / "m.onnx", hard=True)], f / "h.onnx", "m.onnx"),
    "convert -o a symlink to the input": lambda f: (
        ["convert", f / "m.onnx", "-o", _link(f, "s.onnx", f / "m.onnx")], f / "s.onnx", "m.onnx"),
    "convert -o the input's data file": lambda f: (
        ["convert", f / "m.onnx", "-o", _data(f)], _data(f), "m.onnx"),
    "convert --report a hard link to the input's data file": lambda f: (
        ["convert", f / "m.onnx", "-o", f / "o.onnx", "--report", _link(f, "r.json", _data(f), hard=True)],
        f / "r.json", "m.onnx"),
    "convert --report the input": lambda f: (
        ["convert", f / "m.onnx", "-o", f / "o.onnx", "--report", f / "m.onnx"], f / "m.onnx", "m.onnx"),
    "convert --dump-after onto the input": lambda f: (
        ["convert", _copy(f, "after-fuse.onnx"), "-o", f / "o.onnx", "--dump-after", "fuse"],
        f / "after-fuse.onnx", "after-fuse.onnx"),
    "convert --report onto -o": lambda f: (
        ["convert", f / "m.onnx", "-o", f / "o.onnx", "--report", f / "o.onnx"], f / "o.onnx", "o.onnx"),
    "convert GGUF -o the input": lambda f: (
        ["convert", f / "g.gguf", "-o", f / "g.gguf"], f / "g.gguf", "g.gguf"),
    "convert GGUF --report the input": lambda f: (
        ["convert", f / "g.gguf", "-o", f / "o.onnx", "--report", f / "g.gguf"], f / "g.gguf", "g.gguf"),
    "run -o the model": lambda f: (
        ["run", f / "m.onnx", "--inputs", f / "in.npz", "-o", f / "m.onnx"], f / "m.onnx", "m.onnx"),
    "run -o the inputs": lambda f: (
        ["run", f / "m.onnx", "--inputs", f / "in.npz", "-o", f / "in.npz"], f / "in.npz", "in.npz"),
    "logits -o the model": lambda f: (
        ["logits", f / "g.gguf", "--tokens", "1 2", "-o", f / "g.gguf"], f / "g.gguf", "g.gguf"),
    "inspect --draw the model": lambda f: (
        ["inspect", _copy(f, "m.svg"), "--draw", f / "m.svg"], f / "m.svg", "m.svg"),
    "bench --plot the model": lambda f: (
        ["bench", _link(f, "g.png", f / "g.gguf", hard=True), "--quick", "--plot", f / "g.png"],
        f / "g.png", "g.png"),
}


@pytest.mark.parametrize("case", OVERWRITES)
def test_an_output_that_is_an_input_is_refused_before_any_work(inputs, tmp_path, case):
    folder = tmp_path / "f"
    shutil.copytree(inputs, folder)
    args, output, named = OVERWRITES[case](folder)
    before = _snapshot(folder)
    outcome = run_cli([str(a) for a in args])
    hold_to_promise(SUITE, case, outcome, mention="would overwrite")
    line = outcome.error_lines[0]
    assert line.startswith(f"error: {output}: ") and named in line.split("would overwrite")[1], line
    assert _snapshot(folder) == before


def test_converting_a_copy_of_the_output_keeps_the_data_file_the_copy_uses(inputs, tmp_path):
    shutil.copytree(inputs, tmp_path / "f")
    model, backup = tmp_path / "f" / "m.onnx", _copy(tmp_path / "f", "backup.onnx")
    original = model_to_proto(load_onnx(backup)).SerializeToString()
    outcome = run_cli(["convert", str(backup), "-o", str(model), "-q"], seconds=WORK_S)
    assert outcome.code == 0, outcome.stderr
    assert model_to_proto(load_onnx(backup)).SerializeToString() == original
    assert any(n.op_type == "GatedDeltaNet" for n in onnx.load(str(model)).graph.node)
    assert {p.name for p in (tmp_path / "f").iterdir()} == {
        "m.onnx", "backup.onnx", "g.gguf", "in.npz", *(p.name for p in external_data_files(model)),
        *(p.name for p in external_data_files(backup))}


# ------------------------------------------------------------------ streams

def _with_null(tmp_path: Path, npz: Path) -> dict[str, list]:
    null = tmp_path / "out" / "null"
    return {
        "convert -o": ["convert", EXAMPLE, "-o", null, "-q"],
        "convert --report": ["convert", EXAMPLE, "-o", tmp_path / "m.onnx", "--report", null, "-q"],
        "run -o": ["run", EXAMPLE, "--inputs", npz, "-o", null, "-q"],
    }


@pytest.mark.parametrize("case", ["convert -o", "convert --report", "run -o"])
def test_dev_null_stays_a_device(inputs, tmp_path, case):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "null").symlink_to(os.devnull)
    outcome = run_cli([str(a) for a in _with_null(tmp_path, inputs / "in.npz")[case]], seconds=WORK_S)
    assert outcome.code == 0, outcome.stderr
    assert os.readlink(tmp_path / "out" / "null") == os.devnull
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["null"]


def test_a_fifo_gets_the_model_and_stays_a_fifo(tmp_path, reference):
    (tmp_path / "out").mkdir()
    fifo = tmp_path / "out" / "fifo"
    os.mkfifo(fifo)
    os.link(fifo, tmp_path / "fifo.keep")  # to wake the reader should the FIFO be replaced
    got: list[bytes] = []

    def read() -> None:
        with open(fifo, "rb") as fh:
            got.append(fh.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        outcome = run_cli(["convert", str(EXAMPLE), "-o", str(fifo), "-q"], seconds=WORK_S)
        reader.join(timeout=30)
    finally:
        if reader.is_alive():  # nobody wrote to the FIFO: its waiting reader gets an end of file
            os.close(os.open(tmp_path / "fifo.keep", os.O_WRONLY | os.O_NONBLOCK))
            reader.join(timeout=30)
    assert outcome.code == 0, outcome.stderr
    assert got == [reference]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and [p.name for p in fifo.parent.iterdir()] == ["fifo"]


def test_a_socket_is_refused(tmp_path):
    sock = tmp_path / "sock"
    os.mknod(sock, stat.S_IFSOCK | 0o600)
    outcome = run_cli(["convert", str(EXAMPLE), "-o", str(sock)])
    hold_to_promise(SUITE, "convert -o a socket", outcome, mention="it is a socket")
    assert stat.S_ISSOCK(os.lstat(sock).st_mode) and [p.name for p in tmp_path.iterdir()] == ["sock"]


def test_stdout_redirected_to_a_file_gets_the_model_then_the_json(tmp_path, reference):
    link = tmp_path / "stdout"
    link.symlink_to("/dev/stdout")
    with open(tmp_path / "captured", "wb") as fh:
        proc = subprocess.run([sys.executable, "-m", "gdnc", "convert", str(EXAMPLE), "-o", str(link),
                               "--json"], stdout=fh, stderr=subprocess.PIPE, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    captured = (tmp_path / "captured").read_bytes()
    assert captured[:len(reference)] == reference, "the model is not first on stdout"
    assert len(json.loads(captured[len(reference):])["chains"]) == 1
    assert os.readlink(link) == "/dev/stdout" and not (tmp_path / ".stdout").exists()

"""Every reporting command in its three modes: a report (with transient progress bars on a
terminal), ``--json`` (stdout is JSON and nothing else) and ``--quiet`` (stdout empty); and
errors that know their fix say it on the same line."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from gdnc import progress
from gdnc.frontends.gguf_file import GgufFile
from gdnc.models.qwen_hybrid.graph import Composition, build_unfused
from gdnc.passes.pipeline import fuse_model
from tests.cli.processes import gdnc, gdnc_all

ROOT = Path(__file__).resolve().parents[2]
GGUF = ROOT / "examples" / "tiny-qwen35-f16.gguf"
ONNX = ROOT / "examples" / "hf_recurrent_gated_delta_rule_t16.onnx"


@pytest.fixture(scope="module")
def npz(tmp_path_factory) -> Path:
    import onnx

    rng = np.random.default_rng()
    model = onnx.load(str(ONNX))
    feeds = {}
    for value in model.graph.input:
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rng.standard_normal(dims).astype(np.float32)
    path = tmp_path_factory.mktemp("in") / "inputs.npz"
    np.savez(path, **feeds)
    return path


def _commands(tmp: Path, npz: Path) -> dict[str, tuple]:
    return {
        "convert-onnx": ("convert", ONNX, "-o", tmp / "a.onnx"),
        "convert-gguf": ("convert", GGUF, "-o", tmp / "b.onnx"),
        "inspect-onnx": ("inspect", ONNX),
        "inspect-gguf": ("inspect", GGUF),
        "run-onnx": ("run", ONNX, "--inputs", npz),
        "compare-onnx": ("compare", ONNX),
        "compare-gguf": ("compare", GGUF, "-p", "The for statement"),
        "logits": ("logits", GGUF, "--tokens", "5 6 7", "-o", tmp / "l.npy"),
    }


@pytest.mark.parametrize("name", ["convert-onnx", "convert-gguf", "inspect-onnx", "inspect-gguf", "run-onnx",
                                  "compare-onnx", "compare-gguf", "logits"])
def test_json_is_all_of_stdout_and_quiet_prints_nothing(name, tmp_path, npz) -> None:
    modes = {"json": ("--json",), "quiet": ("--quiet",), "plain": ()}
    runs = {mode: (*_commands(tmp_path / mode, npz)[name], *flags) for mode, flags in modes.items()}
    for mode in modes:  # each mode writes its own outputs
        (tmp_path / mode).mkdir()
    as_json, quiet, plain = gdnc_all(*runs.values())
    assert as_json.returncode == 0, as_json.stderr
    assert isinstance(json.loads(as_json.stdout), dict)
    assert as_json.stderr == ""  # no bars, no status lines: JSON users parse stdout, read stderr for errors
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout == "" and quiet.stderr == ""
    assert plain.returncode == 0 and plain.stdout.strip(), plain.stderr


def test_run_json_lines_and_quiet_text_only() -> None:
    proc = gdnc("run", GGUF, "-p", "The for statement", "-p", "A class", "-n", "6", "--json")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [len(x["generated_ids"]) for x in lines[:2]] == [6, 6] and "timing" in lines[2]
    quiet = gdnc("run", GGUF, "-p", "The for statement", "-n", "6", "-q")
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert quiet.stdout.strip() == lines[0]["text"].strip()


def test_ops_json() -> None:
    proc = gdnc("ops", "--json")
    assert proc.returncode == 0 and "ai.gdnc::GatedDeltaNet" in json.loads(proc.stdout)


def test_bars_show_loading_and_converting_on_a_terminal() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    with progress.bars(console):
        model = build_unfused(GgufFile(GGUF), Composition.of(2, 1))
        fuse_model(model)
    shown = console.file.getvalue()
    for text in ("reading tiny-qwen35-f16.gguf", "building graph: 2 sequence(s), 3 tokens",
                 "converting"):  # each bar is drawn when it starts, later stages at refreshes
        assert text in shown


def test_no_bars_open_costs_nothing_and_prints_nothing(capsys) -> None:
    assert list(progress.track(range(3), "x")) == [0, 1, 2]
    progress.task("y", 2).advance()
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize(("args", "message", "fix"), [
    (("convert", ONNX, "-o", "no/such/folder/x.onnx"), "no folder no/such/folder",
     "fix: mkdir -p no/such/folder"),
    (("logits", GGUF, "--tokens", "a b", "-o", "x.npy"), "is not a list of integers", "fix: give token ids"),
    (("run", GGUF, "-p", "x", "--device", "cuda"), "no CUDA device", "fix: use --device cpu"),
    (("run", GGUF, "-p", "x", "--device", "tpu"), "not a device name",
     "fix: use --device cpu, cuda or cuda:N"),
])
def test_errors_name_the_fix_on_one_line(args, message, fix, tmp_path) -> None:
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    proc = subprocess.run([sys.executable, "-m", "gdnc", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and message in lines[0] and fix in lines[0]

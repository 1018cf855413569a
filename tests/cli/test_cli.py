"""The command line as a user meets it: exit codes, one-line errors, JSON, files written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from corpus.zoo import export_hf
from tests.cli.processes import gdnc


@pytest.fixture(scope="module")
def unfused(tmp_path_factory) -> tuple[Path, dict]:
    zoo = export_hf(tmp_path_factory.mktemp("m"), T=4, exporter="dynamo", gva=True)
    return Path(zoo.path), zoo.inputs


def _one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], proc.stderr


def test_convert_writes_model_and_report(unfused, tmp_path) -> None:
    path, _ = unfused
    out, report = tmp_path / "fused.onnx", tmp_path / "r.json"
    proc = gdnc("convert", path, "-o", out, "--report", report, "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data == json.loads(report.read_text())
    assert [c["steps"] for c in data["chains"]] == [4] and data["nodes_after"] == 1
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


def test_run_and_compare(unfused, tmp_path) -> None:
    path, inputs = unfused
    feeds, results = tmp_path / "x.npz", tmp_path / "y.npz"
    np.savez(feeds, **inputs)
    proc = gdnc("run", path, "--inputs", feeds, "-o", results, "--json")
    assert proc.returncode == 0, proc.stderr
    assert set(np.load(results).files) == {"o", "final_state"}
    proc = gdnc("compare", path, "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["passed"] and data["chains"] == 1
    assert all(o["rel_l2"] <= 1e-5 for o in data["outputs"])


def test_random_inputs_size_dims_written_as_arithmetic() -> None:
    """A KV-cache export declares its mask ``[batch, past + 1]`` beside keys ``[batch, past]``."""
    from onnx import TensorProto, helper

    from gdnc.commands.onnx_compare import dim_size, random_inputs
    from gdnc.errors import InputError
    from gdnc.ir.from_onnx import model_from_proto

    def model(*dims: list) -> object:
        ins = [helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, d) for i, d in enumerate(dims)]
        outs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, d) for i, d in enumerate(dims)]
        nodes = [helper.make_node("Identity", [f"x{i}"], [f"y{i}"]) for i in range(len(dims))]
        return model_from_proto(helper.make_model(helper.make_graph(nodes, "g", ins, outs)))

    feeds = random_inputs(model(["batch", "past + 1"], ["batch", "past"], ["2*batch", 3]), dims={"past": 5})
    assert [f.shape for f in feeds.values()] == [(2, 6), (2, 5), (4, 3)]
    assert dim_size("2 * past + 1 - batch", {"past": 5, "batch": 3}) == 8
    for unsized in ("Max(past, 1)", "past +", "past 2", "9" * 400, "past**2"):
        assert dim_size(unsized, {"past": 5}) is None
    with pytest.raises(InputError, match="cannot size"):
        random_inputs(model(["batch", "Max(past, 1)"]))


def test_inspect_shows_what_would_fuse(unfused) -> None:
    path, _ = unfused
    proc = gdnc("inspect", path)
    assert proc.returncode == 0 and "ai.gdnc::GatedDeltaNet" in proc.stdout


def test_errors_are_one_line(unfused, tmp_path) -> None:
    path, inputs = unfused
    _one_line_error(gdnc("convert", tmp_path / "missing.onnx", "-o", tmp_path / "o.onnx"), "no such file")
    truncated = tmp_path / "t.onnx"
    truncated.write_bytes(path.read_bytes()[:300])
    out = tmp_path / "never.onnx"
    _one_line_error(gdnc("convert", truncated, "-o", out), "not a readable ONNX model")
    assert not out.exists()
    bad = tmp_path / "bad.npz"
    np.savez(bad, **{**inputs, "q": inputs["q"][:, :2]})
    _one_line_error(gdnc("run", path, "--inputs", bad), "input 'q'")
    _one_line_error(gdnc("convert", path, "-o", tmp_path / "x.onnx", "--target", "tpu"), "unknown target")


def test_a_bad_command_line_is_usage_and_exit_2(tmp_path) -> None:
    proc = gdnc("convert", tmp_path / "m.onnx", "--no-such-flag")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    assert "No such option: --no-such-flag" in proc.stderr


INTERRUPTED_INSIDE_CLASS_CREATION = """
import os, signal
import gdnc.cli as cli

class Descriptor:
    def __set_name__(self, owner, name):
        os.kill(os.getpid(), signal.SIGINT)  # Python 3.11 re-raises the interrupt as RuntimeError

def command(**_):
    class Owner:
        attribute = Descriptor()

cli.app = command
cli.main()
"""


def test_ctrl_c_re_raised_as_another_exception_is_still_interrupted() -> None:
    proc = subprocess.run([sys.executable, "-c", INTERRUPTED_INSIDE_CLASS_CREATION],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode in (130, -2) and proc.stderr.strip() == "interrupted", proc.stderr


def test_ops_lists_the_runtime_coverage() -> None:
    proc = gdnc("ops", "--json")
    assert proc.returncode == 0, proc.stderr
    table = json.loads(proc.stdout)
    assert {"ai.gdnc::GatedDeltaNet", "com.microsoft::LinearAttention", "ScatterND", "Einsum"} <= set(table)


def test_dump_after_writes_the_stage_graph(unfused, tmp_path) -> None:
    path, _ = unfused
    proc = gdnc("convert", path, "-o", tmp_path / "f.onnx", "--dump-after", "fuse", "-q")
    assert proc.returncode == 0, proc.stderr
    dumped = onnx.load(str(tmp_path / "after-fuse.onnx"))
    assert any(n.op_type == "GatedDeltaNet" for n in dumped.graph.node)


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gguf"  # copied from ../shared/fixtures


@pytest.mark.parametrize("fused", ["on", "off"])
def test_logits_of_a_gguf_model_match_hf(tmp_path, fused) -> None:
    ref = np.load(FIXTURES / "qwen35moe-fixture-ref.npz")
    out = tmp_path / "logits.npy"
    tokens = " ".join(map(str, ref["prompt0"]))
    proc = gdnc("logits", FIXTURES / "qwen35moe-fixture-f32.gguf", "--tokens", tokens, "-o", out,
                "--fused-gdn", fused, "--json")
    assert proc.returncode == 0, proc.stderr
    got = np.load(out)
    assert got.dtype == np.float32 and np.abs(got - ref["hf_0"]).max() <= 1e-4
    assert json.loads(proc.stdout)["argmax"] == ref["hf_0"].argmax(-1).tolist()


def test_logits_errors_are_one_line_and_write_nothing(tmp_path) -> None:
    model = FIXTURES / "qwen35-fixture-f32.gguf"
    out = tmp_path / "l.npy"
    for args, needle in [
        ((model, "--tokens", "1 x"), "is not a list of integers"),
        ((model, "--tokens", "1 384"), "got 384"),
        ((model, "--tokens", "1", "--fused-gdn", "maybe"), "is not on, off or auto"),
        ((tmp_path / "missing.gguf", "--tokens", "1"), "no such file"),
    ]:
        _one_line_error(gdnc("logits", *args, "-o", out), needle)
        assert not out.exists() and not list(tmp_path.glob(".l.npy*"))


def test_the_cli_puts_the_signal_handlers_back(monkeypatch) -> None:
    import signal

    import gdnc.cli as cli
    from gdnc.interrupt import STOP_SIGNALS

    before = [signal.getsignal(sig) for sig in STOP_SIGNALS]
    monkeypatch.setattr(sys, "argv", ["gdnc", "ops", "--json"])
    cli.main()
    assert [signal.getsignal(sig) for sig in STOP_SIGNALS] == before


STOPPED_BY = """
import os, signal, sys, time
import gdnc.cli as cli

def command(**_):
    os.kill(os.getpid(), signal.{name})
    time.sleep(60)

cli.app = command
cli.main()
"""


@pytest.mark.parametrize(("name", "code"), [("SIGTERM", 143), ("SIGHUP", 129)])
def test_sigterm_and_sighup_end_the_run_on_one_line(name, code) -> None:
    proc = subprocess.run([sys.executable, "-c", STOPPED_BY.format(name=name)],
                          capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stderr.strip()) == (code, "terminated"), proc.stderr

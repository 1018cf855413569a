"""What the reports print, as a reader meets it: the held-out table's Δ is the relative one its
tolerance bounds, ``compare``'s table says what it compares, near-misses that fused nothing
less are not shown, piped tables are not wrapped at 80 columns, op-level decode rows whose
states stay in the cache are marked; and the CLI boundary turns what slips past every check
(arithmetic, memory, onnxruntime) into one line."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument
from rich.console import Console

from corpus.zoo import export_hf
from gdnc.bench.options import GdnShape
from gdnc.bench.results import Measure, Suite
from gdnc.bench.timing import Timing
from gdnc.commands.bench_tables import suite_table
from gdnc.commands.compare_report import print_compare, print_heldout
from gdnc.commands.conversion_report import print_report
from gdnc.commands.heldout import HeldOut
from gdnc.commands.onnx_compare import CompareResult, OutputDiff
from gdnc.ir.from_onnx import model_from_proto
from gdnc.passes.pipeline import fuse_model
from tests.robustness.harness import run_cli

SEED = int(np.random.SeedSequence().entropy % 2**32)


def _printed(render, *args) -> str:
    console = Console(file=io.StringIO(), width=200)
    render(console, *args)
    return console.file.getvalue()


def test_heldout_delta_is_the_relative_one_the_tolerance_bounds() -> None:
    rng = np.random.default_rng(SEED)
    base = float(rng.uniform(20, 200))
    ppl = {"fused": base, "unfused": base * (1 + rng.uniform(1e-6, 4e-5)),
           "hf": base * (1 - rng.uniform(1e-4, 9e-4))}
    held = HeldOut("t.txt", 100, 1, 128, ppl, dict.fromkeys(ppl, 1.0), hf="ckpt")
    text = _printed(print_heldout, held)
    for key in ("unfused", "hf"):
        relative = (ppl[key] - base) / max(ppl[key], base)
        assert f"{relative:+.1e}" in text, (SEED, text)
        assert f"{ppl[key] - base:+.2e}" not in text, (SEED, text)
    assert "relative Δ vs fused" in text and "within 1e-3 relative" in text


def test_compare_table_says_it_compares_converted_with_original() -> None:
    result = CompareResult(1, 1e-5, [OutputDiff("o", "gdnc", 1e-7, 2e-8, True)])
    text = _printed(print_compare, result)
    assert "converted vs original" in text and "fused vs unfused" not in text


def _with_a_rotation(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Beside the delta net, yy = Concat(xx[2:], xx[:2]): a Concat the data-movement rule nearly
    folds (it is no transpose or reshape), a near-miss of a rule that decides nothing of fusion."""
    i64 = [numpy_helper.from_array(np.array([v], np.int64), n)
           for n, v in (("s0", 0), ("e0", 2), ("s1", 2), ("e1", 4), ("ax", 0))]
    proto.graph.initializer.extend(i64)
    proto.graph.node.extend([helper.make_node("Slice", ["xx", "s0", "e0", "ax"], ["lo"]),
                             helper.make_node("Slice", ["xx", "s1", "e1", "ax"], ["hi"]),
                             helper.make_node("Concat", ["hi", "lo"], ["yy"], axis=0)])
    proto.graph.input.append(helper.make_tensor_value_info("xx", TensorProto.FLOAT, [4, 3]))
    proto.graph.output.append(helper.make_tensor_value_info("yy", TensorProto.FLOAT, [4, 3]))
    return proto


def test_near_misses_are_shown_only_when_they_left_something_unfused() -> None:
    zoo = export_hf(T=2, exporter="dynamo")
    report = fuse_model(model_from_proto(_with_a_rotation(onnx.load(zoo.path))))
    assert len(report.chains) == 1 and [m.rule for m in report.misses] == ["fold-data-movement"]
    assert "near-miss" not in _printed(print_report, report)
    assert report.to_json()["near_misses"] == [{"rule": "fold-data-movement",
                                                "reason": "'yy' is not a transpose/reshape of 'xx'",
                                                "value": "yy"}]
    chain = report.chains[0]
    assert f"{chain.node}" in _printed(print_report, report)


def test_near_misses_of_steps_are_shown() -> None:
    from corpus.zoo import export_variant

    report = fuse_model(model_from_proto(onnx.load(export_variant(name="nearmiss_state_output", T=3).path)))
    text = _printed(print_report, report)
    assert "near-misses (not fused)" in text and "is a graph output" in text


def test_piped_tables_are_not_wrapped_at_80_columns() -> None:
    """gdnc's console, its stdout a pipe and no COLUMNS set: a 150-character row stays one line."""
    script = ("from rich.table import Table; from gdnc.cli import out; t = Table('c'); "
              "t.add_row('x' * 150); out.print(t)")
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert any("x" * 150 in line for line in proc.stdout.splitlines()), proc.stdout


def test_decode_rows_whose_states_stay_in_the_cache_are_marked() -> None:
    suite = Suite("op_decode", "Op decode", "batch", (1, 64), GdnShape(6, 32, 32))
    suite.cache_bytes, suite.cache_resident = 32 << 20, {1: 64 * GdnShape(6, 32, 32).state_bytes}
    for x, seconds in ((1, 1e-6), (64, 1e-3)):
        suite.row(x).results["fused"] = Measure.of(Timing(seconds, seconds), x, 2 * x * 24576, copy_gbps=10.0)
    text = _printed(lambda console, s: console.print(suite_table(s)), suite)
    marked = [line for line in text.splitlines() if line.rstrip().endswith("│") and "*" in line]
    assert len(marked) == 1 and "491.5*" in marked[0], text
    assert "can pass 100% of the copy bandwidth" in " ".join(text.split())
    assert json.dumps(suite.to_json())  # the marks travel in --json too
    assert suite.to_json()["cache_resident"] == {1: 64 * 24576}


def _tiny_model(tmp_path) -> str:
    graph = helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "m.onnx"))
    return str(tmp_path / "m.onnx")


ARITHMETIC = "error: arithmetic on a value of the input failed:"
SLIPPED = {  # what escapes every check -> (exit code, the one line)
    "ZeroDivisionError": (ZeroDivisionError("float division by zero"), 1,
                          f"{ARITHMETIC} ZeroDivisionError: float division"),
    "OverflowError": (OverflowError("cannot convert float infinity to integer"), 1,
                      f"{ARITHMETIC} OverflowError: cannot convert"),
    "MemoryError": (MemoryError(), 1, "error: out of memory (MemoryError)"),
    "onnxruntime": (InvalidArgument("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions "
                                    "for input: x\n index: 0 Got: 4 Expected: 2\n Please fix"), 1,
                    "error: onnxruntime: [ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions"),
    "a bug": (RuntimeError("first line\nsecond line"), 2,
              "internal error: RuntimeError: first line (GDNC_DEBUG"),
}


@pytest.mark.parametrize("case", list(SLIPPED))
def test_the_boundary_maps_what_slips_past_the_checks_to_one_line(tmp_path, monkeypatch, case) -> None:
    import gdnc.passes.convert

    exc, code, line = SLIPPED[case]

    def fail(*args, **kwargs):
        raise exc

    monkeypatch.delenv("GDNC_DEBUG", raising=False)
    monkeypatch.setattr(gdnc.passes.convert, "inspect_model", fail)
    outcome = run_cli(["inspect", _tiny_model(tmp_path)])
    assert outcome.code == code and len(outcome.error_lines) == 1, outcome.stderr
    assert outcome.error_lines[0].startswith(line), outcome.stderr

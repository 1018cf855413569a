"""``gdnc bench``: a quick run's JSON and figure, ``--quiet``, the one-line errors of bad input
(nothing written), and that the op-level competitors (unfused chain, onnxruntime) compute what
the fused kernel does.

Speed is not asserted: the figures of a shared 2-core machine say nothing. The two measuring
runs go through the installed ``gdnc`` script, concurrently; the bad-input runs stop before
measuring and run in this process (``run_cli``)."""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

import pytest
import torch
from matplotlib.image import imread

from corpus.gguf_rewrite import rewrite
from gdnc.bench.op_inputs import OpInputs
from gdnc.bench.op_level import fused_call
from gdnc.bench.options import GdnShape
from gdnc.bench.peers import OrtLinearAttention
from gdnc.bench.unfused_chain import UnfusedChain
from gdnc.frontends.gguf_file import GgufFile
from gdnc.models.qwen_hybrid.config import hybrid_config
from tests.cli.test_gguf_cli import _ok, gdnc_all
from tests.robustness.harness import run_cli

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "examples" / "tiny-qwen35-f16.gguf"
BATCHES, LENGTHS = (1, 3), (5, 16)
SUITES = {"model_decode": BATCHES, "model_prefill": LENGTHS, "op_decode": BATCHES, "op_prefill": LENGTHS}


def _positive(measure: dict) -> bool:
    return all(math.isfinite(v) and v > 0 for v in measure.values())


def _image(path: Path) -> tuple[int, ...]:
    return imread(path).shape


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(the quick run with --json --plot, the quiet run) through the installed script, and the folder."""
    tmp = tmp_path_factory.mktemp("bench")
    quick = ("bench", MODEL, "--quick", "--json", "--plot", tmp / "x.png", "--batches",
             ",".join(map(str, BATCHES)), "--lengths", ",".join(map(str, LENGTHS)), "--rounds", "2")
    quiet = ("bench", MODEL, "--quiet", "--plot", tmp / "q.png", "--batches", "2", "--lengths", "4",
             "--rounds", "1", "--threads", "1")
    return *gdnc_all(quick, quiet), tmp


def test_quick_json_and_plot(runs):
    quick, _, tmp = runs
    result = json.loads(_ok(quick).stdout)
    assert result["device"]["kind"] == "cpu" and result["threads"] >= 1
    assert result["copy_bandwidth_GBps"] > 0
    by_key: dict[str, list[dict]] = {}
    for suite in result["suites"]:
        by_key.setdefault(suite["suite"], []).append(suite)
    assert set(by_key) == set(SUITES)
    for key, xs in SUITES.items():
        for suite in by_key[key]:
            assert [row[suite["x"]] for row in suite["rows"]] == list(xs), suite
            for row in suite["rows"]:
                assert _positive(row["fused"]) and _positive(row["unfused"]), row
                assert row["fused_speedup"]["unfused"] > 0
    assert by_key["op_decode"][0]["shape"] == {"HV": 6, "K": 32, "V": 32}
    assert "gbps" in by_key["op_decode"][0]["rows"][0]["fused"]
    assert by_key["op_decode"][0]["skipped"]["fla"] == "CUDA only"
    height, width, _ = _image(tmp / "x.png")
    assert height > 400 and width > 600


def test_quiet_prints_nothing_and_plots(runs):
    _, quiet, tmp = runs
    assert _ok(quiet).stdout == "" and quiet.stderr == ""  # no tables, no progress bar
    assert len(_image(tmp / "q.png")) == 3


BAD = {  # case: (arguments after MODEL, or with their own model; what the one line names)
    "not GGUF": (("{tmp}/text.gguf",), "not a GGUF file"),
    "missing": (("{tmp}/nope.gguf",), "no such file"),
    "arch": (("{tmp}/llama.gguf",), "llama"),
    "batches": (("{model}", "--batches", "1,x"), "--batches"),
    "zero length": (("{model}", "--lengths", "0,4"), "--lengths"),
    "shape": (("{model}", "--shape", "32,128"), "--shape"),
    "rounds": (("{model}", "--rounds", "0"), "--rounds"),
    "cuda": (("{model}", "--device", "cuda"), "no CUDA device"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line(tmp_path, case):
    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    (tmp_path / "text.gguf").write_text("not a model\n")
    rewrite(MODEL, tmp_path / "llama.gguf", arch="llama")
    args, needle = BAD[case]
    outcome = run_cli(["bench", *(a.format(tmp=tmp_path, model=MODEL) for a in args),
                       "--plot", str(tmp_path / "x.png")])
    _one_line(outcome, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llama.gguf", "text.gguf"]


def test_op_shapes_the_memory_cannot_hold_are_refused_before_allocating(tmp_path, monkeypatch):
    """--shape 1024,1024,1024: a 4 GiB state per sequence; with 16 GiB available (whatever this
    machine has), one line naming the bytes, before anything is measured or written."""
    from gdnc.runtime import memory

    monkeypatch.setattr(memory, "available_bytes", lambda device: 16 << 30)
    outcome = run_cli(["bench", str(MODEL), "--shape", "1024,1024,1024", "--batches", "1,8",
                       "--plot", str(tmp_path / "x.png")])
    _one_line(outcome, "HVxKxV 1024x1024x1024 (4.0 GiB of state per sequence), decode at batch 8")
    assert "needs about 192.1 GiB" in outcome.stderr and "16.0 GiB is available" in outcome.stderr
    assert outcome.seconds < 10 and not list(tmp_path.iterdir())


@pytest.mark.parametrize("target, needle", [("no/x.png", "no folder"), ("x.nope", "image format"),
                                            ("x.png/", "is a directory")])
def test_bad_plot_target_is_refused_before_measuring(tmp_path, target, needle):
    (tmp_path / "x.png").mkdir()
    outcome = run_cli(["bench", str(MODEL), "--plot", str(tmp_path / target)])
    _one_line(outcome, needle)
    assert outcome.seconds < 10  # refused up front, not after the measurements
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]


def _one_line(outcome, needle: str) -> None:
    lines = [ln for ln in outcome.stderr.splitlines() if ln.strip()]
    assert outcome.code != 0 and outcome.stdout == "", outcome
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in lines[0], outcome.stderr


def test_unfused_chain_matches_fused_kernel():
    """The same inputs through both op-level competitors: the same o and final states."""
    cfg = hybrid_config(GgufFile(MODEL))
    results = []
    for make in (fused_call, partial(UnfusedChain, cfg)):
        x = OpInputs(GdnShape(4, 8, 16), batch=3, tokens=5, copies=1, device=torch.device("cpu"))
        with torch.inference_mode():
            make(x)(0)
        results.append((x.o, x.pools[0]))
    for fused, unfused in zip(*results):
        torch.testing.assert_close(fused, unfused, rtol=1e-4, atol=1e-5)


def test_ort_peer_computes_the_same_output():
    pytest.importorskip("onnxruntime")
    x = OpInputs(GdnShape(4, 8, 16), batch=3, tokens=5, copies=1, device=torch.device("cpu"))
    ort = OrtLinearAttention(x, threads=1)
    ort(0)
    o_ort, state_ort = (torch.from_numpy(v.numpy()) for v in ort.bindings[0].get_outputs())
    fused_call(x)(0)
    torch.testing.assert_close(o_ort.reshape(x.o.shape), x.o, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state_ort, x.pools[0], rtol=1e-4, atol=1e-5)


def test_end_to_end_json_and_table() -> None:
    """``--e2e``: prefill-512, decode-64 of one and of four sequences, as JSON and as a table."""
    as_json, table = gdnc_all(("bench", MODEL, "--e2e", "--json", "--rounds", "1"),
                              ("bench", MODEL, "--e2e", "--rounds", "1"))
    result = json.loads(_ok(as_json).stdout)
    assert (result["prompt"], result["decode"], result["seqs"], result["rounds"]) == (512, 64, 4, 1)
    assert result["compiled"] and result["weight_bytes"] > 0 and result["device"]["kind"] == "cpu"
    assert all(math.isfinite(result[k]) and result[k] > 0
               for k in ("prefill_tok_s", "decode_tok_s", "batch_decode_tok_s", "copy_bandwidth_gbps",
                         "decode_host_us"))
    assert result["cuda_graphs"] is False  # the CPU replays none
    text = _ok(table).stdout
    assert all(row in text for row in ("prefill 512", "decode 64, 1 sequence", "decode 64, 4 sequences",
                                       "host time of a decode step"))
    refused = run_cli(["bench", str(MODEL), "--e2e", "--plot", "x.png"])
    assert refused.code == 1 and "--plot" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def test_end_to_end_prompt_and_sequences_from_lengths_and_batches() -> None:
    (shaped,) = gdnc_all(("bench", MODEL, "--e2e", "--json", "--rounds", "1", "--lengths", "16",
                          "--batches", "3"))
    result = json.loads(_ok(shaped).stdout)
    assert (result["prompt"], result["seqs"]) == (16, 3)
    refused = run_cli(["bench", str(MODEL), "--e2e", "--lengths", "16,32"])
    assert refused.code == 1 and "--lengths takes one number with --e2e" in refused.stderr

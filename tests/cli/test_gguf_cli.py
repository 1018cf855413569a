"""The GGUF commands as a user meets them: ``gdnc run`` (text, JSON, several prompts at once,
sampling), ``gdnc compare`` (fused vs unfused) and ``gdnc logits``, and their one-line errors.

Every call goes through the installed ``gdnc`` script in a subprocess; independent calls run
concurrently to keep the module fast.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from corpus.gguf_rewrite import rewrite
from corpus.tiny_gguf import write_models
from tests.cli.processes import gdnc, gdnc_all

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "gguf"
PROMPTS = ("a", "bb cc", "d")


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc


def _one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], proc.stderr


def _json_lines(proc: subprocess.CompletedProcess) -> tuple[list[dict], dict]:
    """(one record per sequence, the timing) of ``gdnc run --json``."""
    lines = [json.loads(ln) for ln in _ok(proc).stdout.splitlines() if ln.strip()]
    assert lines and set(lines[-1]) == {"timing"}, proc.stdout
    return lines[:-1], lines[-1]["timing"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    paths = write_models(tmp_path_factory.mktemp("gguf"), variants=("f32",))
    return {p.name.removesuffix("-tiny-f32.gguf"): p for p in paths}


@pytest.fixture(scope="module")
def model(models) -> Path:
    return models["qwen35"]


@pytest.fixture(scope="module")
def batch(model) -> tuple[list[dict], dict]:
    """Three prompts, two slots, greedy, fused: ``run -p a -p "bb cc" -p d -n 5 --parallel 2``."""
    args = [a for p in PROMPTS for a in ("-p", p)]
    return _json_lines(gdnc("run", model, *args, "-n", 5, "--parallel", 2, "--json"))


def test_run_streams_the_prompt_then_the_generated_text(model) -> None:
    prompt = "The for statement"
    proc = _ok(gdnc("run", model, "-p", prompt, "-n", 8))
    assert proc.stdout.startswith(prompt)
    assert len(proc.stdout.rstrip("\n")) > len(prompt)
    summary = proc.stderr.rstrip("\n").splitlines()[-1]
    assert "8 tokens for 1 sequence(s)" in summary and "tokens/s" in summary
    assert "fused graph: " in summary and summary.endswith(" nodes, built once")
    nodes = summary.rsplit("fused graph: ", 1)[1].split()[0]
    assert int(nodes) > 0


def test_run_summary_is_one_line_on_a_narrow_pipe(model) -> None:
    env = {**os.environ, "COLUMNS": "80"}
    proc = _ok(gdnc("run", model, "-p", "The for statement", "-n", 8, env=env))
    last = proc.stderr.rstrip("\n").splitlines()[-1]
    assert "tokens/s" in last and "fused graph: " in last and last.endswith("nodes, built once")


def test_run_json_serves_three_prompts_on_two_slots(batch) -> None:
    records, timing = batch
    assert [r["prompt"] for r in records] == list(PROMPTS)
    for r in records:
        assert set(r) == {"prompt", "prompt_ids", "generated_ids", "text", "status", "finish_reason"}
        assert r["prompt_ids"] and all(isinstance(t, int) for t in r["prompt_ids"])
        assert isinstance(r["text"], str)
        if r["finish_reason"] == "eos":
            assert 1 <= len(r["generated_ids"]) <= 5
        else:
            assert r["finish_reason"] == "length" and len(r["generated_ids"]) == 5
    assert timing["tokens_per_s"] > 0 and timing["parallel"] == 2
    assert timing["fused_gdn"] is True and timing["fused_graph_builds"] == 1
    assert timing["generated"] == sum(len(r["generated_ids"]) for r in records)


def test_run_batched_equals_each_prompt_alone_and_unfused(model, batch) -> None:
    records, _ = batch
    args = [a for p in PROMPTS for a in ("-p", p)]
    *alone, unfused = gdnc_all(
        *[("run", model, "-p", p, "-n", 5, "--json") for p in PROMPTS],
        ("run", model, *args, "-n", 5, "--parallel", 2, "--json", "--fused-gdn", "off"))
    for r, proc in zip(records, alone):
        (single,), timing = _json_lines(proc)
        assert timing["parallel"] == 1
        assert single["prompt_ids"] == r["prompt_ids"], r["prompt"]
        assert single["generated_ids"] == r["generated_ids"], r["prompt"]
        assert single["finish_reason"] == r["finish_reason"]
    off, timing = _json_lines(unfused)
    assert [r["generated_ids"] for r in off] == [r["generated_ids"] for r in records]
    assert timing["fused_gdn"] is False and timing["unfused_graph_builds"] >= 1
    assert timing["fused_graph_builds"] == 0 and timing["parallel"] == 2


def test_run_sampling_is_reproducible_per_seed(model) -> None:
    args = ("run", model, "-p", "The for statement", "-p", "A class", "-n", 8, "--temperature", 0.9,
            "--json")
    first, again, other = gdnc_all((*args, "--seed", 3), (*args, "--seed", 3), (*args, "--seed", 4))
    ids = [[r["generated_ids"] for r in _json_lines(p)[0]] for p in (first, again, other)]
    assert len(ids[0]) == 2
    assert ids[0] == ids[1]
    assert ids[0] != ids[2]


def test_logits_argmax_matches_greedy_run(model, batch, tmp_path) -> None:
    r = batch[0][1]  # "bb cc": a multi-token prompt
    tokens = r["prompt_ids"] + r["generated_ids"][:-1]
    out = tmp_path / "l.npy"
    proc = _ok(gdnc("logits", model, "--tokens", " ".join(map(str, tokens)), "-o", out, "--json"))
    info = json.loads(proc.stdout)
    got = np.load(out)
    assert got.dtype == np.float32 and got.shape[0] == len(tokens) and info["shape"] == list(got.shape)
    assert info["argmax"] == got.argmax(-1).tolist()
    assert info["argmax"][len(r["prompt_ids"]) - 1:] == r["generated_ids"]


def _compare_checks(data: dict) -> None:
    assert data["passed"] is True and data["prompts"]
    for p in data["prompts"]:
        assert p["top1_agreement"] == 1.0, p["prompt"]
        assert p["max_abs_logit_diff"] <= 1e-4, p["prompt"]
        assert f"{p['perplexity_fused']:.4g}" == f"{p['perplexity_unfused']:.4g}", p["prompt"]


def test_compare_fused_vs_unfused(model) -> None:
    fixtures = sorted(FIXTURES.glob("*.gguf"))
    assert len(fixtures) == 3
    as_json, plain, *others = gdnc_all(("compare", model, "--json"), ("compare", model),
                                       *[("compare", f, "--json") for f in fixtures])
    data = json.loads(_ok(as_json).stdout)
    assert len(data["prompts"]) == 4 and data["fused_nodes"] < data["unfused_nodes"]
    _compare_checks(data)
    assert "pass" in _ok(plain).stdout and "FAIL" not in plain.stdout
    for f, proc in zip(fixtures, others):
        _compare_checks(json.loads(_ok(proc).stdout))


def test_errors_are_one_line(model, tmp_path) -> None:
    fixture = FIXTURES / "qwen35-fixture-f32.gguf"
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(fixture.read_bytes()[:1000])
    llama = rewrite(fixture, tmp_path / "llama.gguf", arch="llama")
    feeds = tmp_path / "x.npz"
    np.savez(feeds, x=np.zeros(2, np.float32))
    onnx_model = tmp_path / "m.onnx"
    onnx_model.write_bytes(b"")  # never read: the missing --inputs is reported first
    cases = [
        (("run", model), "give at least one prompt"),
        (("run", model, "-p", "a", "-n", 0), "-n must be >= 1, got 0"),
        (("run", model, "-p", "a", "--fused-gdn", "maybe"), "is not on, off or auto"),
        (("run", model, "-p", "a", "--inputs", feeds), "--inputs / -o apply to ONNX models"),
        (("run", onnx_model), "an ONNX model needs --inputs"),
        (("run", truncated, "-p", "a"), "not a readable GGUF file"),
        (("compare", truncated), "not a readable GGUF file"),
        (("run", llama, "-p", "a"), "architecture 'llama' is not supported"),
        (("compare", llama), "architecture 'llama' is not supported"),
        (("run", model, "-p", "The for statement is used to iterate", "--ctx", 4),
         "exceed the context of 4"),
        (("run", model, "-p", "a", "--device", "tpu"), "device 'tpu'"),
        (("run", model, "-p", "a", "--parallel", 0), "--parallel must be >= 1, got 0"),
        (("run", model, "-p", "a", "--temperature", -1), "temperature must be >= 0, got -1.0"),
    ]
    for (args, needle), proc in zip(cases, gdnc_all(*(args for args, _ in cases))):
        _one_line_error(proc, needle)
        assert proc.stdout == "", args


def test_inspect_gguf_shows_one_multi_sequence_node_per_layer(model) -> None:
    report = json.loads(_ok(gdnc("inspect", model, "--lengths", "3,1,2", "--json")).stdout)
    assert report["ops_after"]["ai.gdnc::GatedDeltaNet"] == 3
    assert [(c["sequences"], c["steps"]) for c in report["chains"]] == [(3, 6)] * 3
    assert report["nodes_after"] < report["nodes_before"] / 2
    _one_line_error(gdnc("inspect", model, "--lengths", "3,x"), "is not a comma-separated list")

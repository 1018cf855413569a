"""``gdnc run`` as a llama.cpp user types it: the short and long spellings of llama.cpp's flags
mean gdnc's options, prompts come from argv bytes, files and stdin exactly, a sequence that
ends at EOS says so, ``-h`` / ``--version``, and the flag screen and ``-ngl`` as units.

Model runs go in-process (``run_cli``) on the 384-token fixture; one real process checks that
argv bytes that are not UTF-8 reach the tokenizer unchanged.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from corpus.gguf_rewrite import rewrite
from gdnc import __version__
from gdnc.commands.llama_flags import IGNORED, REFUSED, device_for, screen
from gdnc.errors import InputError
from gdnc.frontends.gguf_file import GgufFile
from gdnc.frontends.gguf_tokenizer import GgufTokenizer
from gdnc.runtime.sampling import SEED_MODULUS
from tests.robustness.harness import Outcome, run_cli

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "tests" / "fixtures" / "gguf" / "qwen35-fixture-f32.gguf"
SLOW_S = 300.0  # an in-process model run on a busy machine


def gdnc(*args: object) -> Outcome:
    return run_cli([str(a) for a in args], seconds=SLOW_S)


def records(outcome: Outcome) -> tuple[list[dict], dict]:
    """(one record per sequence, the timing) of ``gdnc run --json``."""
    assert outcome.code == 0, outcome.stderr
    lines = [json.loads(line) for line in outcome.stdout.splitlines() if line.strip()]
    return lines[:-1], lines[-1]["timing"]


@pytest.fixture(scope="module")
def tokenizer() -> GgufTokenizer:
    return GgufTokenizer.from_metadata(GgufFile(MODEL).metadata)


@pytest.fixture(scope="module")
def greedy() -> list[dict]:
    """``run -p a -p "bb cc" -n 3 --json``: greedy, one record per sequence."""
    return records(gdnc("run", MODEL, "-p", "a", "-p", "bb cc", "-n", 3, "--json"))[0]


def test_llama_cpp_spellings_mean_the_same_options() -> None:
    big = 2**70 + 5
    threads = torch.get_num_threads()
    try:
        short = gdnc("run", MODEL, "-p", "a", "-p", "bb", "-n", 3, "-np", 1, "-c", 16, "-s", big,
                     "--temp", 0.8, "--top-k", 5, "--top-p", 0.9, "--repeat-penalty", 1.3, "-t", 1, "--json")
        assert torch.get_num_threads() == 1
        long = gdnc("run", MODEL, "--prompt", "a", "--prompt", "bb", "--n-predict", 3, "--parallel", 1,
                    "--ctx-size", 16, "--seed", big % SEED_MODULUS, "--temperature", 0.8, "--top-k", 5,
                    "--top-p", 0.9, "--repeat-penalty", 1.3, "--threads", threads, "--json")
    finally:
        torch.set_num_threads(threads)
    (seqs, timing), (long_seqs, _) = records(short), records(long)
    assert [s["generated_ids"] for s in seqs] == [s["generated_ids"] for s in long_seqs]
    assert timing["parallel"] == 1 and all(len(s["generated_ids"]) == 3 for s in seqs)


def test_a_tiny_temperature_decodes_greedily(greedy) -> None:
    tiny, _ = records(gdnc("run", MODEL, "-p", "a", "-p", "bb cc", "-n", 3, "--temp", "1e-40", "-s", 9,
                           "--json"))
    assert [s["generated_ids"] for s in tiny] == [s["generated_ids"] for s in greedy]


def test_prompts_from_argv_bytes_stdin_and_a_file(tmp_path, tokenizer) -> None:
    """A real process: ``-p`` bytes that are not UTF-8, ``-p -`` and ``-f FILE`` (one trailing
    newline dropped from each of these two) reach the tokenizer byte for byte."""
    raw = b"caf\xe9 \xff"
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_bytes(raw + b"\n")
    args = ["run", MODEL, "-p", raw, "-p", "-", "-f", prompt_file, "-n", "1", "--json"]
    proc = subprocess.run([sys.executable, "-m", "gdnc", *args], input=b"hello\n\n", capture_output=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr.decode()
    seqs = [json.loads(line) for line in proc.stdout.splitlines()][:-1]
    assert [s["prompt_ids"] for s in seqs] == [tokenizer.encode(raw), tokenizer.encode(b"hello\n"),
                                               tokenizer.encode(raw)]
    assert tokenizer.token_text(tokenizer.encode(raw)[-1]) == "ÿ"  # 0xFF's byte symbol
    assert seqs[0]["prompt"] == "caf\ufffd \ufffd"


def test_a_sequence_that_ends_at_eos_says_so(tmp_path, greedy) -> None:
    """With EOS set to the token greedy decoding produces first, plain output ends in
    "[end of text]" (each sequence's, when several print as they finish); -q and --json not."""
    first = greedy[0]["generated_ids"][0]
    model = rewrite(MODEL, tmp_path / "eos.gguf", values={"tokenizer.ggml.eos_token_id": first})
    one = gdnc("run", model, "-p", "a", "-n", 4)
    assert one.code == 0 and one.stdout.endswith(" [end of text]\n"), one.stdout
    two = gdnc("run", model, "-p", "a", "-p", "a", "-n", 4)
    assert two.code == 0 and two.stdout.count(" [end of text]") == 2, two.stdout
    quiet = gdnc("run", model, "-p", "a", "-n", 4, "-q")
    assert quiet.code == 0 and "[end of text]" not in quiet.stdout
    (ignored,), _ = records(gdnc("run", model, "-p", "a", "-n", 4, "--ignore-eos", "--json"))
    assert (ignored["finish_reason"], len(ignored["generated_ids"])) == ("length", 4)


def test_help_and_version() -> None:
    for args in (["-h"], ["--help"], ["run", "-h"]):
        outcome = gdnc(*args)
        assert outcome.code == 0 and "Usage" in outcome.stdout, args
    run_help = gdnc("run", "-h").stdout
    for flag in ("-np", "-ngl", "--ctx-size", "--top-k", "--top-p", "--repeat-penalty", "--file",
                 "--threads", "--n-predict"):
        assert flag in run_help, flag
    version = gdnc("--version")
    assert (version.code, version.stdout) == (0, f"gdnc {__version__}\n")


def test_screen_refuses_llama_only_flags_but_not_values() -> None:
    values = {"-p", "-f", "-n"}
    assert screen(["m", "-p", "-fa", "-no-cnv", "-n", "-m", "--", "-fa"], values) == \
        ["m", "-p", "-fa", "-n", "-m", "--", "-fa"]
    assert screen(["m", "-cb", "--no-escape", "-p", "x"], values) == ["m", "-p", "x"]
    for flag in (*REFUSED, "--flash-attn=on"):
        name = flag.split("=")[0]
        with pytest.raises(InputError, match=f"^{name} is a llama.cpp option gdnc does not have"):
            screen(["m", "-p", "x", flag], values)
    assert not IGNORED & REFUSED.keys()


def test_ngl_maps_to_a_device(monkeypatch) -> None:
    for cuda in (True, False):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        assert device_for(None, None) == "cpu" and device_for("cuda:1", None) == "cuda:1"
        assert device_for(None, "0") == "cpu" and device_for("cpu", "0") == "cpu"
        assert device_for(None, "auto") == ("cuda" if cuda else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device_for(None, "99") == "cuda" and device_for("cuda:1", "all") == "cuda:1"
    with pytest.raises(InputError, match="-ngl 99 asks for a GPU but --device is cpu"):
        device_for("cpu", "99")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="-ngl 99: this machine has no CUDA device"):
        device_for(None, "99")


def test_interpret_runs_the_same_tokens_op_by_op() -> None:
    """``--interpret``: the reference interpreter instead of the compiled program, same tokens."""
    runs = [records(gdnc("run", ROOT / "examples" / "tiny-qwen35-q8_0.gguf", "-p", "hello", "-p",
                         "two words", "-n", 6, "--json", *extra)) for extra in ((), ("--interpret",))]
    assert [[r["generated_ids"] for r in seqs] for seqs, _ in runs][0] == \
        [[r["generated_ids"] for r in seqs] for seqs, _ in runs][1]
    assert [timing["compiled"] for _, timing in runs] == [True, False]

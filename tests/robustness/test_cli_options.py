"""Bad option values and the wrong kind of model through every command, held to the promise of
``harness.py``: one ``error: ...`` line naming the problem.

Options: non-finite or negative temperatures, seeds and sampler settings, a zero or too small
context, token ids past the vocabulary (of any size), llama.cpp flags gdnc lacks, an unknown
``--dump-after`` stage, prompts a vocabulary lacking a byte symbol cannot encode. Models: a
Hugging Face checkpoint folder, a safetensors file, a text file, an ONNX model where only GGUF
goes; and a GGUF or ONNX model named ``.bin`` still works.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from corpus.gguf_rewrite import rewrite
from gdnc.commands.llama_flags import REFUSED
from tests.robustness.harness import hold_to_promise, run_cli

SUITE = "options"
ROOT = Path(__file__).resolve().parents[2]
GGUF = ROOT / "tests" / "fixtures" / "gguf" / "qwen35-fixture-f32.gguf"
ONNX = ROOT / "examples" / "hf_recurrent_gated_delta_rule_t16.onnx"
HF = ROOT / "examples" / "tiny-qwen35"


def check(case: str, args: list[object], mention: str) -> None:
    hold_to_promise(SUITE, case, run_cli([str(a) for a in args]), mention=mention)


@pytest.mark.parametrize(("option", "value", "mention"), [
    ("--temperature", "nan", "temperature must be a finite number, got nan"),
    ("--temp", "inf", "temperature must be a finite number, got inf"),
    ("--temp", "-0.5", "temperature must be >= 0, got -0.5"),
    ("-s", "-1", "seed must be >= 0, got -1"),
    ("--top-k", "-3", "top-k must be >= 0"),
    ("--top-p", "1.5", "top-p must be in [0, 1]"),
    ("--repeat-penalty", "0", "repeat penalty must be a finite number > 0"),
    ("--repeat-last-n", "-2", "repeat-last-n must be >= 0, or -1"),
    ("-c", "0", "the context must be >= 1 token, got 0"),
    ("--ctx", "2", "exceed the context of 2"),
    ("-t", "0", "--threads: 0 is not in 1..1024"),
    ("-ngl", "x", "-ngl: 'x' is not a layer count"),
])
def test_bad_run_options(option: str, value: str, mention: str) -> None:
    check(f"run {option} {value}", ["run", GGUF, "-p", "The for statement", "-n", "2", option, value],
          mention)


def test_ngl_without_cuda_and_against_device(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    check("-ngl 99 without CUDA", ["run", GGUF, "-p", "a", "-ngl", "99"],
          "-ngl 99: this machine has no CUDA device")
    check("-ngl 0 --device cuda", ["run", GGUF, "-p", "a", "-ngl", "0", "--device", "cuda"],
          "-ngl 0 asks for the CPU but --device is cuda")


@pytest.mark.parametrize("tokens", [f"1 {2**70}", "1 -1", "1 99999999", "384"])
def test_token_ids_outside_the_vocabulary(tokens: str, tmp_path) -> None:
    bad = tokens.split()[-1]
    check(f"logits --tokens {tokens}", ["logits", GGUF, "--tokens", tokens, "-o", tmp_path / "l.npy"],
          f"got {bad} (the vocabulary has 384 tokens)")
    assert not (tmp_path / "l.npy").exists()


def test_every_llama_cpp_flag_gdnc_lacks_is_named() -> None:
    for flag in REFUSED:
        check(f"run {flag}", ["run", GGUF, "-p", "a", flag, "1"],
              f"{flag} is a llama.cpp option gdnc does not have")


def test_prompt_sources(tmp_path) -> None:
    check("stdin twice", ["run", GGUF, "-p", "-", "-f", "-"], "stdin holds one prompt")
    check("missing prompt file", ["run", GGUF, "-f", tmp_path / "absent.txt"], "cannot read the prompt")
    check("a folder as prompt file", ["run", GGUF, "-f", tmp_path], "cannot read the prompt")


def test_an_unknown_dump_after_stage_writes_nothing(tmp_path) -> None:
    out = tmp_path / "out.onnx"
    check("--dump-after nope", ["convert", ONNX, "-o", out, "--dump-after", "fusee"],
          "there is no stage 'fusee'; the stages are shapes, fold-constants, shapes-2, canonicalize, fuse, "
          "simplify, shapes-3")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def missing_symbols(tmp_path_factory) -> dict[int, Path]:
    """The fixture with the byte symbol of 'K' (0x4B) or of 0xFF renamed away (each in no merge)."""
    from gguf import GGUFReader

    tokens = list(GGUFReader(GGUF).fields["tokenizer.ggml.tokens"].contents())
    folder = tmp_path_factory.mktemp("vocab")
    return {byte: rewrite(GGUF, folder / f"no-{byte:02x}.gguf", values={
        "tokenizer.ggml.tokens": ["<gone>" if t == symbol else t for t in tokens]})
        for byte, symbol in ((0x4B, "K"), (0xFF, "ÿ"))}


def test_a_prompt_the_vocabulary_cannot_encode(missing_symbols) -> None:
    check("character without a token", ["run", missing_symbols[0x4B], "-p", "aKb", "-n", "1"],
          "character 'K' at byte 1 of the text has no token: the vocabulary has no symbol for byte 0x4B")
    check("several prompts", ["run", missing_symbols[0x4B], "-p", "a", "-p", "xyzK", "-n", "1"],
          "prompt 2 of 2: character 'K' at byte 3")
    stray = os.fsdecode(b"a\xff")  # as a command line holds it
    check("stray byte without a token", ["run", missing_symbols[0xFF], "-p", stray, "-n", "1"],
          "byte 0xFF at byte 1 of the text is not UTF-8, and the vocabulary has no token for it")


COMMANDS = {  # command -> its arguments after MODEL
    "run": ["-p", "a"], "convert": ["-o", "{tmp}/out.onnx"], "inspect": [], "compare": [],
    "bench": ["--quick"], "logits": ["--tokens", "1", "-o", "{tmp}/l.npy"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_models_gdnc_does_not_take(command: str, tmp_path) -> None:
    text = tmp_path / "notes.bin"
    text.write_text("not a model\n")
    rest = [a.format(tmp=tmp_path) for a in COMMANDS[command]]
    for case, model, mention in [
        ("HF folder", HF, "is a Hugging Face checkpoint folder; gdnc takes a GGUF file or an ONNX model"),
        ("safetensors", HF / "model.safetensors", "is a safetensors weights file"),
        ("text file", text, "not a GGUF file or an ONNX model (it starts with b'not a mo')"),
    ]:
        check(f"{command} {case}", [command, model, *rest], mention)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.bin"]


@pytest.mark.parametrize("command", ["bench", "logits"])
def test_onnx_where_gguf_goes(command: str, tmp_path) -> None:
    rest = [a.format(tmp=tmp_path) for a in COMMANDS[command]]
    check(f"{command} ONNX", [command, ONNX, *rest], f"is an ONNX model; gdnc {command} takes a GGUF model")


def test_a_model_is_known_by_its_content(tmp_path) -> None:
    for source, name in ((GGUF, "gguf-model.bin"), (ONNX, "onnx-model.bin")):
        shutil.copy(source, tmp_path / name)
        lengths = ["--lengths", "1"] if "gguf" in name else []
        outcome = run_cli(["inspect", str(tmp_path / name), "--json", *lengths], seconds=300)
        assert outcome.code == 0 and '"ops_after"' in outcome.stdout, outcome.stderr


def test_a_gguf_file_named_onnx_is_refused(tmp_path) -> None:
    shutil.copy(GGUF, tmp_path / "model.onnx")
    check("GGUF named .onnx", ["inspect", tmp_path / "model.onnx"],
          "starts like a GGUF file, not an ONNX model as its name says")

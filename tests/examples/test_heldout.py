"""Held-out perplexity (``gdnc compare MODEL.gguf --eval TEXT --hf CHECKPOINT``) on the trained
example: the windows cover the text exactly once, the NLL is torch's cross entropy, fused and
unfused graphs agree to 4 digits, the HF checkpoint the model came from agrees within 1e-3 and
a different checkpoint is caught."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from gdnc.commands.heldout import evaluate, nll, windows
from gdnc.models.qwen_hybrid.model import HybridModel
from tests.cli.processes import gdnc

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "examples" / "tiny-qwen35-f16.gguf"
CHECKPOINT = ROOT / "examples" / "tiny-qwen35"
HELDOUT = CHECKPOINT / "heldout.txt"


@given(st.lists(st.integers(0, 50), max_size=60), st.integers(1, 9), st.one_of(st.none(), st.integers(1, 70)))
def test_windows_score_every_token_once_after_its_predecessor(ids, width, max_tokens) -> None:
    wins = windows(ids, width, max_tokens)
    scored = max(0, min(len(ids) - 1, max_tokens if max_tokens is not None else len(ids)))
    assert [t for w in wins for t in w.targets] == ids[1:1 + scored]
    for w in wins:
        assert 1 <= len(w.inputs) == len(w.targets) <= width
        assert list(w.inputs[1:]) == list(w.targets[:-1])


def test_nll_is_the_summed_cross_entropy() -> None:
    logits = torch.randn(7, 11)
    targets = tuple(torch.randint(0, 11, (7,)).tolist())
    want = F.cross_entropy(logits.double(), torch.tensor(targets), reduction="sum").item()
    assert nll(logits, targets) == pytest.approx(want, rel=1e-12)


@pytest.fixture(scope="module")
def held_ids() -> list[int]:
    from gdnc.frontends.gguf_tokenizer import GgufTokenizer

    assert HELDOUT.is_file() and (CHECKPOINT / "model.safetensors").is_file(), "committed with the project"
    model = HybridModel(str(MODEL))
    return GgufTokenizer.from_metadata(model.file.metadata).encode(HELDOUT.read_text())


def test_fused_unfused_and_hf_agree_on_held_out_text(held_ids) -> None:
    fused = HybridModel(str(MODEL), fused=True)
    unfused = HybridModel(str(MODEL), fused=False, file=fused.file)
    result = evaluate(fused, unfused, held_ids, str(HELDOUT), 64, 640, CHECKPOINT)
    assert result.tokens == 640 and result.windows == 10
    ppl = result.perplexity
    assert 1.0 < ppl["fused"] < 576.0  # better than uniform over the vocabulary
    assert abs(ppl["fused"] - ppl["unfused"]) <= 5e-5 * ppl["fused"]
    assert abs(ppl["fused"] - ppl["hf"]) <= 1e-3 * ppl["fused"]
    assert result.passed


def test_compare_reports_held_out_perplexity_and_catches_another_checkpoint(tmp_path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    proc = gdnc("compare", MODEL, "--eval", HELDOUT, "--max-tokens", "256", "--hf", CHECKPOINT, "--json")
    assert proc.returncode == 0, proc.stderr
    held = json.loads(proc.stdout)["heldout"]
    assert held["tokens"] == 256 and held["fused_matches_unfused"] and held["hf_matches"]
    assert set(held["perplexity"]) == {"fused", "unfused", "hf"}

    torch.manual_seed(1)
    other = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(CHECKPOINT)))
    other.save_pretrained(str(tmp_path / "other"))
    proc = gdnc("compare", MODEL, "--eval", HELDOUT, "--max-tokens", "128", "--hf", tmp_path / "other")
    assert proc.returncode == 1, proc.stderr
    assert "FAIL: not fused = HF within 1e-3" in proc.stdout


@pytest.mark.parametrize(("args", "needle"), [
    (("--hf", CHECKPOINT), "--hf and --max-tokens apply to --eval TEXT fix: add --eval FILE.txt"),
    (("--eval", ROOT / "missing.txt"), "no such file (--eval takes a text file)"),
    (("--eval", HELDOUT, "--hf", ROOT / "examples"), "not an HF checkpoint folder"),
    (("--eval", HELDOUT, "--window", "0"), "--window must be >= 1"),
])
def test_bad_eval_options_are_one_line(args, needle) -> None:
    proc = gdnc("compare", MODEL, *args)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 1 and len(lines) == 1 and needle in lines[0], proc.stderr


@pytest.mark.parametrize(("device", "unfused", "passed"), [
    ("cpu", 80.7949, True), ("cpu", 80.80, False),  # 4 significant digits on CPU
    ("cuda", 80.7574 * (1 + 4.6e-4), True), ("cuda", 80.7574 * (1 + 2e-3), False),  # tf32 on CUDA (H200)
])
def test_fused_unfused_tolerance_by_device(device, unfused, passed) -> None:
    from gdnc.commands.heldout import HeldOut

    held = HeldOut("t.txt", 100, 1, 128, {"fused": 80.7949 if device == "cpu" else 80.7574,
                                         "unfused": unfused}, device=device)
    assert held.fused_matches_unfused is passed and held.hf_matches is None

"""The trained tiny qwen35 model of ``examples/train_tiny.py`` (committed GGUF files).

Fast: both files load, fused and unfused graphs agree, and greedy generation from a Python-docs
prompt is deterministic and mostly ASCII words. Slow (``-m slow``): the training script runs end
to end with a tiny budget and writes loadable files.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gdnc.frontends.gguf_tokenizer import GgufTokenizer
from gdnc.models.qwen_hybrid.model import HybridModel
from gdnc.runtime.generation import Request, Scheduler

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
VARIANTS = ("f16", "q8_0")
PROMPT = "The for statement"


def _path(variant: str, folder: Path = EXAMPLES) -> Path:
    return folder / f"tiny-qwen35-{variant}.gguf"


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request) -> str:
    assert _path(request.param).is_file(), f"{_path(request.param)} is committed with the project"
    return request.param


@pytest.fixture(scope="module")
def models(variant) -> tuple[HybridModel, HybridModel]:
    path = str(_path(variant))
    fused = HybridModel(path, fused=True)
    return fused, HybridModel(path, fused=False, file=fused.file)


def _greedy(model: HybridModel, prompt: list[int], n: int) -> list[int]:
    sched = Scheduler(model, 1, n_ctx=len(prompt) + n)
    sched.submit(Request(tuple(prompt), n, stop_at_eos=False))
    return sched.run()[0].generated


def test_loads_as_qwen35(models, variant):
    fused, _ = models
    assert fused.cfg.arch == "qwen35"
    assert fused.file.metadata["general.file_type"] == {"f16": 1, "q8_0": 7}[variant]
    assert fused.file.metadata["general.architecture"] == "qwen35"


def test_fused_matches_unfused(models):
    fused, unfused = models
    tok = GgufTokenizer.from_metadata(fused.file.metadata)
    ids = tok.encode("The while statement is used for repeated execution as long as")
    a, b = fused.logits(ids), unfused.logits(ids)
    assert a.shape == b.shape == (len(ids), len(fused.file.metadata["tokenizer.ggml.tokens"]))
    assert torch.isfinite(a).all()
    assert (a - b).abs().max().item() <= 1e-4


def test_greedy_generation_is_deterministic_text(models):
    fused, _ = models
    tok = GgufTokenizer.from_metadata(fused.file.metadata)
    prompt = tok.encode(PROMPT)
    first, second = _greedy(fused, prompt, 32), _greedy(fused, prompt, 32)
    assert first == second
    text = tok.decode(first, skip_special=True)
    words = text.split()
    assert len(words) >= 4, text
    assert sum(c.isascii() for c in text) >= 0.95 * len(text), text
    alpha = [w for w in words if re.fullmatch(r"[\"'(*]*[A-Za-z]+[\"'),.:;*]*", w)]
    assert len(alpha) >= 0.5 * len(words), text


@pytest.mark.slow
def test_train_script_end_to_end(tmp_path):
    subprocess.run([sys.executable, str(EXAMPLES / "train_tiny.py"), "--steps", "30",
                    "--out", str(tmp_path)], check=True, cwd=ROOT, timeout=900)
    for variant in VARIANTS:
        m = HybridModel(str(_path(variant, tmp_path)))
        assert torch.isfinite(m.logits([1, 2, 3])).all()
    side = tmp_path / "tiny-qwen35"
    for name in ("config.json", "model.safetensors", "heldout.txt", "train_log.json"):
        assert (side / name).is_file(), name
    log = json.loads((side / "train_log.json").read_text())
    assert log["steps"] == 30 and log["verify"]["top1_f32_fused_vs_hf"] == 1.0
    from gdnc.frontends.onnx_model import load_onnx

    decode = load_onnx(tmp_path / "tiny-qwen35-decode.onnx")
    assert {"input_ids", "recurrent_state.0", "key.3"} <= set(decode.graph.inputs)

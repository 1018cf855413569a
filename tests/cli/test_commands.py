"""Helpers of ``gdnc.commands``: ``--fused-gdn`` parsing, and one batch of prompts through a GGUF
hybrid giving each prompt the logits it has alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gdnc.commands.gguf_model import batch_logits, load_hybrid
from gdnc.commands.options import fused_flag
from gdnc.errors import InputError

EXAMPLE = "examples/tiny-qwen35-f16.gguf"


@pytest.mark.parametrize(("value", "fused"), [("on", True), ("auto", True), ("off", False)])
def test_fused_flag_values(value: str, fused: bool) -> None:
    assert fused_flag(value) is fused


@pytest.mark.parametrize("value", ["", "ON", "yes", "of"])
def test_fused_flag_refuses_others(value: str) -> None:
    with pytest.raises(InputError, match="is not on, off or auto"):
        fused_flag(value)


@pytest.mark.parametrize("fused", [True, False])
def test_batch_logits_match_each_prompt_alone(fused: bool) -> None:
    model = load_hybrid(EXAMPLE, fused=fused, device="cpu")
    rng = np.random.default_rng(7)
    prompts = [rng.integers(0, model.cfg.n_vocab, n).tolist() for n in (5, 1, 3)]
    got = batch_logits(model, prompts)
    assert [tuple(g.shape) for g in got] == [(len(p), model.cfg.n_vocab) for p in prompts]
    for prompt, logits in zip(prompts, got):
        torch.testing.assert_close(logits.float(), model.logits(prompt).float(), rtol=1e-4, atol=1e-4)

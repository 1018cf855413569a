"""Fused vs unfused on a GGUF model: every prompt of a set in ONE multi-sequence batch each way.

Per prompt: max |Δlogit| over all positions, top-1 agreement, and the perplexity of the
prompt's own tokens under each graph (exp of the mean next-token NLL). The comparison passes
when the top-1 token agrees at every position (SPEC §6). With a text file (``TextEval``), its
perplexity under both graphs, and under the HF checkpoint when given (``gdnc.commands.heldout``): fused
and unfused must agree within ``heldout.FUSED_TOLERANCE`` (4 significant digits on CPU), fused
and HF within 1e-3.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from gdnc.commands.gguf_model import batch_logits, load_hybrid
from gdnc.commands.heldout import HeldOut, check_checkpoint, check_options, evaluate, nll, read_text
from gdnc.errors import InputError
from gdnc.frontends.gguf_tokenizer import GgufTokenizer

if TYPE_CHECKING:
    from gdnc.models.gguf_model import GgufModel

DEFAULT_PROMPTS = (
    "The for statement is used to iterate over the elements of a sequence.",
    "Exceptions are raised when an error is detected during execution.",
    "A class definition defines a class object.",
    "import os\nprint(os.path.join('a', 'b'))",
)


@dataclass(frozen=True)
class PromptDiff:
    prompt: str
    tokens: int
    max_abs_logit_diff: float
    top1_agreement: float
    perplexity_fused: float
    perplexity_unfused: float


@dataclass
class GgufComparison:
    model: str
    device: str
    prompts: list[PromptDiff]
    fused_nodes: int | None
    unfused_nodes: int | None
    heldout: HeldOut | None = None

    @property
    def passed(self) -> bool:
        prompts = all(p.top1_agreement == 1.0 and np.isfinite(p.max_abs_logit_diff) for p in self.prompts)
        return prompts and (self.heldout is None or self.heldout.passed)

    def to_json(self) -> dict:
        return {"model": self.model, "device": self.device, "passed": self.passed,
                "fused_nodes": self.fused_nodes, "unfused_nodes": self.unfused_nodes,
                "prompts": [asdict(p) for p in self.prompts],
                "heldout": None if self.heldout is None else self.heldout.to_json()}


@dataclass(frozen=True)
class TextEval:
    """``gdnc compare --eval TEXT``: perplexity of a text file in windows of ``width`` tokens
    (at most ``max_tokens`` scored), and of the HF checkpoint in ``hf`` when given."""

    path: Path
    width: int = 128
    max_tokens: int | None = None
    hf: Path | None = None


def perplexity(logits: torch.Tensor, tokens: list[int]) -> float:
    """exp(mean NLL of tokens[1:] given the logits of the positions before them)."""
    if len(tokens) < 2:
        return float("nan")
    return math.exp(nll(logits[:-1], tuple(tokens[1:])) / (len(tokens) - 1))


def _batch_logits(model: GgufModel, prompts: list[list[int]]) -> list[torch.Tensor]:
    return [t.float().cpu() for t in batch_logits(model, prompts)]


def compare_gguf(path: str, prompts: list[str] | None = None, device: str = "cpu",
                 text: TextEval | None = None) -> GgufComparison:
    """Run ``prompts`` (default: a small built-in set) through both graphs and compare; with
    ``text``, the perplexity of that text too (``gdnc.commands.heldout``)."""
    texts = list(prompts or DEFAULT_PROMPTS)
    content = None
    if text is not None:
        check_options(text.width, text.max_tokens)
        content = read_text(text.path)
        if text.hf is not None:
            check_checkpoint(text.hf)
    fused = load_hybrid(path, fused=True, device=device)
    tokenizer = GgufTokenizer.from_metadata(fused.file.metadata)
    ids = [tokenizer.encode(t) for t in texts]
    empty = [t for t, i in zip(texts, ids) if not i]
    if empty:
        raise InputError(f"prompt {empty[0]!r} encodes to no tokens")
    unfused = load_hybrid(path, fused=False, device=device, file=fused.file)
    got, want = _batch_logits(fused, ids), _batch_logits(unfused, ids)
    rows = [
        PromptDiff(text, len(toks), float((a - b).abs().max()),
                   float((a.argmax(-1) == b.argmax(-1)).double().mean()),
                   perplexity(a, toks), perplexity(b, toks))
        for text, toks, a, b in zip(texts, ids, got, want)
    ]
    unfused_nodes = next(iter(unfused.stats.unfused_nodes.values()), None)
    heldout = None
    if text is not None and content is not None:
        heldout = evaluate(fused, unfused, tokenizer.encode(content), str(text.path), text.width,
                           text.max_tokens, text.hf)
    return GgufComparison(path, device, rows, fused.stats.fused_nodes, unfused_nodes, heldout)

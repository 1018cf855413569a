"""Fused vs unfused on a GGUF model: every prompt of a set in ONE multi-sequence batch each way.

Per prompt: max |Δlogit| over all positions, top-1 agreement, and the perplexity of the
prompt's own tokens under each graph (exp of the mean next-token NLL). The comparison passes
when the top-1 token agrees at every position (SPEC §6).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from gdnc.errors import InputError
from gdnc.frontends.gguf_tokenizer import GgufTokenizer
from gdnc.runtime.hybrid_runner import Entry, HybridModel

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

    @property
    def passed(self) -> bool:
        return all(p.top1_agreement == 1.0 and np.isfinite(p.max_abs_logit_diff) for p in self.prompts)

    def to_json(self) -> dict:
        return {"model": self.model, "device": self.device, "passed": self.passed,
                "fused_nodes": self.fused_nodes, "unfused_nodes": self.unfused_nodes,
                "prompts": [asdict(p) for p in self.prompts]}


def perplexity(logits: torch.Tensor, tokens: list[int]) -> float:
    """exp(mean NLL of tokens[1:] given the logits of the positions before them)."""
    if len(tokens) < 2:
        return float("nan")
    logp = torch.log_softmax(logits[:-1].double(), dim=-1)
    nll = -logp.gather(1, torch.tensor(tokens[1:]).view(-1, 1).to(logp.device)).mean()
    return float(torch.exp(nll))


def _batch_logits(model: HybridModel, prompts: list[list[int]]) -> list[torch.Tensor]:
    pool = model.new_pool(len(prompts), max(len(p) for p in prompts))
    batch = [Entry(pool.allocate(), tuple(p)) for p in prompts]
    return [t.float().cpu() for t in model.forward(pool, batch, all_logits=True)]


def compare_gguf(path: str, prompts: list[str] | None = None, device: str = "cpu") -> GgufComparison:
    """Run ``prompts`` (default: a small built-in set) through both graphs and compare."""
    texts = list(prompts or DEFAULT_PROMPTS)
    fused = HybridModel(path, fused=True, device=device)
    tokenizer = GgufTokenizer.from_metadata(fused.file.metadata)
    ids = [tokenizer.encode(t) for t in texts]
    empty = [t for t, i in zip(texts, ids) if not i]
    if empty:
        raise InputError(f"prompt {empty[0]!r} encodes to no tokens")
    unfused = HybridModel(path, fused=False, device=device, file=fused.file)
    got, want = _batch_logits(fused, ids), _batch_logits(unfused, ids)
    rows = [
        PromptDiff(text, len(toks), float((a - b).abs().max()),
                   float((a.argmax(-1) == b.argmax(-1)).double().mean()),
                   perplexity(a, toks), perplexity(b, toks))
        for text, toks, a, b in zip(texts, ids, got, want)
    ]
    return GgufComparison(path, device, rows, fused.stats.fused_nodes,
                          next(iter(unfused.stats.unfused_nodes.values()), None))
